//! relay (to be written)
