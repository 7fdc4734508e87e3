//! Console transports: the management socket's sessions and the switch's
//! own standard input. Both feed lines to the one command table in `mgmt`.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::unistd::Gid;

use crate::mgmt::Session;

/// Longest console line accepted; longer ones are answered with an error.
pub const MAX_LINE: usize = 4096;
/// A session whose unread output grows past this is closed: a client that
/// never reads must not make the switch buffer without bound.
const MAX_PENDING_OUTPUT: usize = 16 << 20;

/// Splits console input into command lines. A line ends at `\n`; whatever
/// a read leaves without a newline is a command too, because the reference
/// treats each read as one command and clients rely on that.
#[derive(Debug, Default)]
pub struct LineSplitter {
    /// Bytes of an overlong line are skipped up to its newline.
    skipping: bool,
}

/// One command line, or the marker for a line that was too long.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Command(String),
    TooLong,
}

impl LineSplitter {
    pub fn split(&mut self, bytes: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let (line, next, complete) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], &rest[i + 1..], true),
                None => (rest, &[][..], false),
            };
            rest = next;
            if self.skipping {
                self.skipping = !complete;
                continue;
            }
            if line.len() > MAX_LINE {
                out.push(Line::TooLong);
                self.skipping = !complete;
            } else {
                out.push(Line::Command(String::from_utf8_lossy(line).into_owned()));
            }
        }
        out
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
pub struct SocketSession {
    pub stream: UnixStream,
    pub state: Session,
    pub lines: LineSplitter,
    out: Vec<u8>,
    /// Close once the pending output is written (after `logout`).
    pub closing: bool,
}

impl SocketSession {
    pub fn new(stream: UnixStream, state: Session) -> Self {
        SocketSession { stream, state, lines: LineSplitter::default(), out: Vec::new(), closing: false }
    }

    /// Reads what is available. `eof` means the peer is gone.
    pub fn read(&mut self) -> (Vec<Line>, bool) {
        let mut buf = [0u8; 2 * MAX_LINE];
        match self.stream.read(&mut buf) {
            Ok(0) => (Vec::new(), true),
            Ok(n) => (self.lines.split(&buf[..n]), false),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {
                (Vec::new(), false)
            }
            Err(_) => (Vec::new(), true),
        }
    }

    /// Queues output and tries to write it. Returns false when the session
    /// must be dropped (peer gone, or too far behind).
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        self.out.extend_from_slice(bytes);
        self.flush()
    }

    pub fn flush(&mut self) -> bool {
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(0) => return false,
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        self.out.len() <= MAX_PENDING_OUTPUT
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
    fn splits_lines_and_keeps_unterminated_tail() {
        let mut s = LineSplitter::default();
        assert_eq!(s.split(b"help\nport/print"), vec![cmd("help"), cmd("port/print")]);
        assert_eq!(s.split(b"a\r\n\n"), vec![cmd("a\r"), cmd("")]);
    }

    #[test]
    fn overlong_line_is_reported_once_and_skipped() {
        let mut s = LineSplitter::default();
        let long = vec![b'x'; MAX_LINE + 1];
        assert_eq!(s.split(&long), vec![Line::TooLong]);
        assert_eq!(s.split(b"xxxx\nhelp\n"), vec![cmd("help")]);
    }
}
