//! Typed views over the bytes vswitch exchanges with its peers.
//!
//! Parsing never panics: every constructor checks lengths and returns a small
//! error value instead.

mod bpdu;
mod ethernet;
mod handshake;
mod mac;
mod vxlan;

pub use bpdu::{BPDU_DST, BPDU_LEN, BPDU_MIN_LEN, Bpdu, BpduError, BpduFlags, BridgeId, HELLO_TIME, MAX_AGE, port_id};
pub use ethernet::{ETHERTYPE_VLAN, Frame, FrameError, MAX_FRAME, MIN_FRAME, VLAN_TAG_LEN, pop_tag, push_tag};
pub use handshake::{ClientAddr, REQUEST_MAX, Request, RequestError, RequestKind, SOCKADDR_UN_LEN, reply_for_path};
pub use mac::{Mac, MacParseError};
pub use vxlan::{VNI_MAX, VXLAN_HEADER_LEN, VXLAN_PORT, Vxlan, VxlanError, emit as emit_vxlan};
