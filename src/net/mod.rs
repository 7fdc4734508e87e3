//! Sockets, files and the event loop. This layer moves bytes and time into
//! the engine and the console and carries their decisions out; it decides
//! nothing about switching itself.

mod capture;
mod console;
mod ctl;
mod data;
mod host_ports;
mod jobs;
pub mod log;
mod peer;
pub mod sigbus;
pub mod sys;
mod transport;
pub mod vhost_user;

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Write as _};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use slab::Slab;

pub use ctl::{Access, modes};
pub use transport::vxlan::Spec as VxlanSpec;

use crate::engine::{EndpointKey, Switch};
use crate::mgmt::{self, SwitchInfo};
use console::{MgmtListener, SocketSession, StdinConsole};
use ctl::CtlDir;
use data::DataPlane;
use transport::GENERATION_MASK;

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
    /// Whether stdin is a console (not with `-d` or `--nostdin`).
    pub stdin_console: bool,
    /// Absolute paths: the daemon changes directory before using them.
    pub pidfile: Option<PathBuf>,
    pub rcfile: Option<PathBuf>,
    pub mgmt: Option<PathBuf>,
    /// Tap interfaces to attach at start-up (`-t`), in order.
    pub taps: Vec<String>,
    /// Sockets for QEMU's `-netdev stream` and `-netdev dgram` (absolute).
    pub streams: Vec<PathBuf>,
    pub dgrams: Vec<PathBuf>,
    /// Sockets to serve vhost-user frontends on (absolute).
    pub vhost_users: Vec<PathBuf>,
    /// VXLAN ports to attach at start-up (`--vxlan SPEC`), in order.
    pub vxlans: Vec<VxlanSpec>,
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

/// What a file-system job (see [`jobs`]) brings back.
enum JobOutcome {
    Scripts(mgmt::Scripts),
    Reached(Result<ctl::Reached, ctl::HandshakeError>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Ctl,
    Signals,
    Tick,
    Mgmt,
    Stdin,
    /// Slot and generation: a slot freed and reused within one wake-up
    /// gets a new generation, so events still queued for the old occupant
    /// are recognised and dropped.
    Conn(usize, u32),
    /// Descriptor registry slot and generation (see `transport::Registry`).
    Data(u32, u32),
    Session(usize, u32),
    Jobs,
}

impl Token {
    /// Kind in the top 8 bits, generation in the next 24, slot in the low 32.
    fn encode(self) -> u64 {
        let (kind, generation, index) = match self {
            Token::Ctl => (0, 0, 0),
            Token::Signals => (1, 0, 0),
            Token::Mgmt => (2, 0, 0),
            Token::Stdin => (3, 0, 0),
            Token::Conn(i, g) => (4, g, i as u64),
            Token::Data(k, g) => (5, g, u64::from(k)),
            Token::Session(i, g) => (6, g, i as u64),
            Token::Tick => (7, 0, 0),
            Token::Jobs => (8, 0, 0),
        };
        kind << 56 | u64::from(generation & GENERATION_MASK) << 32 | (index & 0xffff_ffff)
    }

    fn decode(raw: u64) -> Option<Token> {
        let index = raw & 0xffff_ffff;
        let generation = (raw >> 32) as u32 & GENERATION_MASK;
        Some(match raw >> 56 {
            0 => Token::Ctl,
            1 => Token::Signals,
            2 => Token::Mgmt,
            3 => Token::Stdin,
            4 => Token::Conn(index as usize, generation),
            5 => Token::Data(index as u32, generation),
            6 => Token::Session(index as usize, generation),
            7 => Token::Tick,
            8 => Token::Jobs,
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
    /// Tells this connection from earlier ones in the same slot.
    serial: u64,
    /// The port request, kept while its client socket is being reached.
    request: Option<Vec<u8>>,
}

/// How long a connection may take to send its port request. Connections
/// that never do would otherwise hold a descriptor each for ever.
const HANDSHAKE_TIMEOUT: u64 = 10;
/// Most connections that may owe their port request at once (and at most a
/// quarter of the descriptor limit); beyond, the oldest is closed. A client
/// sends its request right after connecting, so only idle or hostile
/// connections are ever closed this way.
const MAX_HANDSHAKES: usize = 128;
/// Most console sessions at once (and at most an eighth of the descriptor
/// limit); beyond, the one idle longest is closed.
const MAX_SESSIONS: usize = 128;

/// `cap`, or `1/share` of the process's descriptor limit if that is less
/// (read each time: the limit may be changed from outside, `prlimit`), so
/// idle connections can never take the descriptors endpoints need.
fn cap(cap: usize, share: u64) -> usize {
    use nix::sys::resource::{Resource, getrlimit};
    let limit = getrlimit(Resource::RLIMIT_NOFILE).map_or(u64::MAX, |(soft, _)| soft);
    cap.min(usize::try_from(limit / share).unwrap_or(usize::MAX)).max(1)
}
/// Lines about refused or dropped connections a second: any local user who
/// may connect can cause them.
const REFUSAL_LINES_PER_SECOND: u32 = 10;
/// Log lines of console commands a second (`hash/setsize`, `load` giving
/// up): every console user can cause them.
const CONSOLE_LINES_PER_SECOND: u32 = 10;
/// Most connections accepted from one listener per wake-up.
const ACCEPT_BATCH: usize = 64;
/// How long the last log lines may take to be written on the way out.
const LOG_DRAIN_LIMIT: Duration = Duration::from_secs(2);
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
    /// Connections still owing their request, oldest first, with their
    /// serial (a slot may have been reused since).
    handshakes: VecDeque<(usize, u64)>,
    /// Last serial given to a connection or session.
    serial: u64,
    /// Held open so that, out of descriptors, a connection can still be
    /// accepted and closed instead of waiting in the backlog.
    reserve: Option<fs::File>,
    jobs: jobs::Jobs<JobOutcome>,
    /// Connections whose client socket waits for a free job slot, oldest
    /// first, with their serial.
    lookups_waiting: VecDeque<(usize, u64)>,
    data: DataPlane,
    mgmt: Option<MgmtListener>,
    sessions: Slab<SocketSession>,
    stdin: Option<StdinConsole>,
    signals: SignalFd,
    ticks: TimerFd,
    pidfile: Option<PathBuf>,
    exit: Option<Exit>,
    moves: log::RateLimited,
    refusals: log::RateLimited,
    console_lines: log::RateLimited,
}

/// The token generation of a connection or session: the low bits of its
/// serial number, enough to tell it from the slot's previous occupant.
fn token_generation(serial: u64) -> u32 {
    serial as u32 & GENERATION_MASK
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
    let mut readiness = None;
    if config.daemon {
        match sys::daemon_when_ready() {
            Ok(report) => readiness = Some(report),
            Err(e) => {
                ctl.cleanup();
                return Err(Fatal::new(1, format!("daemon: {}", mgmt::strerror(e))));
            }
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
    log::start_writer();
    // The launcher of `-d` returns now: every listener and the pid file are
    // in place, the tap interfaces attached and the rc file run.
    if let Some(report) = readiness.take() {
        let _ = nix::unistd::write(&report, b"1");
    }
    let exit = server.serve();
    server.cleanup();
    log::drain(LOG_DRAIN_LIMIT);
    Ok(exit)
}

/// The name beside `path` that a file is prepared under before it is
/// renamed to `path`. It starts with `path`'s own name: the kernel keeps
/// listing a socket under the path it was bound to (`/proc/net/unix`), and
/// launchers (Marionnet) look for the final name there.
fn temporary_name(path: &std::path::Path) -> Option<PathBuf> {
    let mut name = path.file_name()?.to_os_string();
    name.push(format!(".vswitch-{}", std::process::id()));
    Some(path.with_file_name(name))
}

/// Listens on a socket at `path` such that the path goes straight from
/// absent (or a socket nobody listens on any more) to a listening socket
/// that `prepare` has given its mode and group: it is bound under a
/// temporary name and renamed. `Ok(None)` means a live process listens
/// there; anything at `path` that is not a socket is never replaced
/// (`EADDRINUSE`). When the temporary name would not fit a socket address,
/// the socket is bound in place.
fn listen_atomically(
    path: &std::path::Path,
    prepare: impl FnOnce(&std::path::Path) -> io::Result<()>,
) -> io::Result<Option<std::os::unix::net::UnixListener>> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    use std::os::unix::fs::FileTypeExt;
    let stale = match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Ok(None);
            }
            true
        }
        Ok(_) => return Err(io::Error::from_raw_os_error(libc::EADDRINUSE)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    let Some(temp) = temporary_name(path).filter(|t| nix::sys::socket::UnixAddr::new(t).is_ok()) else {
        if stale {
            fs::remove_file(path)?;
        }
        return bind_prepared(path, prepare).map(Some);
    };
    let _ = fs::remove_file(&temp);
    let listener = bind_prepared(&temp, prepare)?;
    // A stale socket is replaced in one step; an absent name must not be
    // taken from a process that binds it meanwhile.
    let flags = if stale { RenameFlags::empty() } else { RenameFlags::RENAME_NOREPLACE };
    let renamed = match renameat2(AT_FDCWD, &temp, AT_FDCWD, path, flags) {
        Err(Errno::EINVAL | Errno::ENOSYS) if !stale => fs::hard_link(&temp, path),
        other => other.map_err(io_error),
    };
    let _ = fs::remove_file(&temp);
    renamed.map(|()| Some(listener))
}

/// Listens at `path` and lets `prepare` set its mode and group; nothing is
/// left at `path` if that fails.
fn bind_prepared(
    path: &std::path::Path,
    prepare: impl FnOnce(&std::path::Path) -> io::Result<()>,
) -> io::Result<std::os::unix::net::UnixListener> {
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    match listener.set_nonblocking(true).and_then(|()| prepare(path)) {
        Ok(()) => Ok(listener),
        Err(e) => {
            let _ = fs::remove_file(path);
            Err(e)
        }
    }
}

/// Writes the pid file complete or not at all: the pid goes to a
/// temporary file beside it, which is then renamed to `path` unless
/// something is there already. vde_switch's file mode (0644 less the umask).
fn write_pidfile(path: &std::path::Path, pid: u32) -> Result<(), Fatal> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    use std::os::unix::fs::OpenOptionsExt;
    let creation = |e: &io::Error| Fatal::new(1, format!("Error in pidfile creation: {}", log::error_text(e)));
    let writing = |e: &io::Error| Fatal::new(1, format!("Error writing pidfile {}: {e}", path.display()));
    let temp = temporary_name(path).ok_or_else(|| creation(&io::Error::from_raw_os_error(libc::EISDIR)))?;
    let open = |p: &std::path::Path| fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(p);
    let mut file = match open(&temp) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(&temp).map_err(|e| creation(&e))?;
            open(&temp).map_err(|e| creation(&e))?
        }
        Err(e) => return Err(creation(&e)),
    };
    let placed = writeln!(file, "{pid}").map_err(|e| writing(&e)).and_then(|()| {
        match renameat2(AT_FDCWD, &temp, AT_FDCWD, path, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => Ok(()),
            Err(Errno::EINVAL | Errno::ENOSYS) => fs::hard_link(&temp, path).map_err(|e| creation(&e)),
            Err(e) => Err(creation(&io_error(e))),
        }
    });
    let _ = fs::remove_file(&temp);
    placed
}

/// What accepting on a listener gave.
enum Accepted {
    Stream(UnixStream),
    /// Nobody is waiting.
    Nothing,
    /// A connection was accepted and closed at once for lack of descriptors.
    Shed,
    Failed(io::Error),
}

/// Held shared by threads that may make a descriptor at a moment the loop
/// does not choose (the log writer: `syslog(3)` opens its socket whenever
/// it is not connected), and exclusively by the loop while it gives up its
/// reserve descriptor: the kernel hands out the lowest free number, so a
/// descriptor made meanwhile would take the one the reserve freed.
static DESCRIPTOR_GATE: RwLock<()> = RwLock::new(());

/// Accepts one connection. Out of descriptors, the reserve descriptor is
/// given up for a moment to accept the connection and close it: otherwise
/// it would wait in the backlog, keeping the listener readable and its
/// client waiting for a reply that never comes.
fn accept(listener: &std::os::unix::net::UnixListener, reserve: &mut Option<fs::File>) -> Accepted {
    loop {
        match listener.accept() {
            Ok((stream, _)) => return Accepted::Stream(stream),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Accepted::Nothing,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                return shed(listener, reserve, e);
            }
            Err(e) => return Accepted::Failed(e),
        }
    }
}

/// Accepts and closes the connection waiting on `listener` with the
/// reserve's descriptor, after `accept` failed with `error` for lack of
/// one. Fails when there is no reserve (it is restored on the next tick)
/// or another thread is making a descriptor.
fn shed(listener: &std::os::unix::net::UnixListener, reserve: &mut Option<fs::File>, error: io::Error) -> Accepted {
    // The kernel takes the descriptor before it looks at the backlog, so
    // the error comes whether anyone waits or not.
    if !has_waiting(listener) {
        return Accepted::Nothing;
    }
    let Ok(_gate) = DESCRIPTOR_GATE.try_write() else { return Accepted::Failed(error) };
    if reserve.take().is_none() {
        return Accepted::Failed(error);
    }
    // Closed at once, so that its number is the reserve's again.
    let shed = listener.accept().map(drop);
    // Only a `load` job, opening its scripts, can have taken the number.
    *reserve = open_reserve();
    match shed {
        Ok(()) => Accepted::Shed,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Accepted::Nothing,
        Err(e) => Accepted::Failed(e),
    }
}

/// Whether a connection waits in `listener`'s backlog.
fn has_waiting(listener: &std::os::unix::net::UnixListener) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| n > 0)
}

/// Lets a thread other than the loop's make a descriptor without taking
/// the one the loop frees to shed a connection.
pub(crate) fn making_descriptors() -> RwLockReadGuard<'static, ()> {
    DESCRIPTOR_GATE.read().unwrap_or_else(PoisonError::into_inner)
}

fn open_reserve() -> Option<fs::File> {
    fs::File::open("/dev/null").ok()
}

/// The event loop's own descriptors: the epoll set, the signal queue, the
/// one-second tick and the file-system jobs.
struct LoopHandles {
    epoll: Epoll,
    signals: SignalFd,
    ticks: TimerFd,
    jobs: jobs::Jobs<JobOutcome>,
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
    let jobs = jobs::Jobs::new()?;
    epoll.add(&*jobs.wake, interest(Token::Jobs, EpollFlags::EPOLLIN)).map_err(io_error)?;
    Ok(LoopHandles { epoll, signals, ticks, jobs })
}

impl Server {
    fn new(config: &Config, ctl: CtlDir, info: SwitchInfo, handles: LoopHandles) -> Server {
        let LoopHandles { epoll, signals, ticks, jobs } = handles;
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
            serial: 0,
            reserve: open_reserve(),
            jobs,
            lookups_waiting: VecDeque::new(),
            data: DataPlane::new(max_frame),
            mgmt: None,
            sessions: Slab::new(),
            stdin: None,
            signals,
            ticks,
            pidfile: None,
            exit: None,
            moves: log::RateLimited::new(MAC_MOVE_LINES_PER_SECOND),
            refusals: log::RateLimited::new(REFUSAL_LINES_PER_SECOND),
            console_lines: log::RateLimited::new(CONSOLE_LINES_PER_SECOND),
        }
    }

    /// Management socket, pid file, tap interfaces, rc file and stdin
    /// console.
    fn start(&mut self, config: &Config) -> Result<(), Fatal> {
        self.epoll
            .add(&self.ctl.listener, interest(Token::Ctl, EpollFlags::EPOLLIN))
            .map_err(|e| Fatal::new(1, format!("epoll: {}", mgmt::strerror(e))))?;
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
        // Last of the files others wait for: once it exists, `ctl` and the
        // management socket accept.
        if let Some(path) = &config.pidfile {
            write_pidfile(path, self.info.pid)?;
            self.pidfile = Some(path.clone());
        }
        self.attach_taps(&config.taps);
        self.open_qemu_sockets(config)?;
        self.attach_vxlans(&config.vxlans);
        if let Some(path) = &config.rcfile {
            self.run_rc_file(path);
        }
        if config.stdin_console {
            self.start_stdin();
        }
        Ok(())
    }

    /// Listens on the `--stream` and `--vhost-user` sockets and binds the
    /// `--dgram` ones, with the control socket's mode and group.
    fn open_qemu_sockets(&mut self, config: &Config) -> Result<(), Fatal> {
        let (mode, group) = (config.access.ctl_mode, config.access.group);
        let max_frame = self.switch.max_frame();
        let epoll = &self.epoll;
        for path in &config.streams {
            self.data
                .add_transport(|id, registry| {
                    Ok(Box::new(transport::stream::Stream::open(id, path, mode, group, max_frame, registry, epoll)?))
                })
                .map_err(|e| Fatal::new(1, format!("--stream {}: {}", path.display(), log::error_text(&e))))?;
        }
        for path in &config.dgrams {
            self.data
                .add_transport(|id, registry| {
                    Ok(Box::new(transport::dgram::Dgram::open(id, path, mode, group, registry, epoll)?))
                })
                .map_err(|e| Fatal::new(1, format!("--dgram {}: {}", path.display(), log::error_text(&e))))?;
        }
        for path in &config.vhost_users {
            self.data
                .add_transport(|id, registry| {
                    Ok(Box::new(transport::vhost_user::VhostUser::open(
                        id,
                        path,
                        (mode, group),
                        max_frame,
                        registry,
                        epoll,
                    )?))
                })
                .map_err(|e| Fatal::new(1, format!("--vhost-user {}: {}", path.display(), log::error_text(&e))))?;
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
                // Frames already read wait for no readiness.
                _ if self.data.has_backlog() => EpollTimeout::ZERO,
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
            if self.data.has_backlog() {
                self.data.run_backlog(&self.epoll, &mut self.switch, self.now);
            }
            // BPDUs the ticks, frames and commands above made the switch send.
            self.data.send_originated(&self.epoll, &mut self.switch);
            if self.data.capture().is_on() {
                self.data.capture().write_out();
            }
            self.publish_events();
        }
        self.exit.expect("loop ends on exit")
    }

    /// Hands finished (and abandoned) file-system jobs to their waiters.
    fn jobs_done(&mut self) {
        for done in self.jobs.collect(Instant::now()) {
            match (done.waiter, done.outcome) {
                (jobs::Waiter::Conn(slot, serial), Some(JobOutcome::Reached(r))) => {
                    self.reached(slot, serial, Some(r));
                }
                (jobs::Waiter::Conn(slot, serial), None) => self.reached(slot, serial, None),
                (waiter, Some(JobOutcome::Scripts(scripts))) => self.scripts_read(waiter, Some(scripts)),
                (waiter, None) => self.scripts_read(waiter, None),
                (_, Some(JobOutcome::Reached(_))) => {}
            }
        }
        self.start_waiting_lookups();
    }

    fn advance_clock(&mut self) {
        let now = self.started.elapsed().as_secs();
        // After the process was stopped (SIGSTOP, a suspended VM) many
        // seconds may have passed: the clock jumps to one before now, and
        // only the last second is run, rather than every missed one (each
        // would send its hellos: a burst of BPDUs into the network).
        if now > self.now + 1 {
            self.now = now - 1;
        }
        while self.now < now {
            self.now += 1;
            self.switch.tick(self.now);
            self.data.tick(&self.epoll);
            self.data.capture().tick();
            self.data.expire_endpoints(&self.epoll, &mut self.switch, self.now);
            self.expire_handshakes();
            self.moves.next_second("MAC moves");
            self.refusals.next_second("refused connections");
            self.console_lines.next_second("console log lines");
            self.resume_stdin();
            if self.reserve.is_none() {
                self.reserve = open_reserve();
            }
            for token in std::mem::take(&mut self.paused) {
                self.watch_listener(token, EpollFlags::EPOLLIN);
            }
        }
        // Jobs past their time limit are given up on.
        self.jobs_done();
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
        self.refusals.note(|| format!("accept: {error}"));
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
            Token::Conn(slot, generation) => {
                if self.conns.get(slot).is_some_and(|c| token_generation(c.serial) == generation) {
                    self.read_conn(slot, flags);
                }
            }
            Token::Data(id, generation) => {
                self.data.ready(&self.epoll, id, generation, flags, &mut self.switch, self.now);
            }
            Token::Jobs => self.jobs_done(),
            Token::Session(slot, generation) => {
                if self.sessions.get(slot).is_none_or(|s| token_generation(s.serial) != generation) {
                    return;
                }
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
        self.data.remove_all(&self.epoll);
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
