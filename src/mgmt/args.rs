//! Argument parsing with the reference console's C conventions (`atoi` for
//! single numbers, `sscanf("%i")` for lists), minus its silent 32-bit
//! wrap-around: negative and out-of-range numbers are refused (spec §12).

use nix::errno::Errno;

use crate::wire::Mac;

/// The largest number a console argument may hold: the reference stores
/// arguments in a C `int`.
const MAX_ARG: u64 = i32::MAX as u64;

/// C `isspace`, which `atoi` and `%i` skip before a number.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// A parsed, possibly signed number. The magnitude saturates just above
/// [`MAX_ARG`], so any overflow is still recognised as out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Signed {
    negative: bool,
    magnitude: u64,
}

impl Signed {
    /// The value as a console argument: `0..=i32::MAX`, `-0` included.
    fn to_arg(self) -> Result<u32, Errno> {
        match self {
            Signed { magnitude: 0, .. } => Ok(0),
            Signed { negative: true, .. } => Err(Errno::EINVAL),
            Signed { magnitude, .. } if magnitude > MAX_ARG => Err(Errno::EINVAL),
            Signed { magnitude, .. } => Ok(magnitude as u32),
        }
    }
}

/// Leading blanks and an optional sign, as both C conversions accept them.
fn sign(s: &str) -> (bool, &str) {
    let s = s.trim_start_matches(is_c_space);
    if let Some(rest) = s.strip_prefix('-') { (true, rest) } else { (false, s.strip_prefix('+').unwrap_or(s)) }
}

/// Reads the longest run of `radix` digits; returns the saturated value and
/// the rest.
fn digits(s: &str, radix: u32) -> (u64, &str) {
    let end = s.find(|c: char| !c.is_digit(radix)).unwrap_or(s.len());
    let value = s[..end].chars().fold(0u64, |acc, c| {
        let digit = u64::from(c.to_digit(radix).unwrap_or(0));
        (acc * u64::from(radix) + digit).min(MAX_ARG + 1)
    });
    (value, &s[end..])
}

/// C `atoi` as the reference uses it for single numbers: decimal only,
/// anything else ends the number, so junk reads as 0.
pub fn atoi(s: &str) -> Result<u32, Errno> {
    let (negative, rest) = sign(s);
    let (magnitude, _) = digits(rest, 10);
    Signed { negative, magnitude }.to_arg()
}

/// One `%i` conversion: `0x` hex, a leading `0` octal, else decimal.
/// Returns `None` where scanf would stop matching, else the number and the
/// unparsed rest. Like glibc, a bare `0x` reads as 0 and is consumed.
fn scan_int(s: &str) -> Option<(Signed, &str)> {
    let (negative, body) = sign(s);
    let (magnitude, rest) = if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        digits(hex, 16)
    } else if body.starts_with(|c: char| c.is_ascii_digit()) {
        digits(body, if body.starts_with('0') { 8 } else { 10 })
    } else {
        return None;
    };
    Some((Signed { negative, magnitude }, rest))
}

/// `N` numbers in `%i` syntax separated by blanks (`sscanf("%i %i …")`);
/// whatever follows them is ignored, as scanf ignores it.
pub fn ints<const N: usize>(s: &str) -> Result<[u32; N], Errno> {
    let mut out = [0u32; N];
    let mut rest = s;
    for slot in out.iter_mut() {
        let (value, tail) = scan_int(rest).ok_or(Errno::EINVAL)?;
        *slot = value.to_arg()?;
        rest = tail;
    }
    Ok(out)
}

/// A port number in `%i` syntax and the name after it, as `port/setuser`
/// and `port/setgroup` split them: the name is everything after the first
/// space-separated word and its following spaces (tabs are not separators,
/// trailing text is part of the name).
pub fn port_and_name(s: &str) -> Result<(u32, &str), Errno> {
    let name = s.trim_start_matches(' ');
    let name = name.trim_start_matches(|c| c != ' ').trim_start_matches(' ');
    let (port, _) = scan_int(s).ok_or(Errno::EINVAL)?;
    if name.is_empty() {
        return Err(Errno::EINVAL);
    }
    Ok((port.to_arg()?, name))
}

/// `hash/find`'s `sscanf("%x:%x:%x:%x:%x:%x %d")`: six hex fields joined
/// by `:` (by `.` when the text has no `:`), then an optional decimal VLAN,
/// 0 when absent or unreadable. Each field keeps its low byte, as the C
/// code stores it, and text after what was read is ignored.
pub fn mac_and_vlan(s: &str) -> Result<(Mac, u32), Errno> {
    let separator = if s.contains(':') { ':' } else { '.' };
    let mut mac = [0u8; 6];
    let mut rest = s;
    for (i, byte) in mac.iter_mut().enumerate() {
        if i > 0 {
            rest = rest.strip_prefix(separator).ok_or(Errno::EINVAL)?;
        }
        let body = rest.trim_start_matches(is_c_space);
        let (value, tail) = if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
            digits(hex, 16)
        } else if body.starts_with(|c: char| c.is_ascii_hexdigit()) {
            digits(body, 16)
        } else {
            return Err(Errno::EINVAL);
        };
        *byte = value as u8;
        rest = tail;
    }
    let (negative, number) = sign(rest);
    let vlan = match digits(number, 10) {
        (_, tail) if tail.len() == number.len() => 0,
        (magnitude, _) => Signed { negative, magnitude }.to_arg()?,
    };
    Ok((Mac(mac), vlan))
}

/// An optional `[N]`: empty means all, anything else is read with `atoi`.
pub fn optional(s: &str) -> Result<Option<u32>, Errno> {
    if s.is_empty() { Ok(None) } else { atoi(s).map(Some) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atoi_like_c_but_bounded() {
        assert_eq!(atoi("12"), Ok(12));
        assert_eq!(atoi("  7junk"), Ok(7));
        assert_eq!(atoi("\n\x0b+3"), Ok(3));
        assert_eq!(atoi("0x14"), Ok(0));
        assert_eq!(atoi("junk"), Ok(0));
        assert_eq!(atoi(""), Ok(0));
        assert_eq!(atoi("-"), Ok(0));
        assert_eq!(atoi("-0"), Ok(0));
        assert_eq!(atoi("2147483647"), Ok(i32::MAX as u32));
        assert_eq!(atoi("2147483648"), Err(Errno::EINVAL));
        assert_eq!(atoi("-5"), Err(Errno::EINVAL));
        assert_eq!(atoi("4294967301"), Err(Errno::EINVAL));
        assert_eq!(atoi("99999999999999999999999999999999"), Err(Errno::EINVAL));
    }

    #[test]
    fn scanf_i_radixes_as_glibc() {
        assert_eq!(ints::<2>("010 0"), Ok([8, 0]));
        assert_eq!(ints::<2>("0x10 12"), Ok([16, 12]));
        assert_eq!(ints::<2>("0X1A 1"), Ok([26, 1]));
        // An octal number ends at the first 8; the rest is the next number.
        assert_eq!(ints::<2>("08 1"), Ok([0, 8]));
        assert_eq!(ints::<2>("0x 5"), Ok([0, 5]));
        assert_eq!(ints::<2>("\t12\n 3 junk"), Ok([12, 3]));
        assert_eq!(ints::<1>("0"), Ok([0]));
    }

    #[test]
    fn scanf_failures_and_range() {
        assert_eq!(ints::<2>(""), Err(Errno::EINVAL));
        assert_eq!(ints::<2>("3"), Err(Errno::EINVAL));
        assert_eq!(ints::<2>("5,6"), Err(Errno::EINVAL));
        assert_eq!(ints::<2>("0xg 3"), Err(Errno::EINVAL));
        assert_eq!(ints::<2>("- 5"), Err(Errno::EINVAL));
        assert_eq!(ints::<2>("3 -1"), Err(Errno::EINVAL));
        assert_eq!(ints::<2>("99999999999 1"), Err(Errno::EINVAL));
        assert_eq!(ints::<2>("0xffffffffffffffffffff 1"), Err(Errno::EINVAL));
        assert_eq!(ints::<2>("-0 0"), Ok([0, 0]));
    }

    #[test]
    fn port_and_name_as_setuser_splits() {
        assert_eq!(port_and_name("5 root"), Ok((5, "root")));
        assert_eq!(port_and_name("  0x5   root extra "), Ok((5, "root extra ")));
        assert_eq!(port_and_name("5abc root"), Ok((5, "root")));
        assert_eq!(port_and_name("5"), Err(Errno::EINVAL));
        assert_eq!(port_and_name("5   "), Err(Errno::EINVAL));
        assert_eq!(port_and_name("5\troot"), Err(Errno::EINVAL));
        assert_eq!(port_and_name("x root"), Err(Errno::EINVAL));
        assert_eq!(port_and_name("-1 root"), Err(Errno::EINVAL));
        assert_eq!(port_and_name(""), Err(Errno::EINVAL));
    }

    #[test]
    fn mac_and_vlan_as_sscanf_reads_them() {
        let mac = Mac([2, 0, 0, 0, 0, 0x0a]);
        assert_eq!(mac_and_vlan("02:00:00:00:00:0a"), Ok((mac, 0)));
        assert_eq!(mac_and_vlan("2.0.0.0.0.A 3"), Ok((mac, 3)));
        assert_eq!(mac_and_vlan("0x2:0:0:0:0:10a junk"), Ok((mac, 0)));
        assert_eq!(mac_and_vlan("02:00:00:00:00:0a:ff 7"), Ok((mac, 0)), "the rest is ignored");
        assert_eq!(mac_and_vlan("02:00:00:00:00:0a\t12"), Ok((mac, 12)));
        assert_eq!(mac_and_vlan("02:00:00:00:00"), Err(Errno::EINVAL));
        assert_eq!(mac_and_vlan("02:00:00:00:00: 0a"), Ok((mac, 0)), "fields skip blanks");
        assert_eq!(mac_and_vlan("02 :00:00:00:00:0a"), Err(Errno::EINVAL), "separators do not");
        assert_eq!(mac_and_vlan("zz"), Err(Errno::EINVAL));
        assert_eq!(mac_and_vlan(""), Err(Errno::EINVAL));
        assert_eq!(mac_and_vlan("02:00:00:00:00:0a -1"), Err(Errno::EINVAL));
    }

    #[test]
    fn optional_empty_means_all() {
        assert_eq!(optional(""), Ok(None));
        assert_eq!(optional("3"), Ok(Some(3)));
        assert_eq!(optional(" "), Ok(Some(0)));
        assert_eq!(optional("-3"), Err(Errno::EINVAL));
    }
}
