//! A management-socket session (spec §8.2): banner, then one command per
//! write, each answered by a response and the prompt `"\nvde$ "`.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{EVENT_TIMEOUT, wait_until};

const PROMPT: &str = "\nvde$ ";

pub struct Mgmt {
    stream: UnixStream,
    /// Bytes received but not handed out yet.
    pending: Vec<u8>,
}

impl Mgmt {
    /// Connects and consumes the banner and the first prompt.
    pub fn connect(path: &Path) -> Mgmt {
        Mgmt::try_connect(path).unwrap_or_else(|e| panic!("connect to management socket {path:?}: {e}"))
    }

    /// Like `connect`, but returns the error if nothing accepts connections
    /// at `path` yet.
    pub fn try_connect(path: &Path) -> std::io::Result<Mgmt> {
        let stream = UnixStream::connect(path)?;
        let mut session = Mgmt { stream, pending: Vec::new() };
        let banner = session.read_until_prompt("the banner");
        assert!(banner.starts_with("VDE switch V.2.3.2\n"), "unexpected banner {banner:?}");
        Ok(session)
    }

    /// Sends `line` in one write and returns everything received before the
    /// next prompt (debug events included, if any arrived meanwhile).
    pub fn cmd(&mut self, line: &str) -> String {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .unwrap_or_else(|e| panic!("send {line:?} to management socket: {e}"));
        self.read_until_prompt(line)
    }

    /// Like `cmd`, but panics unless the command succeeded.
    pub fn cmd_ok(&mut self, line: &str) -> String {
        let reply = self.cmd(line);
        assert!(reply.ends_with("1000 Success\n"), "{line:?} failed: {reply:?}");
        reply
    }

    /// Returns the next complete line sent outside any command response
    /// (asynchronous debug events), without its newline; `None` if no line
    /// arrives within `timeout`.
    pub fn read_event(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return Some(String::from_utf8_lossy(&line[..end]).into_owned());
            }
            if !self.fill(deadline, "a debug event") {
                return None;
            }
        }
    }

    /// Parsed `port/allprint`: every existing port, active or not.
    pub fn ports(&mut self) -> Vec<PortStatus> {
        PortStatus::parse_all(&self.cmd_ok("port/allprint"))
    }

    /// The status of port `number`, if it exists.
    pub fn port(&mut self, number: u32) -> Option<PortStatus> {
        self.ports().into_iter().find(|p| p.number == number)
    }

    /// Waits until some port lists an endpoint whose description satisfies
    /// `matches` and returns that port's number.
    pub fn wait_for_endpoint(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> u32 {
        wait_until(EVENT_TIMEOUT, &format!("{what} in port/allprint"), || self.find_endpoint(&matches))
    }

    /// The port of the first endpoint whose description satisfies `matches`.
    pub fn find_endpoint(&mut self, matches: impl Fn(&str) -> bool) -> Option<u32> {
        self.ports().into_iter().find(|p| p.endpoints.iter().any(|e| matches(e))).map(|p| p.number)
    }

    fn read_until_prompt(&mut self, what: &str) -> String {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            if let Some(at) = find(&self.pending, PROMPT.as_bytes()) {
                let text: Vec<u8> = self.pending.drain(..at + PROMPT.len()).collect();
                return String::from_utf8_lossy(&text[..at]).into_owned();
            }
            if !self.fill(deadline, what) {
                panic!(
                    "no prompt after {what:?} within {EVENT_TIMEOUT:?}; received {:?}",
                    String::from_utf8_lossy(&self.pending)
                );
            }
        }
    }

    /// Reads more bytes into `pending`; false on timeout. Panics on EOF.
    fn fill(&mut self, deadline: Instant, what: &str) -> bool {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return false;
        };
        self.stream.set_read_timeout(Some(left.max(Duration::from_millis(1)))).expect("set management read timeout");
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Err(e) if e.kind() == ErrorKind::Interrupted => true,
            Ok(0) => panic!(
                "management session closed while waiting for {what:?}; received {:?}",
                String::from_utf8_lossy(&self.pending)
            ),
            Ok(n) => {
                self.pending.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
            Err(e) => panic!("read from management socket: {e}"),
        }
    }
}

/// Ends the session with `logout` and waits until the switch has closed it.
/// vde_switch 2.3.2 corrupts its descriptor table when a connection goes
/// away while a new control connection awaits its request (see
/// `Switch::wait_open_fds`); waiting here keeps a session's end from racing
/// with the next client's handshake.
impl Drop for Mgmt {
    fn drop(&mut self) {
        if self.stream.write_all(b"logout\n").is_err() {
            return;
        }
        let _ = self.stream.set_read_timeout(Some(EVENT_TIMEOUT));
        let mut sink = [0u8; 4096];
        loop {
            match self.stream.read(&mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One port block of `port/print` / `port/allprint` (spec §8.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortStatus {
    pub number: u32,
    pub active: bool,
    pub in_pkts: u64,
    pub in_bytes: u64,
    pub out_pkts: u64,
    pub out_bytes: u64,
    /// Endpoint descriptions in the order listed (newest first).
    pub endpoints: Vec<String>,
}

impl PortStatus {
    /// Parses the port blocks of a `port/print` or `port/allprint` reply.
    pub fn parse_all(reply: &str) -> Vec<PortStatus> {
        let mut ports: Vec<PortStatus> = Vec::new();
        for line in reply.lines() {
            if let Some(rest) = line.strip_prefix("Port ") {
                let (number, rest) = rest.split_once(' ').expect("port header");
                ports.push(PortStatus {
                    number: number.parse().expect("port number"),
                    active: rest.contains(" ACTIVE "),
                    in_pkts: 0,
                    in_bytes: 0,
                    out_pkts: 0,
                    out_bytes: 0,
                    endpoints: Vec::new(),
                });
                continue;
            }
            let Some(port) = ports.last_mut() else {
                continue;
            };
            if let Some(counters) = line.strip_prefix(" IN:") {
                (port.in_pkts, port.in_bytes) = parse_counters(counters);
            } else if let Some(counters) = line.strip_prefix(" OUT:") {
                (port.out_pkts, port.out_bytes) = parse_counters(counters);
            } else if let Some(endpoint) = line.strip_prefix("  -- endpoint ID ") {
                // `NNNN module %-12s: description`; module names contain no ':'.
                let (_, description) = endpoint.split_once(": ").expect("endpoint line");
                port.endpoints.push(description.to_owned());
            }
        }
        ports
    }
}

/// `  pkts N          bytes M` → (N, M).
fn parse_counters(text: &str) -> (u64, u64) {
    let words: Vec<&str> = text.split_whitespace().collect();
    match words[..] {
        ["pkts", pkts, "bytes", bytes] => (pkts.parse().expect("packet counter"), bytes.parse().expect("byte counter")),
        _ => panic!("unexpected counter line {text:?}"),
    }
}
