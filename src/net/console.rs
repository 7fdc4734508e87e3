//! Console transports: the management socket's sessions and the switch's
//! own standard input. Both feed lines to the one command table in `mgmt`.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::unistd::Gid;

pub use crate::mgmt::MAX_LINE;
use crate::mgmt::Session;

/// A session is closed once this many bytes of debug events wait for it:
/// a client that never reads must not make the switch buffer without
/// bound. Replies need no such limit, since a session's next command only
/// runs once the previous reply is out.
const MAX_EVENT_BACKLOG: usize = 256 << 10;

/// Splits console input into command lines. A line ends at `\n`. What a
/// read leaves without a newline is a command too, because vde_switch takes
/// each read as one command and clients rely on that; but when the read
/// filled the buffer, the line most likely goes on in the next read, so it
/// is kept until then (pipelined commands must not be cut in two).
#[derive(Debug, Default)]
pub struct LineSplitter {
    /// The beginning of a line whose end has not arrived yet.
    partial: Vec<u8>,
    /// The line is too long: its bytes are dropped up to its newline.
    skipping: bool,
}

/// One command line, or the marker for a line that was too long.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Command(String),
    TooLong,
}

impl LineSplitter {
    /// The lines `bytes` (one read) completes; `filled` when the read took
    /// as much as the buffer holds.
    pub fn split(&mut self, bytes: &[u8], filled: bool) -> Vec<Line> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            self.add(&rest[..end], &mut out);
            self.end_line(&mut out);
            rest = &rest[end + 1..];
        }
        if !rest.is_empty() {
            self.add(rest, &mut out);
            if !filled && !self.skipping {
                self.end_line(&mut out);
            }
        }
        out
    }

    fn add(&mut self, piece: &[u8], out: &mut Vec<Line>) {
        if self.skipping {
            return;
        }
        if self.partial.len() + piece.len() > MAX_LINE {
            out.push(Line::TooLong);
            self.partial.clear();
            self.skipping = true;
        } else {
            self.partial.extend_from_slice(piece);
        }
    }

    fn end_line(&mut self, out: &mut Vec<Line>) {
        if !self.skipping {
            out.push(Line::Command(String::from_utf8_lossy(&self.partial).into_owned()));
        }
        self.partial.clear();
        self.skipping = false;
    }
}

pub struct MgmtListener {
    pub listener: UnixListener,
    pub path: PathBuf,
}

impl MgmtListener {
    /// Listens on `path`. Returns `Ok(None)` when another live process
    /// already serves that path: like vde_switch, run without a console.
    pub fn open(path: &Path, mode: u32, group: Option<Gid>) -> io::Result<Option<MgmtListener>> {
        let listener = match UnixListener::bind(path) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                if UnixStream::connect(path).is_ok() {
                    return Ok(None);
                }
                fs::remove_file(path)?;
                UnixListener::bind(path)?
            }
            Err(e) => return Err(e),
        };
        listener.set_nonblocking(true)?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
        if let Some(g) = group {
            chown(path, None, Some(g.as_raw()))?;
        }
        Ok(Some(MgmtListener { listener, path: path.to_path_buf() }))
    }
}

/// One management-socket connection.
///
/// Commands run one at a time: lines received wait in `queued` while the
/// previous reply is still being written, and the socket is not read while
/// anything waits. A client that pipelines commands without reading the
/// replies therefore stalls only itself.
pub struct SocketSession {
    pub stream: UnixStream,
    pub state: Session,
    lines: LineSplitter,
    queued: VecDeque<Line>,
    out: VecDeque<u8>,
    /// Bytes of debug events queued since `out` was last empty.
    event_backlog: usize,
    /// Close once the pending output is written (after `logout`).
    pub closing: bool,
    /// The peer will send nothing more: close once its commands are served.
    eof: bool,
}

impl SocketSession {
    pub fn new(stream: UnixStream, state: Session) -> Self {
        SocketSession {
            stream,
            state,
            lines: LineSplitter::default(),
            queued: VecDeque::new(),
            out: VecDeque::new(),
            event_backlog: 0,
            closing: false,
            eof: false,
        }
    }

    /// Whether the socket should be read: nothing is waiting to be run or
    /// written, and the session goes on.
    pub fn wants_input(&self) -> bool {
        !self.eof && !self.closing && self.queued.is_empty() && self.out.is_empty()
    }

    /// Reads what is available and queues the lines it completes.
    pub fn receive(&mut self) {
        let mut buf = [0u8; 2 * MAX_LINE];
        match self.stream.read(&mut buf) {
            Ok(0) => self.eof = true,
            Ok(n) => self.queued.extend(self.lines.split(&buf[..n], n == buf.len())),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => self.eof = true,
        }
    }

    /// The next line to run, unless the previous reply is still going out.
    pub fn next_line(&mut self) -> Option<Line> {
        if self.closing || !self.out.is_empty() {
            return None;
        }
        self.queued.pop_front()
    }

    /// Whether the session has nothing left to do: it logged out, or the
    /// peer stopped sending and every command it sent was answered.
    pub fn finished(&self) -> bool {
        self.out.is_empty() && (self.closing || (self.eof && self.queued.is_empty()))
    }

    /// Queues a reply (or the greeting) and tries to write it. Returns
    /// false when the peer is gone.
    pub fn send_reply(&mut self, bytes: &[u8]) -> bool {
        self.out.extend(bytes);
        self.flush()
    }

    /// Queues a debug event line. Returns false when the peer is gone or
    /// has fallen too far behind: the session must then be dropped.
    pub fn send_event(&mut self, line: &[u8]) -> bool {
        self.out.extend(line);
        self.event_backlog += line.len();
        self.flush() && self.event_backlog <= MAX_EVENT_BACKLOG
    }

    /// Writes as much pending output as the socket takes. Returns false
    /// when the peer is gone.
    pub fn flush(&mut self) -> bool {
        while !self.out.is_empty() {
            let (chunk, _) = self.out.as_slices();
            match self.stream.write(chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        self.event_backlog = 0;
        true
    }

    pub fn has_pending_output(&self) -> bool {
        !self.out.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(s: &str) -> Line {
        Line::Command(s.into())
    }

    #[test]
    fn a_read_without_newline_is_a_command() {
        let mut s = LineSplitter::default();
        assert_eq!(s.split(b"help\nport/print", false), vec![cmd("help"), cmd("port/print")]);
        assert_eq!(s.split(b"a\r\n\n", false), vec![cmd("a\r"), cmd("")]);
    }

    #[test]
    fn a_full_read_keeps_its_unfinished_line() {
        let mut s = LineSplitter::default();
        assert_eq!(s.split(b"help\nhe", true), vec![cmd("help")]);
        assert_eq!(s.split(b"lp\nport", false), vec![cmd("help"), cmd("port")]);
    }

    #[test]
    fn overlong_line_is_reported_once_and_skipped_to_its_end() {
        let mut s = LineSplitter::default();
        let long = vec![b'x'; MAX_LINE + 1];
        assert_eq!(s.split(&long, false), vec![Line::TooLong]);
        assert_eq!(s.split(b"xxxx", false), vec![]);
        assert_eq!(s.split(b"xxxx\nhelp\n", false), vec![cmd("help")]);
        let half = vec![b'x'; MAX_LINE / 2 + 1];
        assert_eq!(s.split(&half, true), vec![]);
        assert_eq!(s.split(&half, true), vec![Line::TooLong]);
        assert_eq!(s.split(b"x\n", false), vec![]);
        let exactly = vec![b'x'; MAX_LINE];
        assert_eq!(s.split(&exactly, false), vec![cmd(&"x".repeat(MAX_LINE))]);
    }
}
