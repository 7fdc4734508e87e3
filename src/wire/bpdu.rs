//! The BPDUs of vde_switch's fast spanning tree (FSTP): an 802.3 frame with
//! an LLC header and an RSTP-shaped body, sent to `01:80:c2:00:00:00`,
//! untagged on a VLAN's untagged members and 802.1Q-tagged on its tagged
//! members.
//!
//! The layout is vde_switch's own, not 802.1D's in every detail: the timer
//! fields are little-endian whole seconds and the port id packs the port
//! number as `0x80 | port >> 4`, `port & 0xff`.

use std::fmt;

use super::{ETHERTYPE_VLAN, Mac, VLAN_TAG_LEN};

/// The destination of every BPDU.
pub const BPDU_DST: Mac = Mac([0x01, 0x80, 0xc2, 0x00, 0x00, 0x00]);
/// Length of an untagged BPDU; a tagged one is [`VLAN_TAG_LEN`] longer.
pub const BPDU_LEN: usize = 53;
/// Received BPDUs shorter than this (after removing a tag) are ignored.
pub const BPDU_MIN_LEN: usize = 51;
/// Max age and hello time advertised, in seconds.
pub const MAX_AGE: u16 = 40;
pub const HELLO_TIME: u16 = 4;

/// The 802.3 length field: the bytes after the Ethernet header.
const LLC_LENGTH: [u8; 2] = [0x00, 0x27];
const LLC: [u8; 3] = [0x42, 0x42, 0x03];
const VERSION: u8 = 2;
const TYPE: u8 = 2;

// Offsets in an untagged BPDU; a tagged one has them all shifted by the tag.
const OFF_VERSION: usize = 19;
const OFF_TYPE: usize = 20;
const OFF_FLAGS: usize = 21;
const OFF_ROOT: usize = 22;
const OFF_COST: usize = 30;
const OFF_BRIDGE: usize = 34;
const OFF_PORT: usize = 42;
const OFF_AGE: usize = 44;
const OFF_MAX_AGE: usize = 46;
const OFF_HELLO: usize = 48;

/// A bridge id: 2-byte priority (big-endian) and the switch MAC. Ordering
/// is byte-wise, which is how the lower id wins the root election.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BridgeId(pub [u8; 8]);

impl BridgeId {
    /// What a tree records as "no designated bridge yet".
    pub const NONE: BridgeId = BridgeId([0xff; 8]);

    pub fn new(priority: u16, mac: Mac) -> Self {
        let [hi, lo] = priority.to_be_bytes();
        let m = mac.0;
        BridgeId([hi, lo, m[0], m[1], m[2], m[3], m[4], m[5]])
    }
}

impl fmt::Display for BridgeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for BridgeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The flags byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BpduFlags(pub u8);

impl BpduFlags {
    pub const TOPOLOGY_CHANGE: u8 = 0x01;
    /// Set on ports the sender keeps blocked (its "proposal" bit).
    pub const BACKUP: u8 = 0x02;
    /// The two role bits; `ROLE_ROOT` alone means "my root port".
    pub const ROLE_MASK: u8 = 0x0c;
    pub const ROLE_ROOT: u8 = 0x04;
    pub const AGREEMENT: u8 = 0x40;
    pub const TOPOLOGY_CHANGE_ACK: u8 = 0x80;
    const STATE_SHIFT: u8 = 4;

    /// Composes the flags vde_switch sends for one port. `state` is the
    /// port's forwarding state as 0 (discarding), 1 (learning) or 3
    /// (forwarding).
    pub fn for_port(backup: bool, root_port: bool, state: u8, agreement: bool, topology_change: bool) -> BpduFlags {
        let mut f = 0;
        if topology_change {
            f |= Self::TOPOLOGY_CHANGE;
        }
        // Backup ports advertise role "alternate/backup", the others
        // "designated", except the root port, which clears the high bit.
        if backup {
            f |= Self::BACKUP;
        } else {
            f |= 0x04;
        }
        if !root_port {
            f |= 0x08;
        }
        f |= (state & 0x03) << Self::STATE_SHIFT;
        if agreement {
            f |= Self::AGREEMENT;
        }
        BpduFlags(f)
    }

    pub fn topology_change(self) -> bool {
        self.0 & Self::TOPOLOGY_CHANGE != 0
    }

    /// The sender says it reaches the root through this link.
    pub fn from_root_port(self) -> bool {
        self.0 & Self::ROLE_MASK == Self::ROLE_ROOT
    }
}

/// The protocol fields of a BPDU, as sent or as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bpdu {
    pub flags: BpduFlags,
    pub root: BridgeId,
    pub root_cost: u32,
    pub bridge: BridgeId,
    /// The sender's port id, see [`port_id`].
    pub port: [u8; 2],
    /// Seconds since the sender's root information was set.
    pub age: u16,
    pub max_age: u16,
    pub hello: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BpduError {
    #[error("BPDU shorter than {BPDU_MIN_LEN} bytes")]
    Short,
    #[error("not a version 2 / type 2 BPDU")]
    NotFstp,
}

/// vde_switch's encoding of a port number in BPDUs. Port numbers above
/// 2047 do not fit and wrap exactly as the reference's do.
pub fn port_id(port: u32) -> [u8; 2] {
    [0x80 | (port >> 4) as u8, port as u8]
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn id_at(b: &[u8], at: usize) -> BridgeId {
    let mut id = [0u8; 8];
    id.copy_from_slice(&b[at..at + 8]);
    BridgeId(id)
}

impl Bpdu {
    /// Reads the BPDU in `frame`, whose Ethernet header is followed by an
    /// 802.1Q tag when `tagged`. Only the length, version and type are
    /// checked, as vde_switch does.
    pub fn parse(frame: &[u8], tagged: bool) -> Result<Bpdu, BpduError> {
        let body = if tagged { frame.get(VLAN_TAG_LEN..).unwrap_or(&[]) } else { frame };
        if body.len() < BPDU_MIN_LEN {
            return Err(BpduError::Short);
        }
        if body[OFF_VERSION] != VERSION || body[OFF_TYPE] != TYPE {
            return Err(BpduError::NotFstp);
        }
        Ok(Bpdu {
            flags: BpduFlags(body[OFF_FLAGS]),
            root: id_at(body, OFF_ROOT),
            root_cost: u32::from_be_bytes([body[OFF_COST], body[OFF_COST + 1], body[OFF_COST + 2], body[OFF_COST + 3]]),
            bridge: id_at(body, OFF_BRIDGE),
            port: [body[OFF_PORT], body[OFF_PORT + 1]],
            age: le16(body, OFF_AGE),
            max_age: le16(body, OFF_MAX_AGE),
            hello: le16(body, OFF_HELLO),
        })
    }

    /// The frame vde_switch sends from `src`: untagged, or tagged with
    /// VLAN id `vlan` (priority bits zero).
    pub fn encode(&self, src: Mac, vlan: Option<u16>) -> Vec<u8> {
        let mut f = Vec::with_capacity(BPDU_LEN + VLAN_TAG_LEN);
        f.extend_from_slice(&BPDU_DST.0);
        f.extend_from_slice(&src.0);
        if let Some(vlan) = vlan {
            f.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
            f.extend_from_slice(&(vlan & 0x0fff).to_be_bytes());
        }
        f.extend_from_slice(&LLC_LENGTH);
        f.extend_from_slice(&LLC);
        f.extend_from_slice(&[0, 0, VERSION, TYPE, self.flags.0]);
        f.extend_from_slice(&self.root.0);
        f.extend_from_slice(&self.root_cost.to_be_bytes());
        f.extend_from_slice(&self.bridge.0);
        f.extend_from_slice(&self.port);
        f.extend_from_slice(&self.age.to_le_bytes());
        f.extend_from_slice(&self.max_age.to_le_bytes());
        f.extend_from_slice(&self.hello.to_le_bytes());
        // Forward delay (unused, zero) and the v1 length byte.
        f.extend_from_slice(&[0, 0, 0]);
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from vde_switch 2.3.2 (`--priority 0x1234 --macaddr
    /// 02:00:00:00:00:f1 -F`): its hello on port 3 while it is the root.
    const CAPTURED_HELLO: &str = "0180c20000000200000000f10027424203000002027c12340200000000f1\
                                  0000000012340200000000f18003000028000400000000";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn hello() -> Bpdu {
        let me = BridgeId::new(0x1234, Mac([2, 0, 0, 0, 0, 0xf1]));
        Bpdu {
            flags: BpduFlags::for_port(false, false, 3, true, false),
            root: me,
            root_cost: 0,
            bridge: me,
            port: port_id(3),
            age: 0,
            max_age: MAX_AGE,
            hello: HELLO_TIME,
        }
    }

    #[test]
    fn encodes_the_captured_bytes() {
        let bytes = hello().encode(Mac([2, 0, 0, 0, 0, 0xf1]), None);
        assert_eq!(bytes.len(), BPDU_LEN);
        assert_eq!(bytes, hex(CAPTURED_HELLO));
        assert_eq!(Bpdu::parse(&bytes, false), Ok(hello()));
    }

    #[test]
    fn tagged_variant_inserts_the_tag_after_the_source() {
        let plain = hello().encode(Mac([2, 0, 0, 0, 0, 0xf1]), None);
        let tagged = hello().encode(Mac([2, 0, 0, 0, 0, 0xf1]), Some(10));
        assert_eq!(tagged.len(), BPDU_LEN + VLAN_TAG_LEN);
        assert_eq!(&tagged[..12], &plain[..12]);
        assert_eq!(&tagged[12..16], &[0x81, 0x00, 0x00, 0x0a]);
        assert_eq!(&tagged[16..], &plain[12..]);
        assert_eq!(Bpdu::parse(&tagged, true), Ok(hello()));
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let b = Bpdu {
            flags: BpduFlags(0xff),
            root: BridgeId([1, 2, 3, 4, 5, 6, 7, 8]),
            root_cost: 0x8765_4321,
            bridge: BridgeId([9, 10, 11, 12, 13, 14, 15, 16]),
            port: port_id(0x123),
            age: 0x0102,
            max_age: 7,
            hello: 9,
        };
        let bytes = b.encode(Mac([2, 0, 0, 0, 0, 1]), Some(4093));
        assert_eq!(&bytes[14..16], &[0x0f, 0xfd]);
        assert_eq!(Bpdu::parse(&bytes, true), Ok(b));
        assert_eq!(&bytes[48..50], &[0x02, 0x01], "age is little-endian");
    }

    #[test]
    fn flags_match_observed_values() {
        assert_eq!(BpduFlags::for_port(false, false, 3, false, false), BpduFlags(0x3c));
        assert_eq!(BpduFlags::for_port(false, false, 3, true, false), BpduFlags(0x7c));
        // Root port answering a new root: agreement, forwarding, role root.
        assert_eq!(BpduFlags::for_port(false, true, 3, true, false), BpduFlags(0x74));
        assert!(BpduFlags(0x74).from_root_port());
        let blocked = BpduFlags::for_port(true, false, 0, false, true);
        assert_eq!(blocked, BpduFlags(0x0b));
        assert!(blocked.topology_change() && !blocked.from_root_port());
    }

    #[test]
    fn port_ids_pack_like_the_reference() {
        assert_eq!(port_id(1), [0x80, 0x01]);
        assert_eq!(port_id(0x12), [0x81, 0x12]);
        assert_eq!(port_id(4095), [0xff, 0xff]);
    }

    #[test]
    fn rejects_short_and_foreign_frames_without_panicking() {
        let bytes = hello().encode(Mac([2, 0, 0, 0, 0, 0xf1]), None);
        assert_eq!(Bpdu::parse(&bytes[..50], false), Err(BpduError::Short));
        assert!(Bpdu::parse(&bytes[..51], false).is_ok());
        assert_eq!(Bpdu::parse(&bytes, true), Err(BpduError::Short));
        let mut stp = bytes.clone();
        stp[OFF_VERSION] = 0;
        assert_eq!(Bpdu::parse(&stp, false), Err(BpduError::NotFstp));
        for len in 0..bytes.len() + 8 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37) as u8).collect();
            let _ = Bpdu::parse(&junk, false);
            let _ = Bpdu::parse(&junk, true);
        }
    }
}
