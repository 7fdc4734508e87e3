//! The VXLAN header (RFC 7348): eight bytes in front of the inner Ethernet
//! frame in a UDP datagram. Only the I flag, which says the VNI is valid,
//! has a meaning; the other bits are reserved, sent as zero and ignored on
//! receipt, as the Linux kernel does.

/// Bytes of the header.
pub const VXLAN_HEADER_LEN: usize = 8;
/// The IANA port, the kernel's and vdeplug4's default.
pub const VXLAN_PORT: u16 = 4789;
/// Largest VNI: 24 bits.
pub const VNI_MAX: u32 = 0x00ff_ffff;
const FLAG_VNI: u8 = 0x08;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VxlanError {
    #[error("datagram shorter than a VXLAN header")]
    Truncated,
    #[error("VXLAN header without the VNI flag")]
    NoVni,
}

/// A read-only view of a VXLAN datagram: header and inner frame.
#[derive(Clone, Copy)]
pub struct Vxlan<'a> {
    bytes: &'a [u8],
}

impl<'a> Vxlan<'a> {
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, VxlanError> {
        if bytes.len() < VXLAN_HEADER_LEN {
            return Err(VxlanError::Truncated);
        }
        if bytes[0] & FLAG_VNI == 0 {
            return Err(VxlanError::NoVni);
        }
        Ok(Vxlan { bytes })
    }

    pub fn vni(&self) -> u32 {
        u32::from_be_bytes([0, self.bytes[4], self.bytes[5], self.bytes[6]])
    }

    /// The inner Ethernet frame, unchecked.
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[VXLAN_HEADER_LEN..]
    }
}

/// The header for `vni` (its low 24 bits).
pub fn emit(vni: u32) -> [u8; VXLAN_HEADER_LEN] {
    let v = (vni & VNI_MAX).to_be_bytes();
    [FLAG_VNI, 0, 0, 0, v[1], v[2], v[3], 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut datagram = emit(0x12_3456).to_vec();
        datagram.extend_from_slice(&[0xaa; 14]);
        let v = Vxlan::new_checked(&datagram).unwrap();
        assert_eq!(v.vni(), 0x12_3456);
        assert_eq!(v.payload(), &[0xaa; 14]);
    }

    #[test]
    fn kernel_header_bytes() {
        assert_eq!(emit(42), [0x08, 0, 0, 0, 0, 0, 42, 0]);
        assert_eq!(emit(u32::MAX)[4..7], [0xff; 3], "the VNI is cut to 24 bits");
    }

    #[test]
    fn rejects_short_and_flagless() {
        for len in 0..VXLAN_HEADER_LEN {
            assert_eq!(Vxlan::new_checked(&emit(1)[..len]).err(), Some(VxlanError::Truncated));
        }
        assert_eq!(Vxlan::new_checked(&[0; 8]).err(), Some(VxlanError::NoVni));
        let reserved = [0xff; 8];
        let v = Vxlan::new_checked(&reserved).unwrap();
        assert_eq!(v.vni(), VNI_MAX, "reserved bits are ignored");
        assert!(v.payload().is_empty());
    }
}
