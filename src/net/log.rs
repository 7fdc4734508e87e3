//! Log lines go to stderr as `<program>: <message>` until the switch
//! daemonises, then to syslog, as vde_switch does.
//!
//! Once the event loop runs, nothing it writes to a descriptor it does not
//! own may block it: a supervisor that reads stderr lazily, a terminal
//! paused with Ctrl-S or a stuck syslog daemon would otherwise stop
//! switching. So log lines, and the stdin console's output, each go
//! through a queue that a writer thread of their own empties with ordinary
//! blocking writes (and `syslog(3)` calls). Only the writers wait; a log
//! line that finds its queue full is dropped and counted, and the count is
//! logged once the queue has drained. Console output is never dropped: the
//! stdin console stops reading input while its output is [`backlog`]ged.

use std::collections::VecDeque;
use std::io::Write as _;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use super::sys;

static PROGRAM: OnceLock<String> = OnceLock::new();
static TO_SYSLOG: AtomicBool = AtomicBool::new(false);

/// Log lines that may wait for the writer before lines are dropped (every
/// kind of line input can cause is rate-limited to a few a second, so this
/// holds several seconds of the worst case).
pub const LOG_QUEUE_LINES: usize = 64;
/// Console output bytes beyond which the stdin console stops reading.
pub const CONSOLE_QUEUE_BYTES: usize = 64 << 10;

/// Sets the name log lines are prefixed with (`argv[0]`).
pub fn init(program: &str) {
    let _ = PROGRAM.set(program.to_string());
}

/// From now on, log to syslog under the program's base name.
pub fn switch_to_syslog() {
    let program = PROGRAM.get().map_or("vswitch", String::as_str);
    let base = program.rsplit('/').next().unwrap_or(program);
    sys::open_syslog(base);
    TO_SYSLOG.store(true, Ordering::Relaxed);
}

/// Where the stdin console's output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleOut {
    /// Replies and events.
    Stdout,
    /// The prompt: vde_switch writes it to descriptor 0, which on a
    /// terminal is the terminal itself.
    Stdin,
}

/// Where a queued piece of output goes.
enum Sink {
    Log(String),
    Console(ConsoleOut, Vec<u8>),
}

impl Sink {
    fn write(&self) {
        match self {
            Sink::Log(message) if TO_SYSLOG.load(Ordering::Relaxed) => sys::syslog(message),
            Sink::Log(message) => {
                let program = PROGRAM.get().map_or("vswitch", String::as_str);
                let _ = writeln!(std::io::stderr(), "{program}: {message}");
            }
            Sink::Console(to, bytes) => {
                let stdin = std::io::stdin();
                let stdout = std::io::stdout();
                let fd = match to {
                    ConsoleOut::Stdin => stdin.as_fd(),
                    ConsoleOut::Stdout => stdout.as_fd(),
                };
                let mut rest = &bytes[..];
                while !rest.is_empty() {
                    match nix::unistd::write(fd, rest) {
                        Ok(0) => break,
                        Ok(n) => rest = &rest[n..],
                        Err(nix::errno::Errno::EINTR) => {}
                        Err(_) => break,
                    }
                }
            }
        }
    }

    fn size(&self) -> usize {
        match self {
            Sink::Log(_) => 1,
            Sink::Console(_, bytes) => bytes.len(),
        }
    }
}

struct Queue {
    items: VecDeque<Sink>,
    /// Lines for the log, bytes for the console.
    size: usize,
    dropped: u64,
    /// The writer thread runs: otherwise output is written at once.
    running: bool,
    /// The writer is in the middle of a write (the queue may be empty).
    busy: bool,
}

/// One queue and the thread that empties it. The log and the console have
/// one each, so a console output nobody reads does not hold up the log,
/// nor the other way round.
struct Writer {
    queue: Mutex<Queue>,
    wake: Condvar,
    drained: Condvar,
    /// Beyond this size, log lines are dropped (and counted); console
    /// output is always queued, and the console holds back instead.
    limit: Option<usize>,
}

impl Writer {
    const fn new(limit: Option<usize>) -> Writer {
        let queue = Queue { items: VecDeque::new(), size: 0, dropped: 0, running: false, busy: false };
        Writer { queue: Mutex::new(queue), wake: Condvar::new(), drained: Condvar::new(), limit }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn start(&'static self, name: &str) {
        let mut q = self.lock();
        if !q.running {
            q.running = std::thread::Builder::new().name(name.into()).spawn(|| self.run()).is_ok();
        }
    }

    fn run(&self) {
        let mut q = self.lock();
        loop {
            let Some(item) = q.items.pop_front() else {
                if q.dropped > 0 {
                    let line = format!("{} log lines dropped (output blocked)", q.dropped);
                    q.dropped = 0;
                    q.size += 1;
                    q.items.push_back(Sink::Log(line));
                    continue;
                }
                self.drained.notify_all();
                q = self.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
                continue;
            };
            q.busy = true;
            drop(q);
            item.write();
            q = self.lock();
            q.busy = false;
            q.size -= item.size();
        }
    }

    fn push(&self, item: Sink) {
        let mut q = self.lock();
        if !q.running {
            drop(q);
            return item.write();
        }
        if self.limit.is_some_and(|limit| q.size + item.size() > limit) {
            q.dropped += 1;
            return;
        }
        q.size += item.size();
        q.items.push_back(item);
        self.wake.notify_one();
    }

    fn drain(&self, deadline: Instant) {
        let mut q = self.lock();
        while q.running && (!q.items.is_empty() || q.busy || q.dropped > 0) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            q = self.drained.wait_timeout(q, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        // A writer stuck in a write keeps its thread; later output is
        // written by the caller, which is about to exit.
        q.running = false;
        q.items.clear();
    }
}

static LOG: Writer = Writer::new(Some(LOG_QUEUE_LINES));
static CONSOLE: Writer = Writer::new(None);

/// Starts the writer threads: from now on nothing here blocks the caller.
/// Call after daemonising (a fork does not take threads along).
pub fn start_writer() {
    LOG.start("log");
    CONSOLE.start("console");
}

pub fn log(message: &str) {
    LOG.push(Sink::Log(message.to_string()));
}

/// Writes the stdin console's output.
pub fn console(to: ConsoleOut, bytes: &[u8]) {
    if !bytes.is_empty() {
        CONSOLE.push(Sink::Console(to, bytes.to_vec()));
    }
}

/// Console output bytes not yet written.
pub fn backlog() -> usize {
    CONSOLE.lock().size
}

/// Waits up to `limit` for queued output to be written, then writes
/// directly again: used on the way out, so the last lines are not lost.
pub fn drain(limit: Duration) {
    let deadline = Instant::now() + limit;
    CONSOLE.drain(deadline);
    LOG.drain(deadline);
}

/// The C library's text for an OS error, as vde_switch prints it (without
/// the standard library's " (os error N)" suffix).
pub fn error_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => crate::mgmt::strerror(nix::errno::Errno::from_raw(code)),
        None => e.to_string(),
    }
}

/// A kind of log line that may come in floods: at most `per_second` lines
/// a second are logged, then how many were left out.
pub struct RateLimited {
    per_second: u32,
    logged: u32,
    suppressed: u64,
}

impl RateLimited {
    pub fn new(per_second: u32) -> Self {
        RateLimited { per_second, logged: 0, suppressed: 0 }
    }

    /// Logs the line `line` makes, unless this second's share is used up.
    pub fn note(&mut self, line: impl FnOnce() -> String) {
        if self.logged < self.per_second {
            self.logged += 1;
            log(&line());
        } else {
            self.suppressed += 1;
        }
    }

    /// Starts a new second, reporting what the last one left out.
    pub fn next_second(&mut self, what: &str) {
        if self.suppressed > 0 {
            log(&format!("{} more {what} not logged", self.suppressed));
        }
        self.logged = 0;
        self.suppressed = 0;
    }
}
