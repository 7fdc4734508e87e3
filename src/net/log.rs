//! Log lines go to stderr as `<program>: <message>` until the switch
//! daemonises, then to syslog, as vde_switch does.

use std::io::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use super::sys;

static PROGRAM: OnceLock<String> = OnceLock::new();
static TO_SYSLOG: AtomicBool = AtomicBool::new(false);

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

pub fn log(message: &str) {
    if TO_SYSLOG.load(Ordering::Relaxed) {
        sys::syslog(message);
    } else {
        let program = PROGRAM.get().map_or("vswitch", String::as_str);
        let _ = writeln!(std::io::stderr(), "{program}: {message}");
    }
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
