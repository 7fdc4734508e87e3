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
