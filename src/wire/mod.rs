//! Typed views over the bytes vswitch exchanges with its peers.
//!
//! Parsing never panics: every constructor checks lengths and returns a small
//! error value instead.

mod ethernet;
mod handshake;
mod mac;

pub use ethernet::{
    pop_tag, push_tag, Frame, FrameError, ETHERTYPE_VLAN, MAX_FRAME, MIN_FRAME, VLAN_TAG_LEN,
};
pub use handshake::{
    reply_for_path, ClientAddr, Request, RequestError, RequestKind, REQUEST_MAX, SOCKADDR_UN_LEN,
};
pub use mac::{Mac, MacParseError};
