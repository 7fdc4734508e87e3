//! Ethernet frames for tests: every frame built here carries a unique
//! sequence number, so a test can tell "the frame I sent" from "an earlier
//! copy" and the failure messages stay short.

use std::sync::atomic::{AtomicU32, Ordering};

pub type Mac = [u8; 6];

pub const BROADCAST: Mac = [0xff; 6];
/// IEEE "local experimental" EtherType: never means anything to a real stack.
pub const TEST_ETHERTYPE: u16 = 0x88b5;

const HEADER_LEN: usize = 14;

/// A locally administered unicast MAC `02:00:00:00:00:nn`.
pub const fn station_mac(n: u8) -> Mac {
    [0x02, 0, 0, 0, 0, n]
}

/// Builds `dst | src | ethertype | payload` with a payload of `payload_len`
/// bytes that starts with a process-wide sequence number.
pub fn frame(dst: Mac, src: Mac, ethertype: u16, payload_len: usize) -> Vec<u8> {
    static SEQUENCE: AtomicU32 = AtomicU32::new(1);
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed).to_be_bytes();
    let mut frame = Vec::with_capacity(HEADER_LEN + payload_len);
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend((0..payload_len).map(|i| seq.get(i).copied().unwrap_or(i as u8)));
    frame
}

/// One-line summary for assertion messages (frames can be 1.5 kB long).
pub fn describe(frame: &[u8]) -> String {
    if frame.len() < HEADER_LEN {
        return format!("{}-byte runt {:02x?}", frame.len(), frame);
    }
    let mac = |m: &[u8]| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let seq = frame
        .get(HEADER_LEN..HEADER_LEN + 4)
        .map(|s| u32::from_be_bytes(s.try_into().unwrap()).to_string())
        .unwrap_or_else(|| "-".into());
    format!(
        "{} bytes {} -> {} type {:02x}{:02x} seq {seq}",
        frame.len(),
        mac(&frame[6..12]),
        mac(&frame[0..6]),
        frame[12],
        frame[13],
    )
}
