//! Sockets, files and the event loop. This layer moves bytes and time into
//! the engine and the console and carries their decisions out; it decides
//! nothing about switching itself.

mod console;
mod ctl;
mod data;
pub mod log;
pub mod sys;

use std::fs;
use std::io::{self, Read as _, Write as _};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use slab::Slab;

pub use ctl::{Access, modes};

use crate::engine::{EndpointKey, Event, Switch};
use crate::mgmt::{self, BANNER, Context, Effect, PROMPT, Session, SessionKind, SwitchInfo, format_event};
use console::{Line, LineSplitter, MgmtListener, SocketSession};
use ctl::CtlDir;
use data::DataPlane;

/// A start-up failure: the message to log and the exit status.
#[derive(Debug)]
pub struct Fatal {
    pub code: i32,
    pub message: String,
}

impl Fatal {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Fatal { code, message: message.into() }
    }
}

/// Everything the command line decided.
#[derive(Debug, Clone)]
pub struct Config {
    pub ctl_dir: PathBuf,
    pub access: Access,
    pub numports: u32,
    pub hub: bool,
    /// Run the fast spanning tree from the start (`-F`).
    pub fstp: bool,
    pub hash_size: u32,
    pub info: SwitchInfo,
    pub daemon: bool,
    /// Absolute paths: the daemon changes directory before using them.
    pub pidfile: Option<PathBuf>,
    pub rcfile: Option<PathBuf>,
    pub mgmt: Option<PathBuf>,
}

/// Why the switch stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Shutdown,
    StdinClosed,
    Signal(Signal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Ctl,
    Signals,
    Mgmt,
    Stdin,
    Conn(usize),
    Data(u32),
    Session(usize),
}

impl Token {
    fn encode(self) -> u64 {
        let (kind, index) = match self {
            Token::Ctl => (0, 0),
            Token::Signals => (1, 0),
            Token::Mgmt => (2, 0),
            Token::Stdin => (3, 0),
            Token::Conn(i) => (4, i as u64),
            Token::Data(k) => (5, u64::from(k)),
            Token::Session(i) => (6, i as u64),
        };
        kind << 32 | index
    }

    fn decode(raw: u64) -> Token {
        let index = raw & 0xffff_ffff;
        match raw >> 32 {
            0 => Token::Ctl,
            1 => Token::Signals,
            2 => Token::Mgmt,
            3 => Token::Stdin,
            4 => Token::Conn(index as usize),
            5 => Token::Data(index as u32),
            _ => Token::Session(index as usize),
        }
    }
}

/// A control connection: a pending handshake, or an endpoint's lifeline.
struct Conn {
    stream: UnixStream,
    endpoint: Option<EndpointKey>,
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
    text: String,
    ends_session: bool,
}

impl Reply {
    /// The answer to a line that is too long to be a command.
    fn refused() -> Reply {
        Reply { text: mgmt::status(Err(Errno::EINVAL)), ends_session: false }
    }
}

struct StdinConsole {
    state: Session,
    lines: LineSplitter,
}

/// The signals handled through the event loop rather than by default action.
fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    set
}

/// Blocks the handled signals (so they queue for the loop) and ignores
/// those vde_switch ignores. Call before anything else starts.
pub fn prepare_signals() -> nix::Result<()> {
    use nix::sys::signal::{SigHandler, signal};
    handled_signals().thread_block()?;
    for s in [
        Signal::SIGPIPE,
        Signal::SIGALRM,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGPROF,
        Signal::SIGVTALRM,
        Signal::SIGIO,
        Signal::SIGPWR,
        Signal::SIGSTKFLT,
    ] {
        // SAFETY-free: setting SIG_IGN installs no handler code.
        #[allow(unsafe_code)]
        unsafe {
            signal(s, SigHandler::SigIgn)?;
        }
    }
    Ok(())
}

struct Server {
    epoll: Epoll,
    switch: Switch,
    info: SwitchInfo,
    started: Instant,
    now: u64,
    ctl: CtlDir,
    /// The listener stops being watched while descriptors are exhausted.
    ctl_paused: bool,
    conns: Slab<Conn>,
    data: DataPlane,
    mgmt: Option<MgmtListener>,
    sessions: Slab<SocketSession>,
    stdin: Option<StdinConsole>,
    signals: SignalFd,
    pidfile: Option<PathBuf>,
    exit: Option<Exit>,
}

fn interest(token: Token, flags: EpollFlags) -> EpollEvent {
    EpollEvent::new(flags, token.encode())
}

fn io_error(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Starts the switch and runs it until it is told to stop.
pub fn run(config: Config) -> Result<Exit, Fatal> {
    let ctl = CtlDir::open(&config.ctl_dir, config.access.clone())?;
    let mut info = config.info.clone();
    info.ctl_dir = ctl.dir.display().to_string();
    info.ctl_mode = config.access.ctl_mode;
    if config.daemon {
        if let Err(e) = nix::unistd::daemon(false, false) {
            return Err(Fatal::new(1, format!("daemon: {}", e.desc())));
        }
        log::switch_to_syslog();
        log::log("VDE_SWITCH started");
    }
    info.pid = std::process::id();
    let mut server = Server::new(config.clone(), ctl, info).map_err(|e| Fatal::new(1, e.to_string()))?;
    if let Err(fatal) = server.start(&config) {
        server.cleanup();
        return Err(fatal);
    }
    let exit = server.serve();
    server.cleanup();
    Ok(exit)
}

impl Server {
    fn new(config: Config, ctl: CtlDir, info: SwitchInfo) -> io::Result<Server> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io_error)?;
        let signals = SignalFd::with_flags(&handled_signals(), SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(io_error)?;
        epoll.add(&ctl.listener, interest(Token::Ctl, EpollFlags::EPOLLIN)).map_err(io_error)?;
        epoll.add(&signals, interest(Token::Signals, EpollFlags::EPOLLIN)).map_err(io_error)?;
        let mut switch = Switch::new(config.numports, config.hub, config.hash_size);
        switch.set_bridge_id(info.mac, info.priority);
        if config.fstp {
            switch.set_fstp(true);
        }
        Ok(Server {
            epoll,
            switch,
            info,
            started: Instant::now(),
            now: 0,
            ctl,
            ctl_paused: false,
            conns: Slab::new(),
            data: DataPlane::default(),
            mgmt: None,
            sessions: Slab::new(),
            stdin: None,
            signals,
            pidfile: None,
            exit: None,
        })
    }

    /// Pid file, management socket, rc file and stdin console, in
    /// vde_switch's order.
    fn start(&mut self, config: &Config) -> Result<(), Fatal> {
        if let Some(path) = &config.pidfile {
            let mut file = fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| {
                let text = Errno::from_raw(e.raw_os_error().unwrap_or(0)).desc();
                Fatal::new(1, format!("Error in pidfile creation: {text}"))
            })?;
            self.pidfile = Some(path.clone());
            writeln!(file, "{}", self.info.pid)
                .map_err(|e| Fatal::new(1, format!("Error writing pidfile {}: {e}", path.display())))?;
        }
        if let Some(path) = &config.mgmt {
            let a = &config.access;
            match MgmtListener::open(path, a.mgmt_mode, a.mgmt_group) {
                Ok(Some(m)) => {
                    self.epoll
                        .add(&m.listener, interest(Token::Mgmt, EpollFlags::EPOLLIN))
                        .map_err(|e| Fatal::new(1, format!("epoll: {}", e.desc())))?;
                    self.mgmt = Some(m);
                }
                Ok(None) => self.info.mgmt = None,
                Err(e) => return Err(Fatal::new(1, format!("mgmt socket {}: {e}", path.display()))),
            }
        }
        if let Some(path) = &config.rcfile {
            self.run_rc_file(path);
        }
        if !config.daemon {
            self.start_stdin();
        }
        Ok(())
    }

    /// Runs the rc file with its output discarded. A missing file is
    /// ignored, as by vde_switch; one that cannot be used and each failing
    /// command are logged.
    fn run_rc_file(&mut self, path: &std::path::Path) {
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
        let mut discarded = String::new();
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

    fn start_stdin(&mut self) {
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

    fn serve(&mut self) -> Exit {
        let mut events = vec![EpollEvent::empty(); 256];
        while self.exit.is_none() {
            let elapsed = self.started.elapsed();
            let next_tick = self.started + Duration::from_secs(elapsed.as_secs() + 1);
            let wake = self.data.next_deadline().map_or(next_tick, |d| d.min(next_tick));
            let wait = wake.saturating_duration_since(Instant::now()) + Duration::from_millis(1);
            let timeout = EpollTimeout::try_from(wait).unwrap_or(EpollTimeout::NONE);
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(e) => {
                    log::log(&format!("epoll_wait: {}", e.desc()));
                    return Exit::Shutdown;
                }
            };
            self.advance_clock();
            self.data.expire_stalls(&self.epoll, Instant::now());
            for ev in &events[..n] {
                self.dispatch(Token::decode(ev.data()), ev.events());
                if self.exit.is_some() {
                    break;
                }
            }
            // BPDUs the ticks, frames and commands above made the switch send.
            self.data.send_originated(&self.epoll, &mut self.switch);
            self.publish_events();
        }
        self.exit.expect("loop ends on exit")
    }

    fn advance_clock(&mut self) {
        let now = self.started.elapsed().as_secs();
        while self.now < now {
            self.now += 1;
            self.switch.tick(self.now);
            self.data.tick(&self.epoll);
            if self.ctl_paused {
                self.ctl_paused = false;
                let _ = self.epoll.modify(&self.ctl.listener, &mut interest(Token::Ctl, EpollFlags::EPOLLIN));
            }
        }
    }

    fn dispatch(&mut self, token: Token, flags: EpollFlags) {
        match token {
            Token::Ctl => self.accept_ctl(),
            Token::Signals => self.readsignals(),
            Token::Mgmt => self.accept_mgmt(),
            Token::Stdin => self.read_stdin(),
            Token::Conn(slot) => self.read_conn(slot),
            Token::Data(key) => {
                self.data.ready(&self.epoll, EndpointKey(key), flags, &mut self.switch, self.now);
            }
            Token::Session(slot) => {
                if flags.contains(EpollFlags::EPOLLOUT) {
                    self.flush_session(slot);
                }
                if flags.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) {
                    self.read_session(slot);
                }
            }
        }
    }

    // ----- control connections -------------------------------------------

    fn accept_ctl(&mut self) {
        loop {
            match self.ctl.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let slot = self.conns.vacant_key();
                    let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
                    if self.epoll.add(&stream, interest(Token::Conn(slot), flags)).is_ok() {
                        self.conns.insert(Conn { stream, endpoint: None });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors: stop watching the listener until
                    // the next tick instead of spinning on it.
                    log::log(&format!("accept on ctl socket: {e}"));
                    self.ctl_paused = true;
                    let _ = self.epoll.modify(&self.ctl.listener, &mut interest(Token::Ctl, EpollFlags::empty()));
                    return;
                }
            }
        }
    }

    fn read_conn(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else { return };
        let mut buf = [0u8; crate::wire::REQUEST_MAX];
        let n = match conn.stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => return,
            Err(_) => 0,
        };
        if n == 0 {
            self.close_conn(slot);
            return;
        }
        if conn.endpoint.is_some() {
            // Only EOF matters once attached; stray bytes are ignored.
            while matches!(conn.stream.read(&mut buf), Ok(n) if n > 0) {}
            return;
        }
        match ctl::handshake(&self.ctl, &conn.stream, &buf[..n], &mut self.switch) {
            Ok(new) => {
                if let Err(e) = self.data.add(&self.epoll, new.key, new.socket, new.path.clone(), slot) {
                    log::log(&format!("epoll add data socket: {e}"));
                    self.switch.detach(new.key);
                    let _ = fs::remove_file(&new.path);
                    self.close_conn(slot);
                    return;
                }
                conn.endpoint = Some(new.key);
            }
            Err(e) => {
                if !e.is_silent() {
                    log::log(&e.to_string());
                }
                self.close_conn(slot);
            }
        }
    }

    /// Closes a control connection, detaching its endpoint if it has one.
    fn close_conn(&mut self, slot: usize) {
        let Some(conn) = self.conns.try_remove(slot) else { return };
        let _ = self.epoll.delete(&conn.stream);
        if let Some(key) = conn.endpoint {
            self.switch.detach(key);
            if let Some(link) = self.data.remove(&self.epoll, key) {
                let _ = fs::remove_file(&link.path);
            }
        }
    }

    // ----- consoles -------------------------------------------------------

    fn accept_mgmt(&mut self) {
        let Some(m) = &self.mgmt else { return };
        let mut accepted = Vec::new();
        loop {
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
                Err(_) => break,
            }
        }
        // A greeting the socket did not take at once waits for EPOLLOUT.
        for slot in accepted {
            self.update_session_interest(slot);
        }
    }

    /// Readable, or the peer hung up: epoll reports a hang-up even while the
    /// socket is not watched for input, and reading is how it is noticed.
    fn read_session(&mut self, slot: usize) {
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

    fn flush_session(&mut self, slot: usize) {
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
            let mut bytes = reply.text.into_bytes();
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

    fn read_stdin(&mut self) {
        let Some(console) = &mut self.stdin else { return };
        let mut buf = [0u8; 2 * console::MAX_LINE];
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
            let _ = out.write_all(reply.text.as_bytes());
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
        let Some(state) = state else { return Reply { text: String::new(), ends_session: true } };
        let mut ctx = Context::new(&mut self.switch, &self.info, self.now, state);
        let text = mgmt::execute(&mut ctx, line);
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
                Effect::CloseEndpoint(key) => {
                    if let Some(conn) = self.data.conn_of(key) {
                        self.close_conn(conn);
                    }
                }
            }
        }
        // Closing an endpoint's sockets may have queued nothing new in the
        // engine (the command detached it already), but traffic might have.
        self.publish_events();
    }

    /// Hands the engine's pending events to the log and to subscribed
    /// consoles.
    fn publish_events(&mut self) {
        let events: Vec<_> = self.switch.drain_events().collect();
        self.deliver_events(&events, None);
    }

    /// Logs and notifies `events`, skipping the console they were already
    /// shown to. A session too far behind is dropped.
    fn deliver_events(&mut self, events: &[Event], shown_to: Option<Origin>) {
        if events.is_empty() {
            return;
        }
        let mut dead = Vec::new();
        for event in events {
            if let Event::MacMoved { mac, from, to } = event {
                log::log(&format!("MAC {mac} moved from port {from} to port {to}"));
                continue;
            }
            let Some((category, line)) = format_event(event) else { continue };
            for (slot, session) in self.sessions.iter_mut() {
                if shown_to != Some(Origin::Session(slot))
                    && session.state.wants(category)
                    && !dead.contains(&slot)
                    && !session.send_event(line.as_bytes())
                {
                    dead.push(slot);
                }
            }
            if shown_to != Some(Origin::Stdin) && self.stdin.as_ref().is_some_and(|c| c.state.wants(category)) {
                let _ = io::stdout().write_all(line.as_bytes());
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

    fn readsignals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else { continue };
            if signal == Signal::SIGHUP {
                continue;
            }
            log::log(&format!("Caught signal {}, cleaning up and exiting", signal as i32));
            self.exit.get_or_insert(Exit::Signal(signal));
        }
    }

    fn cleanup(mut self) {
        for path in self.data.paths() {
            let _ = fs::remove_file(path);
        }
        self.conns.clear();
        self.sessions.clear();
        if let Some(m) = self.mgmt.take() {
            let _ = fs::remove_file(&m.path);
        }
        if let Some(path) = self.pidfile.take() {
            let _ = fs::remove_file(path);
        }
        let Server { ctl, .. } = self;
        if let Some(warning) = ctl.cleanup() {
            log::log(&warning);
        }
    }
}
