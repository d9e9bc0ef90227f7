//! The simulators an integrator points at a relay: a payment terminal
//! ([`device`], `posrelay device-sim`) and a POS ([`pos`], `posrelay pos-sim`), with
//! what they share: the terminal's answers ([`responder`]) and its reconnect
//! schedule ([`backoff`]).

pub mod backoff;
pub mod device;
pub mod pos;
pub mod pos_reliable;
pub mod responder;
