//! End-to-end tests with User-Mode Linux guests attached to a switch.
//!
//! Every scenario runs against the reference `vde_switch` (proving the test
//! itself is right) and against `vswitch`.  Guests boot `linux.uml` with the
//! host's `/` as a read-only hostfs root and `tests/guest/init.sh` as init;
//! they use only 169.254.0.0/16 link-local addresses and report one
//! `RESULT ...` line per check on their console, which we capture in a file.
//!
//! Two host-specific workarounds are applied to every guest (see
//! `uml_command`):
//! * UML 6.1 restores the guest's FPU state with `PTRACE_SETREGSET
//!   NT_X86_XSTATE` using its own fixed buffer size; hosts whose xstate is
//!   larger (AVX-512 + AMX here) answer EFAULT and the guest's init dies with
//!   "ptrace set fp regs failed, errno = 14".  A seccomp filter makes UML's
//!   xstate probe fail so that it falls back to `PTRACE_GETFPREGS/SETFPREGS`.
//! * With that fallback only the legacy SSE state is kept, so AVX code in the
//!   guest's glibc (strchrnul, memcpy...) misbehaves; the guest gets
//!   `GLIBC_TUNABLES` that disable the AVX/AVX-512 string functions.
//!
//! Every wait is bounded; switches and guests are killed (by PID / by the
//! process group we created for them, never by name) and temporary
//! directories removed when the values are dropped, also on panic.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// limits

/// Upper bound for one guest's whole life (enforced by `timeout`).
const GUEST_LIFETIME_SECS: u32 = 100;
/// How long a guest keeps retrying a peer that does not answer.
const GUEST_PING_WAIT_SECS: u32 = 20;
/// Upper bound for the HOLD phase when the release file never appears.
const GUEST_HOLD_SECS: u32 = 60;
/// How long we wait for all guests to report their results.
const RESULTS_TIMEOUT: Duration = Duration::from_secs(60);
/// How long guests get to power off after the release.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// Switch start-up (daemonise, pid file, sockets).
const SWITCH_START_TIMEOUT: Duration = Duration::from_secs(10);
/// One management-socket exchange.
const MGMT_TIMEOUT: Duration = Duration::from_secs(5);

const PROMPT: &str = "\nvde$ ";

// ---------------------------------------------------------------------------
// temporary directory

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        // The guests must see this directory through hostfs: avoid the
        // places init.sh or the kernel mount over (/run, /proc, /sys, /dev).
        let mut base = std::env::temp_dir();
        if ["/run", "/proc", "/sys", "/dev"].iter().any(|p| base.starts_with(p))
            || base.to_string_lossy().contains(|c: char| c.is_whitespace() || c == ',')
        {
            base = PathBuf::from("/tmp");
        }
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let p = base.join(format!(
            "vsw-uml-{}-{}-{}-{:x}",
            tag,
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst),
            nanos & 0xffff
        ));
        fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// switches

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    VdeSwitch,
    Vswitch,
}

impl Kind {
    fn binary(self) -> String {
        match self {
            Kind::VdeSwitch => "vde_switch".to_string(),
            Kind::Vswitch => match option_env!("CARGO_BIN_EXE_vswitch") {
                Some(p) => p.to_string(),
                None => {
                    panic!("cargo did not define CARGO_BIN_EXE_vswitch: the package has no `vswitch` binary target yet")
                }
            },
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::VdeSwitch => "vde_switch",
            Kind::Vswitch => "vswitch",
        }
    }
}

/// A daemonised switch: `-s DIR/sw -M DIR/sw.mgmt -p DIR/sw.pid -d`.
struct Switch {
    kind: Kind,
    pid: i32,
    sock_dir: PathBuf,
    mgmt: PathBuf,
}

fn pid_alive(pid: i32) -> bool {
    // A zombie (not yet reaped by whoever inherited it) counts as dead.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => match s.rfind(')') {
            Some(i) => !s[i + 1..].trim_start().starts_with('Z'),
            None => true,
        },
        Err(_) => false,
    }
}

impl Switch {
    fn start(kind: Kind, dir: &Path) -> Switch {
        let sock_dir = dir.join("sw");
        let mgmt = dir.join("sw.mgmt");
        let pidfile = dir.join("sw.pid");
        let errlog = dir.join(format!("{}.out", kind.name()));
        let out = File::create(&errlog).expect("switch log");
        let mut child = Command::new(kind.binary())
            .arg("-s")
            .arg(&sock_dir)
            .arg("-M")
            .arg(&mgmt)
            .arg("-p")
            .arg(&pidfile)
            .arg("-d")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", kind.binary()));
        let log = || fs::read_to_string(&errlog).unwrap_or_default();
        let deadline = Instant::now() + SWITCH_START_TIMEOUT;

        // With -d the process we started forks the daemon and exits.
        loop {
            match child.try_wait().expect("try_wait switch") {
                Some(st) if st.success() => break,
                Some(st) => panic!("{} -d exited with {st}; output:\n{}", kind.name(), log()),
                None if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "{} -d did not return within {:?} (does it daemonise?); output:\n{}",
                        kind.name(),
                        SWITCH_START_TIMEOUT,
                        log()
                    );
                }
                None => sleep(Duration::from_millis(20)),
            }
        }

        // pid file, then both sockets.
        let pid = loop {
            if let Some(pid) = fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
                break pid;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: no valid pid file {} after {:?}; output:\n{}",
                    kind.name(),
                    pidfile.display(),
                    SWITCH_START_TIMEOUT,
                    log()
                );
            }
            sleep(Duration::from_millis(20));
        };
        let sw = Switch { kind, pid, sock_dir, mgmt };
        let ctl = sw.sock_dir.join("ctl");
        loop {
            if ctl.exists() && UnixStream::connect(&sw.mgmt).is_ok() {
                break;
            }
            if Instant::now() > deadline || !pid_alive(pid) {
                panic!(
                    "{}: {} / {} not ready after {:?} (pid {pid} alive: {}); output:\n{}",
                    kind.name(),
                    ctl.display(),
                    sw.mgmt.display(),
                    SWITCH_START_TIMEOUT,
                    pid_alive(pid),
                    log()
                );
            }
            sleep(Duration::from_millis(20));
        }
        sw
    }

    fn mgmt(&self) -> Mgmt {
        let _ = self.kind;
        Mgmt::connect(&self.mgmt)
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        if self.pid <= 1 || !pid_alive(self.pid) {
            return;
        }
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while pid_alive(self.pid) && Instant::now() < deadline {
            sleep(Duration::from_millis(20));
        }
        if pid_alive(self.pid) {
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }
}

// ---------------------------------------------------------------------------
// management socket

struct Mgmt {
    s: UnixStream,
    buf: Vec<u8>,
    banner: String,
}

impl Mgmt {
    fn connect(path: &Path) -> Mgmt {
        let s = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        s.set_write_timeout(Some(MGMT_TIMEOUT)).unwrap();
        let mut m = Mgmt { s, buf: Vec::new(), banner: String::new() };
        m.banner = m.read_to_prompt("banner");
        m
    }

    /// Reads until the buffer ends with the prompt; returns what came before it.
    fn read_to_prompt(&mut self, what: &str) -> String {
        let deadline = Instant::now() + MGMT_TIMEOUT;
        let mut chunk = [0u8; 4096];
        while !self.buf.ends_with(PROMPT.as_bytes()) {
            if Instant::now() > deadline {
                panic!(
                    "mgmt: no prompt after {what} within {MGMT_TIMEOUT:?}; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            }
            match self.s.read(&mut chunk) {
                Ok(0) => panic!(
                    "mgmt: EOF while waiting for the prompt after {what}; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut
                        || e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("mgmt read: {e}"),
            }
        }
        let text = String::from_utf8_lossy(&self.buf[..self.buf.len() - PROMPT.len()]).into_owned();
        self.buf.clear();
        text
    }

    fn cmd(&mut self, c: &str) -> String {
        self.s.write_all(format!("{c}\n").as_bytes()).unwrap_or_else(|e| panic!("mgmt write {c:?}: {e}"));
        self.read_to_prompt(c)
    }
}

// ---------------------------------------------------------------------------
// guests

fn init_script() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/init.sh");
    let meta = fs::metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    if meta.permissions().mode() & 0o111 != 0o111 {
        // The guest's kernel execs it directly: it must be executable.
        let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o755));
    }
    assert!(
        !p.to_string_lossy().contains(|c: char| c.is_whitespace() || c == ','),
        "the init path goes on a kernel command line: no blanks or commas allowed: {}",
        p.display()
    );
    p
}

#[derive(Clone, Debug)]
enum Eth0 {
    /// `eth0=vde,DIR,MAC[,PORT]` (libvdeplug)
    Vde { port: Option<u16> },
    /// `eth0=daemon,MAC,unix,DIR/ctl` (old uml_switch protocol)
    Daemon,
}

#[derive(Clone, Debug)]
struct GuestSpec {
    id: u8,
    peers: Vec<u8>,
    arping: bool,
    eth0: Eth0,
}

impl GuestSpec {
    fn mac(&self) -> String {
        format!("52:54:00:00:01:{:02x}", self.id)
    }
    fn ip(id: u8) -> String {
        format!("169.254.0.{id}")
    }
}

/// seccomp: `ptrace(PTRACE_GETREGSET, _, NT_X86_XSTATE, _)` fails with EIO,
/// everything else is allowed.  Offsets are those of `struct seccomp_data`.
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

/// Guest-side glibc: no AVX/AVX-512 string functions (see the module doc).
const GUEST_GLIBC_TUNABLES: &str = "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX2,-AVX";

struct Guest {
    id: u8,
    child: Option<Child>,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Guest {
    fn boot(dir: &Path, sw: &Switch, release: &Path, spec: &GuestSpec) -> Guest {
        let log = dir.join(format!("guest{}.console", spec.id));
        let out = File::create(&log).expect("guest console file");
        let eth0 = match &spec.eth0 {
            Eth0::Vde { port: None } => {
                format!("eth0=vde,{},{}", sw.sock_dir.display(), spec.mac())
            }
            Eth0::Vde { port: Some(p) } => {
                format!("eth0=vde,{},{},{p}", sw.sock_dir.display(), spec.mac())
            }
            Eth0::Daemon => format!("eth0=daemon,{},unix,{}", spec.mac(), sw.sock_dir.join("ctl").display()),
        };
        let peers: Vec<String> = spec.peers.iter().map(|p| p.to_string()).collect();
        let mut cmd = Command::new("timeout");
        cmd.arg("-k")
            .arg("5")
            .arg(GUEST_LIFETIME_SECS.to_string())
            .arg("linux.uml")
            .arg("mem=64M")
            .arg("quiet")
            .arg(format!("uml_dir={}", dir.join("uml").display()))
            .arg(format!("umid=g{}", spec.id))
            .arg("rootfstype=hostfs")
            .arg("rootflags=/")
            .arg("ro")
            .arg(format!("init={}", init_script().display()))
            .arg(format!("ID={}", spec.id))
            .arg(format!("PEERS={}", peers.join(",")))
            .arg(format!("ARPING={}", u8::from(spec.arping)))
            .arg(format!("WAIT={GUEST_PING_WAIT_SECS}"))
            .arg(format!("HOLD={GUEST_HOLD_SECS}"))
            .arg(format!("RELEASE={}", release.display()))
            .arg(GUEST_GLIBC_TUNABLES)
            .arg(eth0)
            .arg("con=null")
            .arg("con0=fd:0,fd:1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            // our own process group: Drop can kill timeout, UML and all of
            // UML's helper processes by this group id.
            .process_group(0);
        #[cfg(target_arch = "x86_64")]
        unsafe {
            cmd.pre_exec(|| {
                let prog = libc::sock_fprog {
                    len: XSTATE_FILTER.len() as u16,
                    filter: XSTATE_FILTER.as_ptr() as *mut libc::sock_filter,
                };
                if libc::prctl(
                    libc::PR_SET_NO_NEW_PRIVS,
                    1 as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                    &prog as *const libc::sock_fprog,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start timeout/linux.uml: {e}"));
        Guest { id: spec.id, child: Some(child), log, status: None }
    }

    fn console(&self) -> String {
        fs::read(&self.log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    fn poll_exit(&mut self) -> bool {
        if self.status.is_some() {
            return true;
        }
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(st)) = c.try_wait()
        {
            self.status = Some(st);
            self.child = None;
            return true;
        }
        false
    }

    fn kill(&mut self) {
        if self.poll_exit() {
            return;
        }
        let Some(mut c) = self.child.take() else {
            return;
        };
        let pgid = c.id() as i32;
        unsafe { libc::killpg(pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                self.status = Some(st);
                break;
            }
            if Instant::now() > deadline {
                unsafe { libc::killpg(pgid, libc::SIGKILL) };
                self.status = c.wait().ok();
                break;
            }
            sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// scenario runner

struct Outcome {
    kind: Kind,
    consoles: Vec<(u8, String)>,
    /// whatever `inspect` returned while all guests were up and holding
    inspected: Option<String>,
    elapsed: Duration,
}

impl Outcome {
    fn dump(&self) -> String {
        let mut s = String::new();
        for (id, c) in &self.consoles {
            s += &format!("----- {} guest {id} console -----\n{c}\n", self.kind.name());
        }
        s
    }

    fn console(&self, id: u8) -> &str {
        &self.consoles.iter().find(|(i, _)| *i == id).unwrap().1
    }

    /// Every guest reported `RESULT ping <peer> ok` (and arping when asked)
    /// for each of its peers, and nothing failed.
    fn assert_results(&self, specs: &[GuestSpec]) {
        for spec in specs {
            let con = self.console(spec.id);
            let mut want: Vec<String> = Vec::new();
            for p in &spec.peers {
                want.push(format!("RESULT ping {} ok", GuestSpec::ip(*p)));
                if spec.arping {
                    want.push(format!("RESULT arping {} ok", GuestSpec::ip(*p)));
                }
            }
            for w in &want {
                assert!(
                    con.lines().any(|l| l.trim_end() == w),
                    "{}: guest {} ({:?}) did not print {w:?}\n{}",
                    self.kind.name(),
                    spec.id,
                    spec.eth0,
                    self.dump()
                );
            }
            let results: Vec<&str> = con.lines().filter(|l| l.starts_with("RESULT ")).collect();
            assert_eq!(
                results.len(),
                want.len(),
                "{}: guest {} printed unexpected RESULT lines {results:?}\n{}",
                self.kind.name(),
                spec.id,
                self.dump()
            );
        }
    }
}

/// Starts a switch of `kind`, boots one guest per spec (in parallel), waits
/// until all of them have printed their results, calls `inspect` while they
/// are still attached (holding), then releases them and waits for them to
/// power off.  Everything is torn down on return or panic.
fn run_scenario(kind: Kind, tag: &str, specs: &[GuestSpec], inspect: impl FnOnce(&Switch) -> String) -> Outcome {
    let t0 = Instant::now();
    let tmp = TempDir::new(tag);
    let sw = Switch::start(kind, tmp.path());
    let release = tmp.path().join("release");
    let mut guests: Vec<Guest> = specs.iter().map(|s| Guest::boot(tmp.path(), &sw, &release, s)).collect();

    // Results (or an early death) from every guest.
    let deadline = Instant::now() + RESULTS_TIMEOUT;
    let mut all_done = false;
    while Instant::now() < deadline {
        let mut done = true;
        for g in guests.iter_mut() {
            let c = g.console();
            if !c.contains(&format!("GUEST {} DONE", g.id)) && !g.poll_exit() {
                done = false;
            }
        }
        if done {
            all_done = true;
            break;
        }
        sleep(Duration::from_millis(50));
    }
    let dump = |guests: &Vec<Guest>| {
        let mut s = String::new();
        for g in guests {
            s +=
                &format!("----- {} guest {} console (exit {:?}) -----\n{}\n", kind.name(), g.id, g.status, g.console());
        }
        s
    };
    if !all_done {
        panic!("{}: guests did not report their results within {RESULTS_TIMEOUT:?}\n{}", kind.name(), dump(&guests));
    }
    let alive = guests.iter_mut().map(|g| !g.poll_exit()).filter(|a| *a).count();
    let inspected = if alive == guests.len() { Some(inspect(&sw)) } else { None };

    // Release and let them power off.
    File::create(&release).expect("release file");
    let deadline = Instant::now() + EXIT_TIMEOUT;
    while Instant::now() < deadline && !guests.iter_mut().all(|g| g.poll_exit()) {
        sleep(Duration::from_millis(50));
    }
    let stuck: Vec<u8> = guests.iter_mut().filter_map(|g| (!g.poll_exit()).then_some(g.id)).collect();
    for g in guests.iter_mut() {
        g.kill();
    }
    let consoles = guests.iter().map(|g| (g.id, g.console())).collect();
    let out = Outcome { kind, consoles, inspected, elapsed: t0.elapsed() };
    assert!(
        stuck.is_empty(),
        "{}: guests {stuck:?} did not power off within {EXIT_TIMEOUT:?} of the release\n{}",
        kind.name(),
        out.dump()
    );
    eprintln!("[uml] {} scenario {tag}: {:.1?}", kind.name(), out.elapsed);
    out
}

// ---------------------------------------------------------------------------
// port/print normalisation (spec §8.6)

/// Masks what legitimately differs between runs and switches: counter
/// values (their field widths are kept and checked), endpoint IDs (file
/// descriptor numbers) and client PIDs in descriptions.  Returns the masked
/// text and the (IN pkts, OUT pkts) of each port, in order.
fn normalize_port_print(raw: &str) -> Result<(String, Vec<(u64, u64)>), String> {
    fn field(s: &str, width: usize, what: &str, line: &str) -> Result<u64, String> {
        if s.len() != width {
            return Err(format!("{what}: field width {} != {width} in {line:?}", s.len()));
        }
        let t = s.trim_start_matches(' ');
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{what}: not a right-aligned number in {line:?}"));
        }
        t.parse().map_err(|e| format!("{what}: {e} in {line:?}"))
    }
    let mask = |width: usize| format!("{:>width$}", "N");
    let mut out = String::new();
    let mut counters: Vec<(u64, u64)> = Vec::new();
    for line in raw.split_inclusive('\n') {
        let body = line.strip_suffix('\n').unwrap_or(line);
        let nl = if line.ends_with('\n') { "\n" } else { "" };
        let counter = [(" IN:  pkts ", true), (" OUT: pkts ", false)].into_iter().find(|(p, _)| body.starts_with(p));
        if let Some((prefix, is_in)) = counter {
            // "%10lld          bytes %20lld"
            let rest = &body[prefix.len()..];
            const MID: &str = "          bytes ";
            if rest.len() != 10 + MID.len() + 20 || &rest[10..10 + MID.len()] != MID {
                return Err(format!("bad counter line {body:?}"));
            }
            let pkts = field(&rest[..10], 10, "pkts", body)?;
            let _bytes = field(&rest[10 + MID.len()..], 20, "bytes", body)?;
            if is_in {
                counters.push((pkts, 0));
            } else if let Some(last) = counters.last_mut() {
                last.1 = pkts;
            }
            out += &format!("{prefix}{}{MID}{}{nl}", mask(10), mask(20));
        } else if let Some(rest) = body.strip_prefix("  -- endpoint ID ") {
            let (id, tail) = rest.split_at(rest.len().min(4));
            if id.len() != 4 || !id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("bad endpoint ID in {body:?}"));
            }
            // client PIDs in the description
            let mut tail = tail.to_string();
            if let Some(i) = tail.find(" pid=") {
                let start = i + " pid=".len();
                let end = tail[start..].find(|c: char| !c.is_ascii_digit()).map_or(tail.len(), |e| start + e);
                if end == start {
                    return Err(format!("pid= without a number in {body:?}"));
                }
                tail.replace_range(start..end, "N");
            }
            out += &format!("  -- endpoint ID NNNN{tail}{nl}");
        } else {
            out += line;
        }
    }
    Ok((out, counters))
}

// ---------------------------------------------------------------------------
// scenarios

/// (a) `eth0=vde,DIR,MAC` (automatic port) and `eth0=vde,DIR,MAC,5` ping
/// each other; guest 1 also arpings.
fn specs_vde_pair() -> Vec<GuestSpec> {
    vec![
        GuestSpec { id: 1, peers: vec![2], arping: true, eth0: Eth0::Vde { port: None } },
        GuestSpec { id: 2, peers: vec![1], arping: false, eth0: Eth0::Vde { port: Some(5) } },
    ]
}

/// (b) the old `daemon` transport pings a `vde` guest and back.
fn specs_daemon_vde() -> Vec<GuestSpec> {
    vec![
        GuestSpec { id: 3, peers: vec![4], arping: true, eth0: Eth0::Daemon },
        GuestSpec { id: 4, peers: vec![3], arping: false, eth0: Eth0::Vde { port: None } },
    ]
}

/// (c) a `daemon` guest (automatic port: 1) and a `vde` guest on port 5.
fn specs_port_print() -> Vec<GuestSpec> {
    vec![
        GuestSpec { id: 5, peers: vec![6], arping: false, eth0: Eth0::Daemon },
        GuestSpec { id: 6, peers: vec![5], arping: false, eth0: Eth0::Vde { port: Some(5) } },
    ]
}

/// `port/print` of scenario (c) after `normalize_port_print`: spec §8.6 format,
/// §10.1 (daemon: `Current User: NONE`, empty description) and §10.2 (vde:
/// `UML vde_transport user=root pid=N`).
const EXPECTED_PORT_PRINT: &str = "\
0000 DATA END WITH '.'
Port 0001 untagged_vlan=0000 ACTIVE - Unnamed Allocatable
 Current User: NONE Access Control: (User: NONE - Group: NONE)
 IN:  pkts          N          bytes                    N
 OUT: pkts          N          bytes                    N
  -- endpoint ID NNNN module unix prog   : 
Port 0005 untagged_vlan=0000 ACTIVE - Unnamed Allocatable
 Current User: root Access Control: (User: NONE - Group: NONE)
 IN:  pkts          N          bytes                    N
 OUT: pkts          N          bytes                    N
  -- endpoint ID NNNN module unix prog   : UML vde_transport user=root pid=N
.
1000 Success
";

fn scenario_ping(kind: Kind, tag: &str, specs: &[GuestSpec]) {
    let out = run_scenario(kind, tag, specs, |_| String::new());
    out.assert_results(specs);
}

/// Runs scenario (c) and checks its `port/print` against the spec; returns
/// the raw and the normalised output.
fn scenario_port_print(kind: Kind) -> (String, String) {
    let specs = specs_port_print();
    let out = run_scenario(kind, "print", &specs, |sw| {
        let mut m = sw.mgmt();
        assert!(m.banner.starts_with("VDE switch V.2.3.2\n"), "{}: banner {:?}", kind.name(), m.banner);
        m.cmd("port/print")
    });
    out.assert_results(&specs);
    let raw = out
        .inspected
        .clone()
        .unwrap_or_else(|| panic!("{}: a guest exited before port/print could be taken\n{}", kind.name(), out.dump()));
    println!("===== {} port/print (daemon guest + vde guest on port 5) =====\n{raw}=====", kind.name());
    let (norm, counters) = normalize_port_print(&raw)
        .unwrap_or_else(|e| panic!("{}: port/print format: {e}\nraw output:\n{raw}", kind.name()));
    assert_eq!(
        norm,
        EXPECTED_PORT_PRINT,
        "{}: normalised port/print differs from the spec (left: got, right: expected)\nraw output:\n{raw}",
        kind.name()
    );
    // Both guests pinged each other through the switch: every port saw traffic.
    for (i, (inp, outp)) in counters.iter().enumerate() {
        assert!(
            *inp > 0 && *outp > 0,
            "{}: port #{i} counters IN {inp} / OUT {outp} after successful pings\n{raw}",
            kind.name()
        );
    }
    (raw, norm)
}

// ---------------------------------------------------------------------------
// tests

#[test]
fn uml_vde_auto_and_port5_ping_vde_switch() {
    scenario_ping(Kind::VdeSwitch, "a", &specs_vde_pair());
}

#[test]
fn uml_vde_auto_and_port5_ping_vswitch() {
    scenario_ping(Kind::Vswitch, "a", &specs_vde_pair());
}

#[test]
fn uml_daemon_transport_pings_vde_guest_vde_switch() {
    scenario_ping(Kind::VdeSwitch, "b", &specs_daemon_vde());
}

#[test]
fn uml_daemon_transport_pings_vde_guest_vswitch() {
    scenario_ping(Kind::Vswitch, "b", &specs_daemon_vde());
}

#[test]
fn uml_port_print_vde_switch() {
    scenario_port_print(Kind::VdeSwitch);
}

/// The same scenario against both switches at once; each must match the spec
/// and the two normalised outputs must be identical.
#[test]
fn uml_port_print_vswitch_matches_vde_switch() {
    let (reference, mine) = std::thread::scope(|s| {
        let r = s.spawn(|| scenario_port_print(Kind::VdeSwitch));
        let m = s.spawn(|| scenario_port_print(Kind::Vswitch));
        (r.join(), m.join())
    });
    let reference = match reference {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e),
    };
    let mine = match mine {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e),
    };
    assert_eq!(
        mine.1, reference.1,
        "normalised port/print: vswitch (left) vs vde_switch (right)\nvswitch raw:\n{}\nvde_switch raw:\n{}",
        mine.0, reference.0
    );
}

#[test]
fn normalize_port_print_masks_only_variable_fields() {
    let raw = "0000 DATA END WITH '.'\n\
Port 0001 untagged_vlan=0000 ACTIVE - Unnamed Allocatable\n \
Current User: root Access Control: (User: NONE - Group: NONE)\n \
IN:  pkts          4          bytes                  402\n \
OUT: pkts          1          bytes                   60\n  \
-- endpoint ID 0003 module unix prog   : vm1 user=root pid=12952\n\
.\n1000 Success\n";
    let (n, c) = normalize_port_print(raw).unwrap();
    assert_eq!(c, vec![(4, 1)]);
    assert!(n.contains("  -- endpoint ID NNNN module unix prog   : vm1 user=root pid=N\n"));
    assert!(n.contains(" IN:  pkts          N          bytes                    N\n"));
    // a misaligned counter is a format error, not something to mask
    assert!(normalize_port_print(" IN:  pkts 4 bytes 402\n").is_err());
}
