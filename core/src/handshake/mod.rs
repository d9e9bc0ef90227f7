//! handshake (to be written)
