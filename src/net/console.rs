//! Console transports: the management socket's sessions and the switch's
//! own standard input. Both feed lines to the one command table in `mgmt`.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::EpollFlags;
use nix::unistd::Gid;

use super::host_ports::VxlanPorts;
use super::jobs::{LOAD_TIME_LIMIT, Waiter};
use super::log::ConsoleOut;
use super::peer::Peer;
use super::{
    ACCEPT_BATCH, Accepted, Exit, JobOutcome, MAX_SESSIONS, Server, Token, capture, interest, log, token_generation,
};
use crate::engine::Event;
pub use crate::mgmt::MAX_LINE;
use crate::mgmt::{self, BANNER, Context, Effect, PROMPT, Scripts, Session, SessionKind, format_event};

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
        let prepare = |at: &Path| -> io::Result<()> {
            fs::set_permissions(at, fs::Permissions::from_mode(mode))?;
            match group {
                Some(g) => chown(at, None, Some(g.as_raw())),
                None => Ok(()),
            }
        };
        let Some(listener) = super::listen_atomically(path, prepare)? else { return Ok(None) };
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
    /// Whose rights `load` reads with.
    peer: Peer,
    /// Tells this session from earlier ones in the same slot.
    pub serial: u64,
    /// A `load` line waiting for its scripts to be read.
    loading: Option<String>,
    /// When the peer last sent something (the idlest session is closed
    /// first when there are too many).
    last_active: Instant,
    lines: LineSplitter,
    queued: VecDeque<Line>,
    out: VecDeque<u8>,
    /// Bytes of debug events queued since `out` was last empty.
    event_backlog: usize,
    /// Close once the pending output is written (after `logout`).
    pub closing: bool,
    /// The peer will send nothing more: close once its commands are served.
    eof: bool,
    /// The peer can no longer be written to (it closed its end): replies
    /// are discarded, but the lines it sent before going still run, as in
    /// vde_switch (`echo shutdown | …` that does not wait for the reply).
    mute: bool,
}

impl SocketSession {
    pub fn new(stream: UnixStream, state: Session, serial: u64) -> Self {
        SocketSession {
            peer: Peer::of(&stream),
            stream,
            state,
            serial,
            loading: None,
            last_active: Instant::now(),
            lines: LineSplitter::default(),
            queued: VecDeque::new(),
            out: VecDeque::new(),
            event_backlog: 0,
            closing: false,
            eof: false,
            mute: false,
        }
    }

    /// Whether the socket should be read: nothing is waiting to be run or
    /// written, and the session goes on.
    pub fn wants_input(&self) -> bool {
        !self.eof && !self.closing && self.queued.is_empty() && self.out.is_empty() && self.loading.is_none()
    }

    /// Reads what is available and queues the lines it completes.
    pub fn receive(&mut self) {
        let mut buf = [0u8; 2 * MAX_LINE];
        match self.stream.read(&mut buf) {
            Ok(0) => self.eof = true,
            Ok(n) => {
                self.last_active = Instant::now();
                self.queued.extend(self.lines.split(&buf[..n], n == buf.len()));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => self.eof = true,
        }
    }

    /// The next line to run, unless the previous reply is still going out.
    pub fn next_line(&mut self) -> Option<Line> {
        if self.closing || !self.out.is_empty() || self.loading.is_some() {
            return None;
        }
        self.queued.pop_front()
    }

    /// Whether the session has nothing left to do: it logged out, or the
    /// peer stopped sending and every command it sent was answered.
    pub fn finished(&self) -> bool {
        self.out.is_empty() && self.loading.is_none() && (self.closing || (self.eof && self.queued.is_empty()))
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
    /// when the peer is gone both ways: it reads nothing and has nothing
    /// more to send.
    pub fn flush(&mut self) -> bool {
        while !self.out.is_empty() && !self.mute {
            let (chunk, _) = self.out.as_slices();
            match self.stream.write(chunk) {
                Ok(n) if n > 0 => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Nobody reads any more; what it sent is read to the end.
                _ => self.mute = true,
            }
        }
        self.out.clear();
        self.event_backlog = 0;
        !(self.mute && self.eof)
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
    /// Lines read and not yet run (while a `load` waits for its scripts).
    queued: VecDeque<Line>,
    loading: Option<String>,
    /// Watched by epoll: otherwise (a regular file, /dev/null) read to the
    /// end at start-up, and `load` waits for its scripts there.
    polled: bool,
    /// Not watched for now: a `load` is under way or stdout is behind.
    paused: bool,
}

/// Runs `work` in a thread of its own and waits for it at most `limit`:
/// for file-system work before the event loop runs (the rc file), where
/// waiting blocks nothing else but still must end.
fn off_thread<T: Send + 'static>(limit: Duration, work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new().name("fs-job".into()).spawn(move || tx.send(work())).ok()?;
    rx.recv_timeout(limit).ok()
}

/// The scripts `path` needs, read with `peer`'s rights (the switch's own
/// for `None`).
fn prefetch_as(peer: Option<Peer>, path: String) -> Scripts {
    if let Some(peer) = peer
        && let Err(e) = peer.assume()
    {
        let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EPERM));
        return Scripts::from([(path, Err(errno))]);
    }
    mgmt::prefetch(&path, mgmt::read_script)
}

/// The switch's console side: sessions, the stdin console and rc files.
impl Server {
    /// Runs the rc file with its output discarded. A missing file is
    /// ignored, as by vde_switch; one that cannot be used and each failing
    /// command are logged.
    pub(super) fn run_rc_file(&mut self, path: &std::path::Path) {
        let name = path.to_string_lossy().into_owned();
        let reading = name.clone();
        let text = match off_thread(LOAD_TIME_LIMIT, move || mgmt::read_script(&reading)) {
            Some(Ok(text)) => text,
            Some(Err(Errno::ENOENT)) => return,
            Some(Err(e)) => {
                log::log(&format!("{name}: {}", mgmt::strerror(e)));
                return;
            }
            None => {
                log::log(&format!("{name}: not read within {} s, skipped", LOAD_TIME_LIMIT.as_secs()));
                return;
            }
        };
        let mut session = Session::new(SessionKind::RcFile);
        // The captures leave the data plane for the command, which reaches
        // the VXLAN ports through it as well; the data path does not run
        // meanwhile.
        let mut captures = std::mem::take(self.data.capture());
        let mut desk = capture::Desk::new(&mut captures, None);
        let mut ports = VxlanPorts { data: &mut self.data, epoll: &self.epoll };
        let mut ctx = Context::new(&mut self.switch, &self.info, self.now, &mut session);
        // `load` is refused in rc files; nothing else reads files.
        ctx.scripts = Some(Scripts::new());
        ctx.capture = Some(&mut desk);
        ctx.uplinks = Some(&mut ports);
        let mut discarded = mgmt::Out::default();
        if let Err(e) = mgmt::run_script(&mut ctx, &name, &text, &mut discarded) {
            ctx.log.push(format!("{name}: {}", mgmt::strerror(e)));
        }
        let Context { effects, events, log: lines, .. } = ctx;
        *self.data.capture() = captures;
        for line in &lines {
            log::log(line);
        }
        self.deliver_events(&events, None);
        self.apply_effects(None, &effects);
    }

    pub(super) fn start_stdin(&mut self) {
        let stdin = io::stdin();
        let registered = self.epoll.add(stdin.as_fd(), interest(Token::Stdin, EpollFlags::EPOLLIN));
        self.stdin = Some(StdinConsole {
            state: Session::new(SessionKind::Stdin),
            lines: LineSplitter::default(),
            queued: VecDeque::new(),
            loading: None,
            polled: registered.is_ok(),
            paused: false,
        });
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
        for _ in 0..ACCEPT_BATCH {
            let Some(m) = &self.mgmt else { return };
            let stream = match super::accept(&m.listener, &mut self.reserve) {
                Accepted::Stream(stream) => stream,
                Accepted::Nothing => break,
                Accepted::Shed => {
                    self.refusals.note(|| "Out of descriptors: closed a new console connection".into());
                    continue;
                }
                Accepted::Failed(e) => {
                    self.pause_listener(Token::Mgmt, &e);
                    break;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let max = super::cap(MAX_SESSIONS, 8);
            while self.sessions.len() >= max && self.close_idlest_session(max) {}
            let slot = self.sessions.vacant_key();
            self.serial += 1;
            let serial = self.serial;
            let token = Token::Session(slot, token_generation(serial));
            if self.epoll.add(&stream, interest(token, EpollFlags::EPOLLIN)).is_err() {
                continue;
            }
            let mut session = SocketSession::new(stream, Session::new(SessionKind::Socket), serial);
            let greeting = format!("{BANNER}{PROMPT}");
            session.send_reply(greeting.as_bytes());
            self.sessions.insert(session);
            accepted.push(slot);
        }
        // A greeting the socket did not take at once waits for EPOLLOUT.
        for slot in accepted {
            self.update_session_interest(slot);
        }
    }

    /// Makes room for a new session by closing the one whose peer has been
    /// silent longest.
    fn close_idlest_session(&mut self, max: usize) -> bool {
        let idlest = self.sessions.iter().min_by_key(|(_, s)| s.last_active).map(|(slot, _)| slot);
        let Some(slot) = idlest else { return false };
        self.refusals.note(|| format!("{max} console sessions open: closed the one idle longest"));
        self.drop_session(slot);
        true
    }

    /// Readable, or the peer hung up: epoll reports a hang-up even while the
    /// socket is not watched for input, and reading is how it is noticed.
    pub(super) fn read_session(&mut self, slot: usize) {
        let Some(session) = self.sessions.get_mut(slot) else { return };
        if session.loading.is_some() {
            // Not watched for input while a `load` waits: this is a
            // hang-up, reported whatever the interest, and nobody is left
            // to read the reply.
            self.drop_session(slot);
            return;
        }
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
                Line::Command(text) => match self.start_load(Origin::Session(slot), &text) {
                    Some(reply) => reply,
                    None => break,
                },
                Line::TooLong => Reply::refused(),
            };
            if !self.answer_session(slot, reply) {
                return;
            }
        }
        self.update_session_interest(slot);
    }

    /// Sends a reply and, unless it ended the session, the prompt. Returns
    /// false when the session is gone.
    fn answer_session(&mut self, slot: usize, reply: Reply) -> bool {
        {
            let Some(session) = self.sessions.get_mut(slot) else { return false };
            let mut bytes = reply.text;
            if !reply.ends_session {
                bytes.extend_from_slice(PROMPT.as_bytes());
            }
            if !session.send_reply(&bytes) {
                self.drop_session(slot);
                return false;
            }
        }
        true
    }

    /// Runs a console line, unless it is a `load` whose scripts must first
    /// be read off the loop: then starts that and returns `None` (the
    /// reply comes in [`Server::scripts_read`]). A `load` from a session
    /// reads with the rights of the session's peer, one from stdin with the
    /// switch's.
    fn start_load(&mut self, origin: Origin, line: &str) -> Option<Reply> {
        let Some(path) = mgmt::load_target(line) else { return Some(self.run_command(origin, line, Scripts::new())) };
        let path = path.to_string();
        let (waiter, peer) = match origin {
            Origin::Session(slot) => {
                let session = self.sessions.get(slot)?;
                (Waiter::Session(slot, session.serial), Some(session.peer.clone()))
            }
            Origin::Stdin if self.stdin.as_ref().is_some_and(|c| !c.polled) => {
                let scripts = off_thread(LOAD_TIME_LIMIT, move || prefetch_as(None, path));
                return Some(self.loaded(origin, line, scripts));
            }
            Origin::Stdin => (Waiter::Stdin, None),
        };
        if !self.jobs.start(waiter, LOAD_TIME_LIMIT, move || JobOutcome::Scripts(prefetch_as(peer, path))) {
            return Some(Reply { text: mgmt::status(Err(Errno::EAGAIN)).into_bytes(), ends_session: false });
        }
        match origin {
            Origin::Session(slot) => self.sessions.get_mut(slot)?.loading = Some(line.to_string()),
            Origin::Stdin => self.stdin.as_mut()?.loading = Some(line.to_string()),
        }
        None
    }

    /// Runs a `load` line with the scripts read for it, or answers that
    /// they could not be read in time (`None`).
    fn loaded(&mut self, origin: Origin, line: &str, scripts: Option<Scripts>) -> Reply {
        match scripts {
            Some(scripts) => self.run_command(origin, line, scripts),
            None => {
                let path = mgmt::load_target(line).unwrap_or_default().to_string();
                let secs = LOAD_TIME_LIMIT.as_secs();
                self.console_lines.note(|| format!("load {path}: not read within {secs} s, abandoned"));
                Reply { text: mgmt::status(Err(Errno::ETIMEDOUT)).into_bytes(), ends_session: false }
            }
        }
    }

    /// A `load`'s scripts were read (or could not be in time): its waiter
    /// goes on.
    pub(super) fn scripts_read(&mut self, waiter: Waiter, scripts: Option<Scripts>) {
        match waiter {
            Waiter::Session(slot, serial) => {
                let Some(session) = self.sessions.get_mut(slot).filter(|s| s.serial == serial) else { return };
                let Some(line) = session.loading.take() else { return };
                let reply = self.loaded(Origin::Session(slot), &line, scripts);
                if self.answer_session(slot, reply) {
                    self.serve_session(slot);
                }
            }
            Waiter::Stdin => {
                let Some(line) = self.stdin.as_mut().and_then(|c| c.loading.take()) else { return };
                let reply = self.loaded(Origin::Stdin, &line, scripts);
                self.answer_stdin(reply);
                self.serve_stdin();
                self.resume_stdin();
            }
            Waiter::Conn(..) => {}
        }
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
        let _ = self
            .epoll
            .modify(&session.stream, &mut interest(Token::Session(slot, token_generation(session.serial)), flags));
    }

    fn drop_session(&mut self, slot: usize) {
        if let Some(session) = self.sessions.try_remove(slot) {
            let _ = self.epoll.delete(&session.stream);
            if session.loading.is_some() {
                self.jobs.forget(Waiter::Session(slot, session.serial));
            }
        }
    }

    pub(super) fn read_stdin(&mut self) {
        let Some(console) = &mut self.stdin else { return };
        let behind = console.polled && log::backlog() > log::CONSOLE_QUEUE_BYTES;
        if behind || console.loading.is_some() || !console.queued.is_empty() {
            // Nothing is read while output is behind or lines wait: a
            // stdout nobody reads stops this console, not the switch.
            // Taken out of the set, not just its interest: a hang-up is
            // reported whatever the interest, and would spin the loop.
            if console.polled && !console.paused {
                console.paused = true;
                let _ = self.epoll.delete(io::stdin().as_fd());
            }
            return;
        }
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
        let lines = console.lines.split(&buf[..n], n == buf.len());
        console.queued.extend(lines);
        self.serve_stdin();
    }

    /// Runs the stdin console's queued lines until one must wait.
    fn serve_stdin(&mut self) {
        while self.exit.is_none() {
            let Some(console) = self.stdin.as_mut().filter(|c| c.loading.is_none()) else { return };
            let Some(line) = console.queued.pop_front() else { return };
            let reply = match line {
                Line::Command(text) => match self.start_load(Origin::Stdin, &text) {
                    Some(reply) => reply,
                    None => return,
                },
                Line::TooLong => Reply::refused(),
            };
            self.answer_stdin(reply);
        }
    }

    fn answer_stdin(&mut self, reply: Reply) {
        log::console(ConsoleOut::Stdout, &reply.text);
        // No prompt after `logout` (which keeps this console open) and
        // `shutdown`, as in the reference.
        if !reply.ends_session {
            log::console(ConsoleOut::Stdin, PROMPT.as_bytes());
        }
    }

    /// Watches stdin again once nothing holds it back.
    pub(super) fn resume_stdin(&mut self) {
        let Some(console) = self.stdin.as_mut().filter(|c| c.paused) else { return };
        if console.loading.is_some() || log::backlog() > log::CONSOLE_QUEUE_BYTES {
            return;
        }
        console.paused = false;
        let _ = self.epoll.add(io::stdin().as_fd(), interest(Token::Stdin, EpollFlags::EPOLLIN));
        self.serve_stdin();
    }

    /// Runs one console line and returns its reply. The reply already
    /// shows the origin's subscribed events in place; the other consoles
    /// get them here, before the origin gets its reply.
    fn run_command(&mut self, origin: Origin, line: &str, scripts: Scripts) -> Reply {
        // Events of earlier traffic first, so every console sees all events
        // in the order they happened.
        self.publish_events();
        // Files a command names are opened with the rights of whoever is
        // at the other end of the management socket, not the switch's.
        let peer = match origin {
            Origin::Session(slot) => self.sessions.get(slot).map(|s| s.peer.clone()),
            Origin::Stdin => None,
        };
        let state = match origin {
            Origin::Session(slot) => self.sessions.get_mut(slot).map(|s| &mut s.state),
            Origin::Stdin => self.stdin.as_mut().map(|c| &mut c.state),
        };
        // The session was dropped while earlier events went out (it fell
        // too far behind): the command is not run, and nobody reads a reply.
        let Some(state) = state else { return Reply { text: Vec::new(), ends_session: true } };
        // As in run_rc_file: the captures are out of the data plane for
        // the command.
        let mut captures = std::mem::take(self.data.capture());
        let mut desk = capture::Desk::new(&mut captures, peer.as_ref());
        let mut ports = VxlanPorts { data: &mut self.data, epoll: &self.epoll };
        let mut ctx = Context::new(&mut self.switch, &self.info, self.now, state);
        ctx.scripts = Some(scripts);
        ctx.capture = Some(&mut desk);
        ctx.uplinks = Some(&mut ports);
        let text = mgmt::execute(&mut ctx, line).into_bytes();
        let Context { effects, events, log: lines, .. } = ctx;
        *self.data.capture() = captures;
        for line in lines {
            self.console_lines.note(|| line);
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
                Effect::CloseEndpoint(key) => match self.data.lifeline(key) {
                    Some(conn) => self.close_conn(conn),
                    // A tap has no control connection: closing its
                    // descriptor removes the interface, as in vde_switch.
                    None => self.data.remove(&self.epoll, key),
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
            // Events beyond the backlog are dropped, as for a session
            // too far behind; the console itself goes on.
            if shown_to != Some(Origin::Stdin)
                && self.stdin.as_ref().is_some_and(|c| c.state.wants(category))
                && log::backlog() <= log::CONSOLE_QUEUE_BYTES
            {
                log::console(ConsoleOut::Stdout, &line);
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
