//! Sockets, files and the event loop. This layer moves bytes and time into
//! the engine and the console and carries their decisions out; it decides
//! nothing about switching itself.

mod console;
mod ctl;
mod data;
pub mod log;
pub mod sys;
mod tap;

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Write as _};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use slab::Slab;

pub use ctl::{Access, modes};

use crate::engine::{EndpointKey, Switch};
use crate::mgmt::{self, SwitchInfo};
use console::{MgmtListener, SocketSession, StdinConsole};
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
    /// Tap interfaces to attach at start-up (`-t`), in order.
    pub taps: Vec<String>,
    /// Every port a transparent trunk (`--trunk`).
    pub trunk: bool,
    /// Largest frame payload (`--mtu`).
    pub mtu: u32,
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
    Tick,
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
            Token::Tick => (7, 0),
        };
        kind << 32 | index
    }

    fn decode(raw: u64) -> Option<Token> {
        let index = raw & 0xffff_ffff;
        Some(match raw >> 32 {
            0 => Token::Ctl,
            1 => Token::Signals,
            2 => Token::Mgmt,
            3 => Token::Stdin,
            4 => Token::Conn(index as usize),
            5 => Token::Data(index as u32),
            6 => Token::Session(index as usize),
            7 => Token::Tick,
            _ => return None,
        })
    }
}

/// A control connection: a pending handshake, or an endpoint's lifeline.
struct Conn {
    stream: UnixStream,
    endpoint: Option<EndpointKey>,
    /// When it was accepted (seconds since start).
    accepted_at: u64,
}

/// How long a connection may take to send its port request. Connections
/// that never do would otherwise hold a descriptor each for ever.
const HANDSHAKE_TIMEOUT: u64 = 10;
/// A station flapping between ports (a loop, a spoofer) moves on every
/// frame; logging each would make the log, not the network, the bottleneck.
const MAC_MOVE_LINES_PER_SECOND: u32 = 10;

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
        sys::set_disposition(s, sys::Disposition::Ignore)?;
    }
    Ok(())
}

/// Dies by `signal` with its default action, so the parent sees how the
/// switch ended (SIGINT, as vde_switch does).
pub fn die_by(signal: Signal) {
    let _ = sys::set_disposition(signal, sys::Disposition::Default);
    let _ = SigSet::from(signal).thread_unblock();
    let _ = nix::sys::signal::raise(signal);
}

struct Server {
    epoll: Epoll,
    switch: Switch,
    info: SwitchInfo,
    started: Instant,
    now: u64,
    ctl: CtlDir,
    /// Listeners not watched until the next tick: accepting failed for lack
    /// of descriptors, and a level-triggered wait would spin on them.
    paused: Vec<Token>,
    conns: Slab<Conn>,
    /// Connections still owing their request, oldest first, with the time
    /// they were accepted (a slot may have been reused since).
    handshakes: VecDeque<(usize, u64)>,
    data: DataPlane,
    mgmt: Option<MgmtListener>,
    sessions: Slab<SocketSession>,
    stdin: Option<StdinConsole>,
    signals: SignalFd,
    ticks: TimerFd,
    pidfile: Option<PathBuf>,
    exit: Option<Exit>,
    moves: log::RateLimited,
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
            ctl.cleanup();
            return Err(Fatal::new(1, format!("daemon: {}", mgmt::strerror(e))));
        }
        log::switch_to_syslog();
        log::log("VDE_SWITCH started");
    }
    info.pid = std::process::id();
    let handles = match loop_handles() {
        Ok(handles) => handles,
        Err(e) => {
            ctl.cleanup();
            return Err(Fatal::new(1, format!("event loop: {}", log::error_text(&e))));
        }
    };
    let mut server = Server::new(&config, ctl, info, handles);
    if let Err(fatal) = server.start(&config) {
        server.cleanup();
        return Err(fatal);
    }
    let exit = server.serve();
    server.cleanup();
    Ok(exit)
}

/// Listens on a socket at `path`. A socket left there by a process that no
/// longer listens is replaced; `Ok(None)` means a live process listens
/// there. Anything else at the path is never deleted.
fn listen_at(path: &std::path::Path) -> io::Result<Option<std::os::unix::net::UnixListener>> {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::net::UnixListener;
    match UnixListener::bind(path) {
        Ok(listener) => Ok(Some(listener)),
        Err(e) if e.kind() != io::ErrorKind::AddrInUse => Err(e),
        Err(e) => {
            if UnixStream::connect(path).is_ok() {
                return Ok(None);
            }
            if !fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                return Err(e);
            }
            fs::remove_file(path)?;
            UnixListener::bind(path).map(Some)
        }
    }
}

/// The event loop's own descriptors: the epoll set, the signal queue and
/// the one-second tick.
struct LoopHandles {
    epoll: Epoll,
    signals: SignalFd,
    ticks: TimerFd,
}

fn loop_handles() -> io::Result<LoopHandles> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io_error)?;
    let signals =
        SignalFd::with_flags(&handled_signals(), SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).map_err(io_error)?;
    epoll.add(&signals, interest(Token::Signals, EpollFlags::EPOLLIN)).map_err(io_error)?;
    let ticks =
        TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC).map_err(io_error)?;
    let second = TimeSpec::from_duration(Duration::from_secs(1));
    ticks.set(Expiration::Interval(second), TimerSetTimeFlags::empty()).map_err(io_error)?;
    epoll.add(&ticks, interest(Token::Tick, EpollFlags::EPOLLIN)).map_err(io_error)?;
    Ok(LoopHandles { epoll, signals, ticks })
}

impl Server {
    fn new(config: &Config, ctl: CtlDir, info: SwitchInfo, handles: LoopHandles) -> Server {
        let LoopHandles { epoll, signals, ticks } = handles;
        let mut switch = Switch::new(config.numports, config.hub, config.hash_size);
        switch.set_bridge_id(info.mac, info.priority);
        switch.set_mtu(config.mtu);
        switch.set_trunk_default(config.trunk);
        let max_frame = switch.max_frame();
        if config.fstp {
            switch.set_fstp(true);
        }
        Server {
            epoll,
            switch,
            info,
            started: Instant::now(),
            now: 0,
            ctl,
            paused: Vec::new(),
            conns: Slab::new(),
            handshakes: VecDeque::new(),
            data: DataPlane::new(max_frame),
            mgmt: None,
            sessions: Slab::new(),
            stdin: None,
            signals,
            ticks,
            pidfile: None,
            exit: None,
            moves: log::RateLimited::new(MAC_MOVE_LINES_PER_SECOND),
        }
    }

    /// Pid file, management socket, tap interfaces, rc file and stdin
    /// console, in vde_switch's order.
    fn start(&mut self, config: &Config) -> Result<(), Fatal> {
        self.epoll
            .add(&self.ctl.listener, interest(Token::Ctl, EpollFlags::EPOLLIN))
            .map_err(|e| Fatal::new(1, format!("epoll: {}", mgmt::strerror(e))))?;
        if let Some(path) = &config.pidfile {
            let mut file = fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| {
                let text = log::error_text(&e);
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
                        .map_err(|e| Fatal::new(1, format!("epoll: {}", mgmt::strerror(e))))?;
                    self.mgmt = Some(m);
                }
                Ok(None) => self.info.mgmt = None,
                Err(e) => return Err(Fatal::new(1, format!("mgmt socket {}: {e}", path.display()))),
            }
        }
        self.attach_taps(&config.taps);
        if let Some(path) = &config.rcfile {
            self.run_rc_file(path);
        }
        if !config.daemon {
            self.start_stdin();
        }
        Ok(())
    }

    fn serve(&mut self) -> Exit {
        let mut events = vec![EpollEvent::empty(); 256];
        while self.exit.is_none() {
            // The tick comes from the timer descriptor; a wait needs its own
            // timeout only while a stalled destination has a deadline, so
            // the common wait arms no kernel timer.
            let timeout = match self.data.next_deadline() {
                Some(deadline) => {
                    let wait = deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(1);
                    EpollTimeout::try_from(wait).unwrap_or(EpollTimeout::NONE)
                }
                None => EpollTimeout::NONE,
            };
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(e) => {
                    log::log(&format!("epoll_wait: {}", mgmt::strerror(e)));
                    return Exit::Shutdown;
                }
            };
            self.data.wake_up();
            if self.data.next_deadline().is_some() {
                self.data.expire_stalls(&self.epoll, Instant::now());
            }
            for ev in &events[..n] {
                let Some(token) = Token::decode(ev.data()) else { continue };
                self.dispatch(token, ev.events());
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
            self.expire_handshakes();
            self.moves.next_second("MAC moves");
            for token in std::mem::take(&mut self.paused) {
                self.watch_listener(token, EpollFlags::EPOLLIN);
            }
        }
    }

    fn watch_listener(&mut self, token: Token, flags: EpollFlags) {
        let fd = match token {
            Token::Ctl => self.ctl.listener.as_fd(),
            Token::Mgmt => match &self.mgmt {
                Some(m) => m.listener.as_fd(),
                None => return,
            },
            _ => return,
        };
        let _ = self.epoll.modify(fd, &mut interest(token, flags));
    }

    /// Stops watching a listener until the next tick, after `error` made
    /// accepting fail (out of descriptors, typically).
    fn pause_listener(&mut self, token: Token, error: &io::Error) {
        log::log(&format!("accept: {error}"));
        self.watch_listener(token, EpollFlags::empty());
        self.paused.push(token);
    }

    fn dispatch(&mut self, token: Token, flags: EpollFlags) {
        match token {
            Token::Ctl => self.accept_ctl(),
            Token::Signals => self.read_signals(),
            Token::Tick => {
                // Only clears the timer: the clock is read from `started`.
                let _ = self.ticks.wait();
                self.advance_clock();
            }
            Token::Mgmt => self.accept_mgmt(),
            Token::Stdin => self.read_stdin(),
            Token::Conn(slot) => self.read_conn(slot, flags),
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

    fn read_signals(&mut self) {
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
