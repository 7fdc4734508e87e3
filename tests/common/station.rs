//! Sending and expecting frames, the same way for raw clients and
//! `vde_plug` processes.

use std::thread;
use std::time::Duration;

use super::frames::{BROADCAST, Mac, TEST_ETHERTYPE, describe, frame};
use super::{EVENT_TIMEOUT, QUIET_PERIOD};

/// Anything attached to a switch that sends and receives whole frames.
pub trait Station {
    /// Used in failure messages.
    fn name(&self) -> &str;

    fn send(&self, frame: &[u8]);

    /// The next received frame, or `None` after `timeout`.
    fn recv_timeout(&self, timeout: Duration) -> Option<Vec<u8>>;

    /// Panics unless the next frame received is exactly `expected`.
    fn expect_frame(&self, expected: &[u8]) {
        match self.recv_timeout(EVENT_TIMEOUT) {
            Some(got) if got == expected => {}
            Some(got) => panic!("{}: expected {}, received {}", self.name(), describe(expected), describe(&got)),
            None => {
                panic!("{}: expected {}, received nothing within {EVENT_TIMEOUT:?}", self.name(), describe(expected))
            }
        }
    }
}

/// Panics if any of `stations` receives a frame during one quiet period.
/// Waiting once for all of them keeps negative checks cheap.
pub fn assert_silent(stations: &[&dyn Station]) {
    thread::sleep(QUIET_PERIOD);
    for station in stations {
        if let Some(got) = station.recv_timeout(Duration::ZERO) {
            panic!("{}: expected no frame, received {}", station.name(), describe(&got));
        }
    }
}

/// A broadcast from `a` (as `mac_a`), then unicasts both ways: `a` and `b`
/// are attached and the switch forwards and learns between them.
pub fn exchange(a: &dyn Station, mac_a: Mac, b: &dyn Station, mac_b: Mac) {
    let hello = frame(BROADCAST, mac_a, TEST_ETHERTYPE, 46);
    a.send(&hello);
    b.expect_frame(&hello);
    let answer = frame(mac_a, mac_b, TEST_ETHERTYPE, 46);
    b.send(&answer);
    a.expect_frame(&answer);
    let again = frame(mac_b, mac_a, TEST_ETHERTYPE, 100);
    a.send(&again);
    b.expect_frame(&again);
}
