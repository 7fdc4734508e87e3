//! Sending and expecting frames, the same way for raw clients and
//! `vde_plug` processes.

use std::thread;
use std::time::Duration;

use super::frames::describe;
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
