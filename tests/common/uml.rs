//! User-Mode Linux guests attached to a switch, for `uml.rs` and `vlan.rs`.
//!
//! Guests boot `linux.uml` with the host's `/` as a read-only hostfs root and
//! `tests/guest/init.sh` as init; they use only 169.254.0.0/16 link-local
//! addresses and report one `RESULT ...` line per check on their console,
//! which is captured in a file.
//!
//! Two host-specific workarounds are applied to every guest:
//! * UML 6.1 restores the guest's FPU state with `PTRACE_SETREGSET
//!   NT_X86_XSTATE` using its own fixed buffer size; hosts whose xstate is
//!   larger (AVX-512 + AMX) answer EFAULT and the guest's init dies with
//!   "ptrace set fp regs failed, errno = 14". A seccomp filter
//!   ([`XSTATE_FILTER`]) makes UML's xstate probe fail so that it falls back
//!   to `PTRACE_GETFPREGS/SETFPREGS`.
//! * With that fallback only the legacy SSE state is kept, so AVX code in the
//!   guest's glibc (strchrnul, memcpy...) misbehaves; the guest gets
//!   [`GUEST_GLIBC_TUNABLES`], which disable the AVX/AVX-512 string functions.
//!
//! Every wait is bounded; guests are killed by the process group created for
//! them (never by name) and their directory is removed when the values are
//! dropped, also on panic.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tempfile::TempDir;

use super::Target;

/// Upper bound for one guest's whole life (enforced by `timeout`).
const GUEST_LIFETIME_SECS: u32 = 100;
/// How long a guest keeps retrying a peer that does not answer.
const GUEST_PING_WAIT_SECS: u32 = 30;
/// Upper bound for the HOLD phase when the release file never appears.
const GUEST_HOLD_SECS: u32 = 60;
/// How long all guests may take to report their results.
const RESULTS_TIMEOUT: Duration = Duration::from_secs(60);
/// How long guests get to power off after the release.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a guest's process group gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(3);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// `vswitch` or `vde_switch`, for messages.
pub fn name(target: Target) -> &'static str {
    match target {
        Target::Vswitch => "vswitch",
        Target::VdeSwitch => "vde_switch",
    }
}

/// Runs `scenario` against vswitch and vde_switch at once and returns
/// `(vswitch, vde_switch)`; a panic in either is passed on once both ended.
pub fn on_both_targets<T: Send>(scenario: impl Fn(Target) -> T + Sync) -> (T, T) {
    let (ours, reference) = thread::scope(|s| {
        let reference = s.spawn(|| scenario(Target::VdeSwitch));
        let ours = s.spawn(|| scenario(Target::Vswitch));
        (ours.join(), reference.join())
    });
    match (ours, reference) {
        (Ok(ours), Ok(reference)) => (ours, reference),
        (Err(e), _) | (_, Err(e)) => std::panic::resume_unwind(e),
    }
}

/// How a guest's `eth0` reaches the switch.
#[derive(Clone, Copy, Debug)]
pub enum Eth0 {
    /// `eth0=vde,DIR,MAC[,PORT]` (libvdeplug)
    Vde { port: Option<u16> },
    /// `eth0=daemon,MAC,unix,DIR/ctl` (old uml_switch protocol)
    Daemon,
}

/// One guest and what its init checks (see `tests/guest/init.sh`).
#[derive(Clone, Copy, Debug)]
pub struct GuestSpec {
    /// Address 169.254.0.`id`.
    pub id: u8,
    pub eth0: Eth0,
    /// VLAN the guest's kernel tags with (`eth0.<vid>`); `None`: untagged.
    pub vlan: Option<u16>,
    /// Guests that must answer a ping.
    pub peers: &'static [u8],
    /// Guests that must not answer a ping.
    pub strangers: &'static [u8],
    /// Also arping each peer.
    pub arping: bool,
}

impl GuestSpec {
    /// An untagged guest that pings `peers`, without arping or strangers.
    pub const fn new(id: u8, eth0: Eth0, peers: &'static [u8]) -> GuestSpec {
        GuestSpec { id, eth0, vlan: None, peers, strangers: &[], arping: false }
    }

    fn mac(&self) -> String {
        format!("52:54:00:00:01:{:02x}", self.id)
    }

    fn eth0_arg(&self, ctl_dir: &Path) -> String {
        match self.eth0 {
            Eth0::Vde { port: None } => format!("eth0=vde,{},{}", cmdline_path(ctl_dir), self.mac()),
            Eth0::Vde { port: Some(p) } => format!("eth0=vde,{},{},{p}", cmdline_path(ctl_dir), self.mac()),
            Eth0::Daemon => format!("eth0=daemon,{},unix,{}", self.mac(), cmdline_path(&ctl_dir.join("ctl"))),
        }
    }

    /// Every `RESULT` line this guest must print, and no others.
    fn expected_results(&self) -> Vec<String> {
        let mut want = Vec::new();
        for &p in self.peers {
            want.push(format!("RESULT ping {} ok", ip(p)));
            if self.arping {
                want.push(format!("RESULT arping {} ok", ip(p)));
            }
        }
        want.extend(self.strangers.iter().map(|&s| format!("RESULT ping {} fail", ip(s))));
        want
    }
}

pub fn ip(id: u8) -> String {
    format!("169.254.0.{id}")
}

/// seccomp: `ptrace(PTRACE_GETREGSET, _, NT_X86_XSTATE, _)` fails with EIO,
/// everything else is allowed. Offsets are those of `struct seccomp_data`.
#[cfg(target_arch = "x86_64")]
static XSTATE_FILTER: [libc::sock_filter; 10] = {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    const fn st(code: u16, k: u32) -> libc::sock_filter {
        libc::sock_filter { code, jt: 0, jf: 0, k }
    }
    const fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
        libc::sock_filter { code: JEQ_K, jt, jf, k }
    }
    [
        st(LD_W_ABS, 4), // arch
        jeq(AUDIT_ARCH_X86_64, 0, 7),
        st(LD_W_ABS, 0), // nr
        jeq(libc::SYS_ptrace as u32, 0, 5),
        st(LD_W_ABS, 16),  // args[0] (request), low word
        jeq(0x4204, 0, 3), // PTRACE_GETREGSET
        st(LD_W_ABS, 32),  // args[2] (regset type), low word
        jeq(0x202, 0, 1),  // NT_X86_XSTATE
        st(RET_K, SECCOMP_RET_ERRNO | libc::EIO as u32),
        st(RET_K, SECCOMP_RET_ALLOW),
    ]
};

/// Installs [`XSTATE_FILTER`] in the child between fork and exec.
fn deny_xstate_probe(cmd: &mut Command) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: between fork and exec only async-signal-safe prctl calls run,
    // on a filter that lives for the whole program.
    unsafe {
        cmd.pre_exec(|| {
            let prog = libc::sock_fprog {
                len: XSTATE_FILTER.len() as u16,
                filter: XSTATE_FILTER.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0 as libc::c_ulong, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER as libc::c_ulong, &prog) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Guest-side glibc: no AVX/AVX-512 string functions (see the module doc).
const GUEST_GLIBC_TUNABLES: &str = "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX2,-AVX";

/// `path`, after checking that it can go on a kernel command line.
fn cmdline_path(path: &Path) -> std::path::Display<'_> {
    assert!(
        !path.to_string_lossy().contains(|c: char| c.is_whitespace() || c == ','),
        "paths go on a kernel command line: no blanks or commas allowed: {}",
        path.display()
    );
    path.display()
}

fn init_script() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/init.sh");
    let meta = fs::metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    if meta.permissions().mode() & 0o111 != 0o111 {
        // The guest's kernel execs it directly: it must be executable.
        let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o755));
    }
    p
}

/// A private directory for the guests' consoles, UML state and release
/// file. The guests see it through hostfs, so it avoids the places init.sh
/// or the kernel mount over (/run, /proc, /sys, /dev).
fn guest_dir() -> TempDir {
    let mut base = std::env::temp_dir();
    if ["/run", "/proc", "/sys", "/dev"].iter().any(|p| base.starts_with(p))
        || base.to_string_lossy().contains(|c: char| c.is_whitespace() || c == ',')
    {
        base = PathBuf::from("/tmp");
    }
    tempfile::Builder::new().prefix("vswitch-uml-").tempdir_in(base).expect("create guest directory")
}

/// A booted guest; dropping it kills its whole process group.
struct Guest {
    id: u8,
    child: Option<Child>,
    console: PathBuf,
    status: Option<ExitStatus>,
}

impl Guest {
    fn boot(dir: &Path, ctl_dir: &Path, release: &Path, spec: &GuestSpec) -> Guest {
        let list = |ids: &[u8]| ids.iter().map(u8::to_string).collect::<Vec<_>>().join(",");
        let console = dir.join(format!("guest{}.console", spec.id));
        let out = File::create(&console).expect("guest console file");
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "5", &GUEST_LIFETIME_SECS.to_string(), "linux.uml", "mem=64M", "quiet"])
            .arg(format!("uml_dir={}", cmdline_path(dir)))
            .arg(format!("umid=g{}", spec.id))
            .args(["rootfstype=hostfs", "rootflags=/", "ro"])
            .arg(format!("init={}", cmdline_path(&init_script())))
            .arg(format!("ID={}", spec.id))
            .arg(format!("VLAN={}", spec.vlan.map_or(String::new(), |v| v.to_string())))
            .arg(format!("PEERS={}", list(spec.peers)))
            .arg(format!("STRANGERS={}", list(spec.strangers)))
            .arg(format!("ARPING={}", u8::from(spec.arping)))
            .arg(format!("WAIT={GUEST_PING_WAIT_SECS}"))
            .arg(format!("HOLD={GUEST_HOLD_SECS}"))
            .arg(format!("RELEASE={}", cmdline_path(release)))
            .arg(GUEST_GLIBC_TUNABLES)
            .arg(spec.eth0_arg(ctl_dir))
            .args(["con=null", "con0=fd:0,fd:1"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone console file"))
            .stderr(out)
            // Our own process group: `kill` stops timeout, UML and all of
            // UML's helper processes by this group id.
            .process_group(0);
        deny_xstate_probe(&mut cmd);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start timeout/linux.uml: {e}"));
        Guest { id: spec.id, child: Some(child), console, status: None }
    }

    fn console(&self) -> String {
        fs::read(&self.console).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    fn done(&self) -> bool {
        self.console().contains(&format!("GUEST {} DONE", self.id))
    }

    /// True once the guest has exited (and was reaped).
    fn poll_exit(&mut self) -> bool {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.status = Some(status);
            self.child = None;
        }
        self.child.is_none()
    }

    /// SIGTERM, then after a grace period SIGKILL, to the guest's process
    /// group; reaps the guest.
    fn kill(&mut self) {
        if self.poll_exit() {
            return;
        }
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = Pid::from_raw(child.id() as i32);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + KILL_GRACE;
        self.status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = killpg(group, Signal::SIGKILL);
                break child.wait().ok();
            }
            thread::sleep(Duration::from_millis(20));
        };
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What one guest left behind.
pub struct Report {
    pub id: u8,
    pub status: Option<ExitStatus>,
    pub console: String,
}

fn dump<'a>(label: &str, reports: impl IntoIterator<Item = &'a Report>) -> String {
    reports
        .into_iter()
        .map(|r| format!("----- {label} guest {} console (exit {:?}) -----\n{}\n", r.id, r.status, r.console))
        .collect()
}

/// The consoles of a finished scenario and what `inspect` returned.
pub struct Outcome<T> {
    pub target: Target,
    pub reports: Vec<Report>,
    /// What `inspect` returned while all guests were up and holding; `None`
    /// if one of them had exited by then.
    pub inspected: Option<T>,
}

impl<T> Outcome<T> {
    /// Every guest's console, for failure messages.
    pub fn dump(&self) -> String {
        dump(name(self.target), &self.reports)
    }

    pub fn console(&self, id: u8) -> &str {
        &self.reports.iter().find(|r| r.id == id).unwrap_or_else(|| panic!("no guest {id}")).console
    }

    /// Every guest printed exactly the `RESULT` lines its spec asks for:
    /// ping (and arping, if asked) ok for each peer, ping fail for each
    /// stranger.
    pub fn assert_results(&self, specs: &[GuestSpec]) {
        let target = name(self.target);
        for spec in specs {
            let console = self.console(spec.id);
            let want = spec.expected_results();
            for w in &want {
                assert!(
                    console.lines().any(|l| l.trim_end() == w),
                    "{target}: guest {} ({:?}, VLAN {:?}) did not print {w:?}\n{}",
                    spec.id,
                    spec.eth0,
                    spec.vlan,
                    self.dump()
                );
            }
            let results: Vec<&str> = console.lines().filter(|l| l.starts_with("RESULT ")).collect();
            assert_eq!(
                results.len(),
                want.len(),
                "{target}: guest {} printed unexpected RESULT lines {results:?}\n{}",
                spec.id,
                self.dump()
            );
        }
    }
}

/// Boots one guest per spec (in parallel) on the switch whose control
/// directory is `ctl_dir`, waits until all of them have printed their
/// results, calls `inspect` while they are still attached (holding), then
/// releases them and waits for them to power off. Guests and their
/// directory are gone on return or panic.
pub fn run_guests<T>(target: Target, ctl_dir: &Path, specs: &[GuestSpec], inspect: impl FnOnce() -> T) -> Outcome<T> {
    let started = Instant::now();
    let label = name(target);
    // Declared before the guests, so dropped after them.
    let dir = guest_dir();
    let release = dir.path().join("release");
    let mut guests: Vec<Guest> = specs.iter().map(|s| Guest::boot(dir.path(), ctl_dir, &release, s)).collect();
    let reports = |guests: &[Guest]| -> Vec<Report> {
        guests.iter().map(|g| Report { id: g.id, status: g.status, console: g.console() }).collect()
    };

    // Results (or an early death) from every guest.
    let deadline = Instant::now() + RESULTS_TIMEOUT;
    while !guests.iter_mut().all(|g| g.done() || g.poll_exit()) {
        if Instant::now() >= deadline {
            panic!(
                "{label}: guests did not report their results within {RESULTS_TIMEOUT:?}\n{}",
                dump(label, &reports(&guests))
            );
        }
        thread::sleep(POLL_INTERVAL);
    }
    let all_up = guests.iter_mut().all(|g| !g.poll_exit());
    let inspected = all_up.then(inspect);

    // Release them and let them power off.
    File::create(&release).expect("release file");
    let deadline = Instant::now() + EXIT_TIMEOUT;
    while Instant::now() < deadline && !guests.iter_mut().all(Guest::poll_exit) {
        thread::sleep(POLL_INTERVAL);
    }
    let stuck: Vec<u8> = guests.iter_mut().filter_map(|g| (!g.poll_exit()).then_some(g.id)).collect();
    guests.iter_mut().for_each(Guest::kill);
    let outcome = Outcome { target, reports: reports(&guests), inspected };
    assert!(
        stuck.is_empty(),
        "{label}: guests {stuck:?} did not power off within {EXIT_TIMEOUT:?} of the release\n{}",
        outcome.dump()
    );
    eprintln!(
        "[uml] {label}: guests {:?} in {:.1?}",
        specs.iter().map(|s| s.id).collect::<Vec<_>>(),
        started.elapsed()
    );
    outcome
}
