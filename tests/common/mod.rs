//! Support code for the integration tests: start a switch (vswitch or the
//! reference vde_switch) in a private directory, talk to its management
//! socket, attach raw VDE clients and `vde_plug` processes, build frames.
//!
//! Every helper has a bounded wait and panics with a message that says what
//! it was waiting for, so a misbehaving switch fails a test instead of
//! hanging it. Everything started here is stopped by `Drop`, also when the
//! test panics.

// Each test crate compiles this module and uses only part of its helpers
// and re-exports.
#![allow(dead_code, unused_imports)]

pub mod client;
pub mod dpdk;
pub mod frames;
pub mod mgmt;
pub mod process;
pub mod qemu;
pub mod station;
pub mod uml;

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

pub use client::{Client, HandshakeOutcome, raw_handshake, send_request};
pub use frames::{BROADCAST, TEST_ETHERTYPE, describe, frame, station_mac};
pub use mgmt::{Mgmt, PortStatus};
pub use process::{ProcessGuard, VdePlug};
pub use station::{Station, assert_silent};

/// How long a switch may take to start or to stop.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an expected frame, reply or state change may take to show up.
/// Generous because both cores may be busy with other tests.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long to listen before concluding that a frame was not delivered.
pub const QUIET_PERIOD: Duration = Duration::from_millis(200);
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Which switch implementation a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The binary of this crate.
    Vswitch,
    /// The reference vde_switch 2.3.2 from `PATH`.
    VdeSwitch,
}

impl Target {
    pub fn program(self) -> &'static str {
        match self {
            Target::Vswitch => env!("CARGO_BIN_EXE_vswitch"),
            Target::VdeSwitch => "vde_switch",
        }
    }
}

/// Generates `mod NAME { fn vswitch(); fn vde_switch() }` test pairs that run
/// the scenario function `NAME(target: Target)` once per target, so both
/// implementations are held to the same assertions.
#[macro_export]
macro_rules! test_both_targets {
    ($($scenario:ident),+ $(,)?) => {$(
        mod $scenario {
            #[test]
            fn vswitch() {
                super::$scenario($crate::common::Target::Vswitch)
            }
            #[test]
            fn vde_switch() {
                super::$scenario($crate::common::Target::VdeSwitch)
            }
        }
    )+};
}

/// Polls `probe` until it returns `Some`, panicking after `timeout` with a
/// message naming `what`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// True once `pid` has exited. A zombie counts as exited: the daemonised
/// switch is reparented to PID 1, which may reap it late.
pub fn process_gone(pid: Pid) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => true,
    }
}

/// The pid a pid file holds, once it is written.
pub fn read_pid(path: &Path) -> Option<Pid> {
    fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()).map(Pid::from_raw)
}

/// Stops a switch with SIGTERM, and with SIGKILL if it is still there after
/// the start-up timeout (vde_switch can miss a SIGTERM that comes very early).
pub fn stop(pid: Pid) {
    let _ = kill(pid, Signal::SIGTERM);
    if !wait_gone(pid, STARTUP_TIMEOUT) {
        eprintln!("switch pid {pid} ignored SIGTERM; killing it");
        let _ = kill(pid, Signal::SIGKILL);
        wait_gone(pid, STARTUP_TIMEOUT);
    }
}

/// Waits up to `timeout` for `pid` to exit; false if it is still running.
fn wait_gone(pid: Pid, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while !process_gone(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL_INTERVAL);
    }
    true
}

/// A daemonised switch in a private temporary directory:
/// control directory `DIR/sw`, management socket `DIR/sw.mgmt`,
/// pid file `DIR/sw.pid`, early diagnostics in `DIR/sw.stderr`.
pub struct Switch {
    target: Target,
    /// The process we spawned; with `-d` it forks the daemon and exits.
    launcher: Child,
    /// The daemon's pid, from the pid file; `None` until it was written.
    pid: Option<Pid>,
    dir: TempDir,
}

/// Adds the control directory, management socket and pid file options,
/// all inside `dir`, as every test starts its switches.
pub fn with_switch_files<'c>(command: &'c mut Command, dir: &Path) -> &'c mut Command {
    command.arg("-s").arg(dir.join("sw")).arg("-M").arg(dir.join("sw.mgmt")).arg("-p").arg(dir.join("sw.pid"))
}

impl Switch {
    pub fn start(target: Target, extra_args: &[&str]) -> Switch {
        let dir = tempfile::Builder::new().prefix("vswitch-test-").tempdir().expect("create temporary directory");
        // A file, not a pipe: a pipe kept open by the daemon would make
        // readers wait for EOF forever.
        let stderr = fs::File::create(dir.path().join("sw.stderr")).expect("create stderr log");
        let launcher = with_switch_files(&mut Command::new(target.program()), dir.path())
            .arg("-d")
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", target.program()));
        let mut switch = Switch { target, launcher, pid: None, dir };
        // From here on, a panic drops `switch` and so stops whatever started.
        switch.wait_ready();
        switch
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.launcher.try_wait()
                && !status.success()
            {
                panic!(
                    "{} exited with {status} during start-up; stderr: {:?}",
                    self.target.program(),
                    self.stderr_log()
                );
            }
            if self.pid.is_none() {
                self.pid = self.read_pid_file();
            }
            if self.pid.is_some() && self.ctl_refuses_probe() && Mgmt::try_connect(&self.mgmt_path()).is_ok() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not become ready within {STARTUP_TIMEOUT:?} (pid file read: {}); \
                     stderr: {:?}",
                    self.target.program(),
                    self.pid.is_some(),
                    self.stderr_log()
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Sends a request with a wrong magic number on a new control
    /// connection. The switch must close the stream (spec §3.2); seeing that
    /// EOF proves it is listening and has finished with the probe, so the
    /// probe cannot race with the test's first client (see `wait_open_fds`).
    fn ctl_refuses_probe(&self) -> bool {
        let Ok(mut stream) = UnixStream::connect(self.ctl_dir().join("ctl")) else {
            return false;
        };
        match send_request(&mut stream, &[0; 16]) {
            HandshakeOutcome::Closed => true,
            other => panic!("control socket answered a bad-magic probe with {other:?} instead of closing"),
        }
    }

    fn read_pid_file(&self) -> Option<Pid> {
        read_pid(&self.dir.path().join("sw.pid"))
    }

    fn stderr_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sw.stderr")).unwrap_or_default()
    }

    /// The private temporary directory holding everything of this switch.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The control directory given with `-s`.
    pub fn ctl_dir(&self) -> PathBuf {
        self.dir.path().join("sw")
    }

    pub fn mgmt_path(&self) -> PathBuf {
        self.dir.path().join("sw.mgmt")
    }

    pub fn pid(&self) -> Pid {
        self.pid.expect("switch started, so its pid is known")
    }

    /// Opens a new management session.
    pub fn mgmt(&self) -> Mgmt {
        Mgmt::connect(&self.mgmt_path())
    }

    /// How many file descriptors the daemon has open.
    pub fn open_fds(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid())).map(|dir| dir.count()).unwrap_or(0)
    }

    /// Waits until the daemon has exactly `expected` descriptors open again,
    /// i.e. it has processed the connections the test closed.
    ///
    /// Needed before the next handshake when the test closed connections
    /// that the switch learns about only asynchronously: vde_switch 2.3.2
    /// corrupts its fd-to-slot table (`remove_fd` updates one slot past the
    /// end) when a connection goes away while another control connection
    /// has been accepted but has not sent its request yet; that client's
    /// endpoint then survives the client's exit. vswitch is held to the same
    /// sequence deliberately in `bad_input.rs`.
    pub fn wait_open_fds(&self, expected: usize) {
        wait_until(EVENT_TIMEOUT, &format!("the switch to have {expected} open descriptors"), || {
            (self.open_fds() == expected).then_some(())
        });
    }

    /// Panics unless the daemon is still running and answers a console
    /// command on a fresh session.
    pub fn assert_alive(&self) {
        assert!(
            !process_gone(self.pid()),
            "{} (pid {}) has died; stderr: {:?}",
            self.target.program(),
            self.pid(),
            self.stderr_log()
        );
        let reply = self.mgmt().cmd("port/showinfo");
        assert!(reply.ends_with("1000 Success\n"), "port/showinfo failed: {reply:?}");
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        // A start-up that timed out may have written the pid file since.
        if let Some(pid) = self.pid.or_else(|| self.read_pid_file()) {
            stop(pid);
        }
        // Normally the launcher exited right after forking the daemon (or it
        // is the daemon and was stopped above); this only acts on a launcher
        // stuck before writing the pid file.
        if let Ok(None) = self.launcher.try_wait() {
            let _ = self.launcher.kill();
        }
        let _ = self.launcher.wait();
        // `dir` is removed after this body, once nothing uses it any more.
    }
}

/// `VmRSS` of `pid` in KiB.
pub fn rss_kib(pid: Pid) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .map(|kib| kib.trim().parse().expect("numeric VmRSS"))
        .expect("VmRSS line in /proc/PID/status")
}
