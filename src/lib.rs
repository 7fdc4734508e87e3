//! vswitch: a userspace virtual Ethernet switch compatible with VDE2's `vde_switch`.
//!
//! The crate is layered so that each layer only looks down:
//! [`wire`] (byte layouts) → [`engine`] (pure switching state, no I/O) →
//! [`mgmt`] (the console command table) → [`net`] (sockets and the event loop).
#![deny(unsafe_code)]

pub mod cli;
pub mod client;
pub mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub mod mgmt;
pub mod net;
pub mod wire;
