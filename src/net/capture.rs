//! Frame capture (`capture/start PORT FILE`): what ports receive and send,
//! written as pcapng to a regular file or a FIFO for live viewing.
//!
//! Each port is one pcapng interface named `port N`, described the first
//! time it has a frame, and every frame carries its direction in the
//! `epb_flags` option (inbound: received from the port's endpoint;
//! outbound: sent to it). The blocks are few and fixed, so they are
//! written here rather than through a crate's `Write`-based writer: frames
//! must go into a bounded buffer the switch controls, and a slow reader
//! must cost dropped frames, never a blocked write.

use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::log;
use super::peer::Peer;
use crate::engine::PortId;
use crate::mgmt::{CaptureDesk, Out};

/// Bytes of blocks a capture holds for a reader that is behind; frames
/// that do not fit are dropped and counted.
const BUFFER_LIMIT: usize = 1 << 20;
/// Buffered bytes past which a capture writes out at once rather than at
/// the end of the loop's round.
const WRITE_THRESHOLD: usize = 64 << 10;

const LINKTYPE_ETHERNET: u16 = 1;
const BLOCK_SECTION_HEADER: u32 = 0x0A0D_0D0A;
const BLOCK_INTERFACE: u32 = 1;
const BLOCK_ENHANCED_PACKET: u32 = 6;
const OPTION_END: u16 = 0;
const OPTION_IF_NAME: u16 = 2;
const OPTION_EPB_FLAGS: u16 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Received from the port's endpoint.
    In = 1,
    /// Sent to the port's endpoint.
    Out = 2,
}

/// An open capture file and what goes into it.
struct Capture {
    /// The port captured; 0 captures every port.
    port: PortId,
    path: String,
    file: File,
    fifo: bool,
    /// Blocks not yet written.
    pending: Vec<u8>,
    /// For each port, 1 + its interface id once described, else 0.
    interfaces: Vec<u32>,
    described: u32,
    frames: u64,
    dropped: u64,
}

fn padded(len: usize) -> usize {
    len.div_ceil(4) * 4
}

fn put16(buf: &mut Vec<u8>, v: u16) {
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_le_bytes());
}

fn pad(buf: &mut Vec<u8>, len: usize) {
    buf.resize(buf.len() + padded(len) - len, 0);
}

impl Capture {
    /// A capture of `port` to `file` with nothing written or described yet.
    fn new(port: PortId, path: String, file: File, fifo: bool) -> Capture {
        Capture {
            port,
            path,
            file,
            fifo,
            pending: Vec::new(),
            interfaces: Vec::new(),
            described: 0,
            frames: 0,
            dropped: 0,
        }
    }

    fn section_header(&mut self) {
        let b = &mut self.pending;
        put32(b, BLOCK_SECTION_HEADER);
        put32(b, 28);
        put32(b, 0x1A2B_3C4D);
        put16(b, 1);
        put16(b, 0);
        // Section length not known in advance.
        b.extend_from_slice(&(-1i64).to_le_bytes());
        put32(b, 28);
    }

    /// The interface id of `port`, describing it first if it is new here.
    fn interface(&mut self, port: PortId) -> u32 {
        let i = port as usize;
        if i >= self.interfaces.len() {
            self.interfaces.resize(i + 1, 0);
        }
        if self.interfaces[i] == 0 {
            let name = format!("port {port}");
            let len = 20 + 4 + padded(name.len()) + 4;
            let b = &mut self.pending;
            put32(b, BLOCK_INTERFACE);
            put32(b, len as u32);
            put16(b, LINKTYPE_ETHERNET);
            put16(b, 0);
            // No snapshot limit: frames are kept whole.
            put32(b, 0);
            put16(b, OPTION_IF_NAME);
            put16(b, name.len() as u16);
            b.extend_from_slice(name.as_bytes());
            pad(b, name.len());
            put16(b, OPTION_END);
            put16(b, 0);
            put32(b, len as u32);
            self.described += 1;
            self.interfaces[i] = self.described;
        }
        self.interfaces[i] - 1
    }

    fn record(&mut self, port: PortId, direction: Direction, frame: &[u8], micros: u64) {
        let len = 44 + padded(frame.len());
        // Room for the block, and for the port's description if new.
        let room = len + 64;
        if self.pending.len() + room > BUFFER_LIMIT {
            // A failure shows again at the round's write, which ends it.
            let _ = self.write_out();
            if self.pending.len() + room > BUFFER_LIMIT {
                self.dropped += 1;
                return;
            }
        }
        let interface = self.interface(port);
        let b = &mut self.pending;
        put32(b, BLOCK_ENHANCED_PACKET);
        put32(b, len as u32);
        put32(b, interface);
        put32(b, (micros >> 32) as u32);
        put32(b, micros as u32);
        put32(b, frame.len() as u32);
        put32(b, frame.len() as u32);
        b.extend_from_slice(frame);
        pad(b, frame.len());
        put16(b, OPTION_EPB_FLAGS);
        put16(b, 4);
        put32(b, direction as u32);
        put16(b, OPTION_END);
        put16(b, 0);
        put32(b, len as u32);
        self.frames += 1;
    }

    /// Writes what the file takes without waiting. `Err` means the capture
    /// cannot go on (the reader went away, the disk is full).
    fn write_out(&mut self) -> io::Result<()> {
        let mut written = 0;
        let result = loop {
            if written == self.pending.len() {
                break Ok(());
            }
            match (&self.file).write(&self.pending[written..]) {
                Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.pending.drain(..written);
        result
    }

    fn describe(&self) -> String {
        if self.port == 0 { "every port".to_string() } else { format!("port {}", self.port) }
    }
}

/// The captures running, consulted by the data path for every batch.
#[derive(Default)]
pub struct Captures {
    running: Vec<Capture>,
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

impl Captures {
    /// Whether any capture runs: the data path's only cost otherwise.
    #[inline]
    pub fn is_on(&self) -> bool {
        !self.running.is_empty()
    }

    /// Records frames that `port` received or was sent.
    pub fn record<'a>(&mut self, port: PortId, direction: Direction, frames: impl IntoIterator<Item = &'a [u8]>) {
        let micros = now_micros();
        for frame in frames {
            for c in &mut self.running {
                if c.port == 0 || c.port == port {
                    c.record(port, direction, frame, micros);
                }
            }
        }
        if self.running.iter().any(|c| c.pending.len() > WRITE_THRESHOLD) {
            self.write_out();
        }
    }

    /// Writes out what the captures hold; those that cannot go on end.
    pub fn write_out(&mut self) {
        self.running.retain_mut(|c| match c.write_out() {
            Ok(()) => true,
            Err(e) => {
                end_log(c, &e);
                false
            }
        });
    }

    /// Once a second: a FIFO whose reader has gone ends its capture even
    /// while no frame comes to find out by writing.
    pub fn tick(&mut self) {
        self.write_out();
        self.running.retain(|c| {
            if !c.fifo {
                return true;
            }
            let mut fds = [PollFd::new(c.file.as_fd(), PollFlags::POLLOUT)];
            let gone = poll(&mut fds, PollTimeout::ZERO).is_ok()
                && fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLERR));
            if gone {
                end_log(c, &io::Error::from_raw_os_error(libc::EPIPE));
            }
            !gone
        });
    }

    fn start(&mut self, port: PortId, path: &str, file: File, fifo: bool) -> Result<(), (Errno, String)> {
        if self.running.iter().any(|c| c.port == port) {
            let what = if port == 0 { "every port is" } else { "this port is" };
            return Err((Errno::EBUSY, format!("{what} already captured: capture/stop {port} first")));
        }
        let mut c = Capture::new(port, path.to_string(), file, fifo);
        c.section_header();
        if port != 0 {
            c.interface(port);
        }
        c.write_out().map_err(|e| (errno_of(&e), format!("{path}: {}", log::error_text(&e))))?;
        log::log(&format!("capture of {} to {path} started", c.describe()));
        self.running.push(c);
        Ok(())
    }

    fn stop(&mut self, port: PortId) -> bool {
        let Some(i) = self.running.iter().position(|c| c.port == port) else { return false };
        let mut c = self.running.remove(i);
        // A FIFO's reader may not take the rest now; it is not waited for.
        let _ = c.write_out();
        let unwritten = c.pending.len();
        let tail = if unwritten > 0 { format!(", last {unwritten} bytes not written") } else { String::new() };
        log::log(&format!(
            "capture of {} to {} stopped: {} frames, {} dropped{tail}",
            c.describe(),
            c.path,
            c.frames,
            c.dropped
        ));
        true
    }
}

fn end_log(c: &Capture, e: &io::Error) {
    let why = match e.raw_os_error() {
        Some(libc::EPIPE) => "the reader went away".to_string(),
        _ => log::error_text(e),
    };
    log::log(&format!(
        "capture of {} to {} ended: {why}: {} frames, {} dropped",
        c.describe(),
        c.path,
        c.frames,
        c.dropped
    ));
}

fn errno_of(e: &io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}

/// Opens (or creates) a capture file without following a symbolic link
/// at `path`. A new file gets mode 0600; an existing regular file is
/// refused unless `overwrite`, then truncated; a FIFO is opened for its
/// reader (one must be reading already); anything else is refused. The
/// type is checked on the opened descriptor, so a file swapped in between
/// cannot slip through. Returns the file and whether it is a FIFO.
pub fn open(path: &str, overwrite: bool) -> Result<(File, bool), (Errno, String)> {
    let fail = |e: Errno, why: &str| Err((e, format!("{path}: {why}")));
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
    let created = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(flags).open(path);
    let (file, new) = match created {
        Ok(file) => (file, true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let meta = match std::fs::symlink_metadata(path) {
                Ok(meta) => meta,
                Err(e) => return fail(errno_of(&e), &log::error_text(&e)),
            };
            let kind = meta.file_type();
            if kind.is_symlink() {
                return fail(Errno::ELOOP, "is a symbolic link, not followed");
            }
            if !kind.is_fifo() && !kind.is_file() {
                return fail(Errno::EINVAL, "not a regular file or a FIFO");
            }
            if kind.is_file() && !overwrite {
                return fail(Errno::EEXIST, "exists (add `overwrite` to replace it)");
            }
            match std::fs::OpenOptions::new().write(true).custom_flags(flags).open(path) {
                Ok(file) => (file, false),
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                    return fail(Errno::ENXIO, "FIFO has no reader (start the reader first)");
                }
                Err(e) => return fail(errno_of(&e), &log::error_text(&e)),
            }
        }
        Err(e) => return fail(errno_of(&e), &log::error_text(&e)),
    };
    let kind = match file.metadata() {
        Ok(meta) => meta.file_type(),
        Err(e) => return fail(errno_of(&e), &log::error_text(&e)),
    };
    if kind.is_fifo() {
        return Ok((file, true));
    }
    if !kind.is_file() {
        return fail(Errno::EINVAL, "not a regular file or a FIFO");
    }
    if !new && let Err(e) = file.set_len(0) {
        return fail(errno_of(&e), &log::error_text(&e));
    }
    Ok((file, false))
}

/// The console's way to the captures, opening files with the identity of
/// whoever gave the command.
pub struct Desk<'a> {
    captures: &'a mut Captures,
    /// The console peer, `None` for stdin and rc files (the switch's own
    /// identity).
    peer: Option<&'a Peer>,
}

impl<'a> Desk<'a> {
    pub fn new(captures: &'a mut Captures, peer: Option<&'a Peer>) -> Self {
        Desk { captures, peer }
    }
}

impl CaptureDesk for Desk<'_> {
    fn start(&mut self, port: PortId, path: &str, overwrite: bool) -> Result<(), (Errno, String)> {
        let (file, fifo) = match self.peer {
            None => open(path, overwrite)?,
            // The file-system identity is per thread: borrowed on a thread
            // of its own, the loop keeps the switch's.
            Some(peer) => std::thread::scope(|scope| {
                let opening = scope.spawn(|| {
                    peer.assume().map_err(|e| (errno_of(&e), format!("{path}: {}", log::error_text(&e))))?;
                    open(path, overwrite)
                });
                opening.join().unwrap_or_else(|_| Err((Errno::EIO, format!("{path}: opening failed"))))
            })?,
        };
        self.captures.start(port, path, file, fifo)
    }

    fn stop(&mut self, port: PortId) -> bool {
        self.captures.stop(port)
    }

    fn print(&self, out: &mut Out) {
        use std::fmt::Write as _;
        for c in &self.captures.running {
            let kind = if c.fifo { "fifo" } else { "file" };
            let _ = writeln!(out, "Port {:04} {kind} {} frames {} dropped {}", c.port, c.path, c.frames, c.dropped);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(port: PortId) -> (tempfile::TempDir, Capture) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.pcapng");
        let (file, fifo) = open(path.to_str().unwrap(), false).unwrap();
        let c = Capture::new(port, String::new(), file, fifo);
        (dir, c)
    }

    #[test]
    fn blocks_are_whole_words_and_ports_are_described_once() {
        let (_dir, mut c) = capture(0);
        c.section_header();
        assert_eq!(c.pending.len(), 28);
        c.record(3, Direction::In, &[0xaa; 61], 1);
        // Interface block (28 + "port 3" padded to 8) then the packet block.
        assert_eq!(c.pending.len(), 28 + 36 + 44 + 64);
        c.record(3, Direction::Out, &[0xbb; 60], 2);
        c.record(7, Direction::Out, &[0xcc; 60], 3);
        assert_eq!(c.interfaces[3], 1);
        assert_eq!(c.interfaces[7], 2);
        assert_eq!(c.pending.len() % 4, 0);
        assert_eq!(c.frames, 3);
    }

    #[test]
    fn a_full_buffer_drops_and_counts() {
        let (_dir, mut c) = capture(1);
        c.pending.resize(BUFFER_LIMIT - 10, 0);
        // A regular file always takes the backlog, so make it refuse.
        c.file = File::open("/dev/null").unwrap();
        c.record(1, Direction::In, &[0; 60], 0);
        assert_eq!((c.frames, c.dropped), (0, 1));
    }

    #[test]
    fn existing_files_links_and_devices_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"keep").unwrap();
        let name = file.to_str().unwrap();
        assert_eq!(open(name, false).unwrap_err().0, Errno::EEXIST);
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
        assert!(open(name, true).is_ok());
        assert_eq!(std::fs::read(&file).unwrap(), b"");
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(open(link.to_str().unwrap(), true).unwrap_err().0, Errno::ELOOP);
        assert_eq!(open("/dev/null", true).unwrap_err().0, Errno::EINVAL);
        let new = dir.path().join("n");
        open(new.to_str().unwrap(), false).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&new).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
