//! Argument parsing with the reference console's conventions, minus its
//! silent 32-bit wrap-around: negative and out-of-range numbers are refused.

use nix::errno::Errno;

/// C `atoi` as the reference uses it for single numbers: leading blanks,
/// optional sign, decimal digits, anything else ends the number (so junk
/// reads as 0).
pub fn atoi(s: &str) -> Result<u32, Errno> {
    let s = s.trim_start_matches([' ', '\t']);
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let end = digits.bytes().position(|b| !b.is_ascii_digit()).unwrap_or(digits.len());
    let digits = &digits[..end];
    if digits.is_empty() {
        return Ok(0);
    }
    let value: u64 = digits.parse().map_err(|_| Errno::EINVAL)?;
    if negative && value != 0 || value > i32::MAX as u64 {
        return Err(Errno::EINVAL);
    }
    Ok(value as u32)
}

/// One `%i` conversion: `0x` hex, leading `0` octal, else decimal. Returns
/// the value and the unparsed rest.
fn scan_int(s: &str) -> Option<(i64, &str)> {
    let s = s.trim_start();
    let (negative, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        (16, hex)
    } else if body.starts_with('0') {
        (8, body)
    } else {
        (10, body)
    };
    let end = digits.find(|c: char| !c.is_digit(radix)).unwrap_or(digits.len());
    if end == 0 {
        // "0x" with no hex digits still scans as 0, like scanf.
        return (radix == 16).then_some((0, &body[1..]));
    }
    let value = i64::from_str_radix(&digits[..end], radix).ok()?;
    Some((if negative { -value } else { value }, &digits[end..]))
}

/// `N` numbers in `%i` syntax separated by blanks.
pub fn ints<const N: usize>(s: &str) -> Result<[u32; N], Errno> {
    let mut out = [0u32; N];
    let mut rest = s;
    for slot in out.iter_mut() {
        let (value, tail) = scan_int(rest).ok_or(Errno::EINVAL)?;
        *slot = u32::try_from(value).ok().filter(|&v| v <= i32::MAX as u32).ok_or(Errno::EINVAL)?;
        rest = tail;
    }
    Ok(out)
}

/// A leading `%i` number followed by a word, as in `port/setuser N user`.
pub fn int_and_word(s: &str) -> Result<(u32, &str), Errno> {
    let (value, rest) = scan_int(s).ok_or(Errno::EINVAL)?;
    let value = u32::try_from(value).ok().filter(|&v| v <= i32::MAX as u32).ok_or(Errno::EINVAL)?;
    let word = rest.split_whitespace().next().ok_or(Errno::EINVAL)?;
    Ok((value, word))
}

/// An optional `[N]`: empty means all.
pub fn optional(s: &str) -> Result<Option<u32>, Errno> {
    if s.trim().is_empty() { Ok(None) } else { atoi(s).map(Some) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atoi_like_c_but_bounded() {
        assert_eq!(atoi("12"), Ok(12));
        assert_eq!(atoi("  7junk"), Ok(7));
        assert_eq!(atoi("0x14"), Ok(0));
        assert_eq!(atoi("junk"), Ok(0));
        assert_eq!(atoi(""), Ok(0));
        assert_eq!(atoi("-5"), Err(Errno::EINVAL));
        assert_eq!(atoi("4294967301"), Err(Errno::EINVAL));
        assert_eq!(atoi("99999999999999999999999"), Err(Errno::EINVAL));
    }

    #[test]
    fn scanf_i_radixes() {
        assert_eq!(ints::<2>("010 0"), Ok([8, 0]));
        assert_eq!(ints::<2>("0x10 12"), Ok([16, 12]));
        assert_eq!(ints::<2>("3"), Err(Errno::EINVAL));
        assert_eq!(ints::<2>("3 -1"), Err(Errno::EINVAL));
        assert_eq!(ints::<1>("0"), Ok([0]));
        assert_eq!(int_and_word("5 root"), Ok((5, "root")));
        assert_eq!(int_and_word("5"), Err(Errno::EINVAL));
    }
}
