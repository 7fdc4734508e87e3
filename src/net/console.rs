//! Console transports: the management socket's sessions and the switch's
//! own standard input. Both feed lines to the one command table in `mgmt`.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::epoll::EpollFlags;
use nix::unistd::Gid;

use super::{Exit, Server, Token, interest, log};
use crate::engine::Event;
pub use crate::mgmt::MAX_LINE;
use crate::mgmt::{self, BANNER, Context, Effect, PROMPT, Session, SessionKind, format_event};

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
        let Some(listener) = super::listen_at(path)? else { return Ok(None) };
        let prepare = || -> io::Result<()> {
            listener.set_nonblocking(true)?;
            fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
            if let Some(g) = group {
                chown(path, None, Some(g.as_raw()))?;
            }
            Ok(())
        };
        if let Err(e) = prepare() {
            let _ = fs::remove_file(path);
            return Err(e);
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

/// The console a command came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Session(usize),
    Stdin,
}

/// A command's reply, and whether it ended the console's session (no
/// prompt follows then).
struct Reply {
    text: Vec<u8>,
    ends_session: bool,
}

impl Reply {
    /// The answer to a line that is too long to be a command.
    fn refused() -> Reply {
        Reply { text: mgmt::status(Err(Errno::EINVAL)).into_bytes(), ends_session: false }
    }
}

pub(super) struct StdinConsole {
    state: Session,
    lines: LineSplitter,
}

/// The switch's console side: sessions, the stdin console and rc files.
impl Server {
    /// Runs the rc file with its output discarded. A missing file is
    /// ignored, as by vde_switch; one that cannot be used and each failing
    /// command are logged.
    pub(super) fn run_rc_file(&mut self, path: &std::path::Path) {
        let name = path.to_string_lossy();
        let text = match mgmt::read_script(&name) {
            Ok(text) => text,
            Err(Errno::ENOENT) => return,
            Err(e) => {
                log::log(&format!("{name}: {}", mgmt::strerror(e)));
                return;
            }
        };
        let mut session = Session::new(SessionKind::RcFile);
        let mut ctx = Context::new(&mut self.switch, &self.info, self.now, &mut session);
        let mut discarded = mgmt::Out::default();
        if let Err(e) = mgmt::run_script(&mut ctx, &name, &text, &mut discarded) {
            ctx.log.push(format!("{name}: {}", mgmt::strerror(e)));
        }
        let Context { effects, events, log: lines, .. } = ctx;
        for line in &lines {
            log::log(line);
        }
        self.deliver_events(&events, None);
        self.apply_effects(None, &effects);
    }

    pub(super) fn start_stdin(&mut self) {
        let stdin = io::stdin();
        let registered = self.epoll.add(stdin.as_fd(), interest(Token::Stdin, EpollFlags::EPOLLIN));
        self.stdin = Some(StdinConsole { state: Session::new(SessionKind::Stdin), lines: LineSplitter::default() });
        if registered.is_err() {
            // Regular files and /dev/null cannot be polled, and never block:
            // run them to the end now.
            while self.stdin.is_some() && self.exit.is_none() {
                self.read_stdin();
            }
        }
    }

    pub(super) fn accept_mgmt(&mut self) {
        let mut accepted = Vec::new();
        loop {
            let Some(m) = &self.mgmt else { return };
            match m.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let slot = self.sessions.vacant_key();
                    if self.epoll.add(&stream, interest(Token::Session(slot), EpollFlags::EPOLLIN)).is_err() {
                        continue;
                    }
                    let mut session = SocketSession::new(stream, Session::new(SessionKind::Socket));
                    let greeting = format!("{BANNER}{PROMPT}");
                    session.send_reply(greeting.as_bytes());
                    self.sessions.insert(session);
                    accepted.push(slot);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.pause_listener(Token::Mgmt, &e);
                    break;
                }
            }
        }
        // A greeting the socket did not take at once waits for EPOLLOUT.
        for slot in accepted {
            self.update_session_interest(slot);
        }
    }

    /// Readable, or the peer hung up: epoll reports a hang-up even while the
    /// socket is not watched for input, and reading is how it is noticed.
    pub(super) fn read_session(&mut self, slot: usize) {
        let Some(session) = self.sessions.get_mut(slot) else { return };
        if session.has_pending_output() {
            // Not reading while a reply is going out; a dead peer shows here.
            if !session.flush() {
                self.drop_session(slot);
                return;
            }
        }
        if session.wants_input() {
            session.receive();
        }
        self.serve_session(slot);
    }

    pub(super) fn flush_session(&mut self, slot: usize) {
        let Some(session) = self.sessions.get_mut(slot) else { return };
        if !session.flush() {
            self.drop_session(slot);
            return;
        }
        self.serve_session(slot);
    }

    /// Runs the session's queued lines for as long as their replies go out
    /// at once, then waits for whatever lets it go on.
    fn serve_session(&mut self, slot: usize) {
        while self.exit.is_none() {
            let Some(line) = self.sessions.get_mut(slot).and_then(SocketSession::next_line) else { break };
            let reply = match line {
                Line::Command(text) => self.run_command(Origin::Session(slot), &text),
                Line::TooLong => Reply::refused(),
            };
            let Some(session) = self.sessions.get_mut(slot) else { return };
            let mut bytes = reply.text;
            if !reply.ends_session {
                bytes.extend_from_slice(PROMPT.as_bytes());
            }
            if !session.send_reply(&bytes) {
                self.drop_session(slot);
                return;
            }
        }
        self.update_session_interest(slot);
    }

    fn update_session_interest(&mut self, slot: usize) {
        let Some(session) = self.sessions.get(slot) else { return };
        if session.finished() {
            self.drop_session(slot);
            return;
        }
        let mut flags = EpollFlags::empty();
        if session.wants_input() {
            flags |= EpollFlags::EPOLLIN;
        }
        if session.has_pending_output() {
            flags |= EpollFlags::EPOLLOUT;
        }
        let _ = self.epoll.modify(&session.stream, &mut interest(Token::Session(slot), flags));
    }

    fn drop_session(&mut self, slot: usize) {
        if let Some(session) = self.sessions.try_remove(slot) {
            let _ = self.epoll.delete(&session.stream);
        }
    }

    pub(super) fn read_stdin(&mut self) {
        let Some(console) = &mut self.stdin else { return };
        let mut buf = [0u8; 2 * MAX_LINE];
        let n = match io::stdin().lock().read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(_) => 0,
        };
        if n == 0 {
            log::log("EOF on stdin, cleaning up and exiting");
            let _ = self.epoll.delete(io::stdin().as_fd());
            self.stdin = None;
            self.exit.get_or_insert(Exit::StdinClosed);
            return;
        }
        for line in console.lines.split(&buf[..n], n == buf.len()) {
            let reply = match line {
                Line::Command(text) => self.run_command(Origin::Stdin, &text),
                Line::TooLong => Reply::refused(),
            };
            let mut out = io::stdout().lock();
            let _ = out.write_all(&reply.text);
            let _ = out.flush();
            // The reference writes its prompt to descriptor 0, which on a
            // terminal is the terminal itself; after `logout` (which keeps
            // this console open) and `shutdown` it writes nothing.
            if !reply.ends_session {
                let _ = nix::unistd::write(io::stdin().as_fd(), PROMPT.as_bytes());
            }
            if self.exit.is_some() {
                break;
            }
        }
    }

    /// Runs one console line and returns its reply. The reply already
    /// shows the origin's subscribed events in place; the other consoles
    /// get them here, before the origin gets its reply.
    fn run_command(&mut self, origin: Origin, line: &str) -> Reply {
        // Events of earlier traffic first, so every console sees all events
        // in the order they happened.
        self.publish_events();
        let state = match origin {
            Origin::Session(slot) => self.sessions.get_mut(slot).map(|s| &mut s.state),
            Origin::Stdin => self.stdin.as_mut().map(|c| &mut c.state),
        };
        // The session was dropped while earlier events went out (it fell
        // too far behind): the command is not run, and nobody reads a reply.
        let Some(state) = state else { return Reply { text: Vec::new(), ends_session: true } };
        let mut ctx = Context::new(&mut self.switch, &self.info, self.now, state);
        let text = mgmt::execute(&mut ctx, line).into_bytes();
        let Context { effects, events, log: lines, .. } = ctx;
        for line in &lines {
            log::log(line);
        }
        self.deliver_events(&events, Some(origin));
        self.apply_effects(Some(origin), &effects);
        let ends_session = effects.iter().any(|e| matches!(e, Effect::Logout | Effect::Shutdown));
        Reply { text, ends_session }
    }

    fn apply_effects(&mut self, origin: Option<Origin>, effects: &[Effect]) {
        for effect in effects {
            match *effect {
                Effect::Logout => {
                    // The stdin console stays open after `logout`.
                    if let Some(Origin::Session(slot)) = origin
                        && let Some(session) = self.sessions.get_mut(slot)
                    {
                        session.closing = true;
                    }
                }
                Effect::Shutdown => {
                    log::log("Shutdown from mgmt command");
                    self.exit.get_or_insert(Exit::Shutdown);
                }
                Effect::CloseEndpoint(key) => match self.data.conn_of(key) {
                    Some(conn) => self.close_conn(conn),
                    // A tap has no control connection: closing its
                    // descriptor removes the interface, as in vde_switch.
                    None => drop(self.data.remove(&self.epoll, key)),
                },
            }
        }
        // Closing an endpoint's sockets may have queued nothing new in the
        // engine (the command detached it already), but traffic might have.
        self.publish_events();
    }

    /// Hands the engine's pending events to the log and to subscribed
    /// consoles.
    pub(super) fn publish_events(&mut self) {
        let events = self.switch.take_events();
        self.deliver_events(&events, None);
    }

    /// Logs and notifies `events`, skipping the console they were already
    /// shown to. A session too far behind is dropped.
    fn deliver_events(&mut self, events: &[Event], shown_to: Option<Origin>) {
        if events.is_empty() {
            return;
        }
        // Most of the time nobody listens: then no line is even formatted.
        let stdin_debug = self.stdin.as_ref().map_or(0, |c| c.state.debug);
        let listening = self.sessions.iter().fold(stdin_debug, |mask, (_, s)| mask | s.state.debug) != 0;
        let mut dead = Vec::new();
        for event in events {
            if let Event::MacMoved { mac, from, to } = event {
                self.moves.note(|| format!("MAC {mac} moved from port {from} to port {to}"));
                continue;
            }
            if !listening {
                continue;
            }
            let Some((category, line)) = format_event(event) else { continue };
            for (slot, session) in self.sessions.iter_mut() {
                if shown_to != Some(Origin::Session(slot))
                    && session.state.wants(category)
                    && !dead.contains(&slot)
                    && !session.send_event(&line)
                {
                    dead.push(slot);
                }
            }
            if shown_to != Some(Origin::Stdin) && self.stdin.as_ref().is_some_and(|c| c.state.wants(category)) {
                let _ = io::stdout().write_all(&line);
            }
        }
        for slot in dead {
            self.drop_session(slot);
        }
        let pending: Vec<usize> =
            self.sessions.iter().filter(|(_, s)| s.has_pending_output()).map(|(slot, _)| slot).collect();
        for slot in pending {
            self.update_session_interest(slot);
        }
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
