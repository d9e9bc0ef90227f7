//! proto (to be written)
