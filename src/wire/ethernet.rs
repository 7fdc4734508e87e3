use super::Mac;

/// Shortest datagram the switch accepts: destination, source and EtherType.
pub const MIN_FRAME: usize = 14;
/// Longest untagged-or-tagged frame vde_switch reads (no FCS).
pub const MAX_FRAME: usize = 1518;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const VLAN_TAG_LEN: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame shorter than {MIN_FRAME} bytes")]
    Runt,
    #[error("frame longer than the switch carries")]
    Oversize,
}

/// A read-only view of one Ethernet frame as carried in a VDE datagram.
#[derive(Clone, Copy)]
pub struct Frame<'a> {
    bytes: &'a [u8],
}

impl<'a> Frame<'a> {
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, FrameError> {
        Frame::new_checked_up_to(bytes, MAX_FRAME)
    }

    /// Like [`Frame::new_checked`] with `max` bytes as the longest frame
    /// (a switch configured for jumbo frames).
    pub fn new_checked_up_to(bytes: &'a [u8], max: usize) -> Result<Self, FrameError> {
        if bytes.len() < MIN_FRAME {
            Err(FrameError::Runt)
        } else if bytes.len() > max {
            Err(FrameError::Oversize)
        } else {
            Ok(Frame { bytes })
        }
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn dst(&self) -> Mac {
        Mac(self.bytes[0..6].try_into().expect("checked length"))
    }

    pub fn src(&self) -> Mac {
        Mac(self.bytes[6..12].try_into().expect("checked length"))
    }

    pub fn ethertype(&self) -> u16 {
        u16::from_be_bytes([self.bytes[12], self.bytes[13]])
    }

    /// The 802.1Q tag control information, if the frame carries a tag.
    /// A tag cut short by the end of the frame reads as zero, as the
    /// reference switch reads whatever its buffer holds there.
    pub fn tci(&self) -> Option<u16> {
        (self.ethertype() == ETHERTYPE_VLAN).then(|| {
            let hi = self.bytes.get(14).copied().unwrap_or(0);
            let lo = self.bytes.get(15).copied().unwrap_or(0);
            u16::from_be_bytes([hi, lo])
        })
    }
}

/// Writes `frame` with an 802.1Q tag carrying `tci` inserted after the
/// source MAC into `out`, returning the new length.
pub fn push_tag(frame: &[u8], tci: u16, out: &mut [u8]) -> usize {
    let len = frame.len() + VLAN_TAG_LEN;
    out[..12].copy_from_slice(&frame[..12]);
    out[12..14].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
    out[14..16].copy_from_slice(&tci.to_be_bytes());
    out[16..len].copy_from_slice(&frame[12..]);
    len
}

/// Writes `frame` without the four bytes following the source MAC into
/// `out`, returning the new length (which may be below [`MIN_FRAME`]).
pub fn pop_tag(frame: &[u8], out: &mut [u8]) -> usize {
    let tail = frame.get(12 + VLAN_TAG_LEN..).unwrap_or(&[]);
    out[..12].copy_from_slice(&frame[..12]);
    out[12..12 + tail.len()].copy_from_slice(tail);
    12 + tail.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize) -> Vec<u8> {
        (0..len).map(|i| i as u8).collect()
    }

    #[test]
    fn length_limits() {
        assert_eq!(Frame::new_checked(&frame(13)).err(), Some(FrameError::Runt));
        assert!(Frame::new_checked(&frame(14)).is_ok());
        assert!(Frame::new_checked(&frame(1518)).is_ok());
        assert_eq!(Frame::new_checked(&frame(1519)).err(), Some(FrameError::Oversize));
    }

    #[test]
    fn tag_round_trip() {
        let plain = frame(60);
        let mut tagged = [0u8; MAX_FRAME + VLAN_TAG_LEN];
        let n = push_tag(&plain, 0xb00a, &mut tagged);
        assert_eq!(n, 64);
        let view = Frame::new_checked(&tagged[..n]).unwrap();
        assert_eq!(view.tci(), Some(0xb00a));
        let mut back = [0u8; MAX_FRAME];
        let m = pop_tag(&tagged[..n], &mut back);
        assert_eq!(&back[..m], &plain[..]);
    }

    #[test]
    fn short_tagged_frame_loses_tag_bytes() {
        let mut f = frame(16);
        f[12] = 0x81;
        f[13] = 0x00;
        let mut out = [0u8; MAX_FRAME];
        assert_eq!(pop_tag(&f, &mut out), 12);
        assert_eq!(Frame::new_checked(&f[..14]).unwrap().tci(), Some(0));
    }
}
