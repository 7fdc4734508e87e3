use std::fmt;
use std::str::FromStr;

/// An Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub const BROADCAST: Mac = Mac([0xff; 6]);

    /// Group (multicast or broadcast) addresses have the I/G bit set.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address")]
pub struct MacParseError;

impl FromStr for Mac {
    type Err = MacParseError;

    /// Six hex fields separated by `:`, or by `.` when the text has no `:`,
    /// as vde_switch accepts them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let sep = if s.contains(':') { ':' } else { '.' };
        let mut mac = [0u8; 6];
        let mut fields = s.split(sep);
        for byte in mac.iter_mut() {
            let field = fields.next().ok_or(MacParseError)?;
            if field.is_empty() || field.len() > 2 {
                return Err(MacParseError);
            }
            *byte = u8::from_str_radix(field, 16).map_err(|_| MacParseError)?;
        }
        if fields.next().is_some() {
            return Err(MacParseError);
        }
        Ok(Mac(mac))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_separators() {
        let a: Mac = "02:aa:bb:cc:dd:ee".parse().unwrap();
        let b: Mac = "2.aa.bb.cc.dd.ee".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "02:aa:bb:cc:dd:ee");
    }

    #[test]
    fn rejects_junk() {
        for bad in ["", "02:aa:bb:cc:dd", "02:aa:bb:cc:dd:ee:ff", "zz:aa:bb:cc:dd:ee", "123:0:0:0:0:0"] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

    #[test]
    fn multicast_bit() {
        assert!(Mac::BROADCAST.is_multicast());
        assert!(!Mac([2, 0, 0, 0, 0, 1]).is_multicast());
    }
}
