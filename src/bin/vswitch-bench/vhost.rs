//! The vhost-user loopback: one `dpdk-testpmd` with two `net_virtio_user`
//! ports on a switch's two vhost-user sockets, forwarding in `mac` mode
//! with each port's peer set to the other port's MAC, so frames started by
//! `tx_first` circulate through the switch for as long as the run lasts.
//! testpmd's receive counters are the frames the switch delivered. How
//! many frames circulate is `tx_first`'s burst count (32 frames a burst
//! and port): with one burst, a switch that sleeps between kicks is timed
//! on its wake-up latency; with more, on its work per frame.
//!
//! testpmd and Open vSwitch with DPDK need hugepages: they are reserved
//! through `/proc/sys/vm/nr_hugepages` and mounted in a temporary directory
//! for the whole benchmark, and given back when it ends.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::report::Measurement;
use crate::target::{Kind, SWITCH_CPU, pin};

const TESTPMD: &str = "dpdk-testpmd";
const OVS_VSWITCHD: &str = "/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk";
const OVS_SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";
/// 2 MiB pages: 256 MiB for testpmd and 256 MiB for OVS-DPDK, with room.
const PAGES: u64 = 512;
/// The MACs of testpmd's two ports; each port's frames are addressed to
/// the other.
const MACS: [&str; 2] = ["02:00:00:00:76:01", "02:00:00:00:76:02"];
/// Ring size of testpmd's ports: room for 32 bursts of 32 frames.
const RING: u32 = 1024;
/// testpmd polls on this CPU; the switch under test is kept on the other.
const TESTPMD_CPU: usize = 1;

fn program_exists(name: &str) -> bool {
    let path = Path::new(name);
    if path.is_absolute() {
        return path.exists();
    }
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).exists()))
}

/// Why the loopback cannot run on `kind` here, if it cannot.
pub fn unavailable(kind: Kind) -> Option<String> {
    if !program_exists(TESTPMD) {
        return Some(format!("{TESTPMD} not found (Debian package dpdk-dev)"));
    }
    if kind == Kind::OvsDpdk && !program_exists(OVS_VSWITCHD) {
        return Some(format!("{OVS_VSWITCHD} not found (Debian package openvswitch-switch-dpdk)"));
    }
    if !nix::unistd::geteuid().is_root() {
        return Some("hugepages need root".into());
    }
    None
}

/// Hugepages reserved and mounted for the benchmark's lifetime.
pub struct Hugepages {
    before: u64,
    dir: tempfile::TempDir,
}

fn hugepages_total() -> u64 {
    fs::read_to_string(NR_HUGEPAGES).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0)
}

impl Hugepages {
    pub fn reserve() -> Result<Hugepages> {
        let before = hugepages_total();
        fs::write(NR_HUGEPAGES, (before + PAGES).to_string()).context("reserving hugepages")?;
        let dir = tempfile::Builder::new().prefix("vswitch-bench-huge").tempdir()?;
        let pages = Hugepages { before, dir };
        if hugepages_total() < before + PAGES {
            bail!("the kernel gave {} of {} hugepages", hugepages_total() - before, PAGES);
        }
        let status = Command::new("mount").args(["-t", "hugetlbfs", "nodev"]).arg(pages.dir.path()).status()?;
        if !status.success() {
            bail!("mounting hugetlbfs on {} failed", pages.dir.path().display());
        }
        Ok(pages)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Hugepages {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).stderr(Stdio::null()).status();
        let _ = fs::write(NR_HUGEPAGES, self.before.to_string());
    }
}

/// Open vSwitch with DPDK, in a directory of its own: a bridge with NORMAL
/// learning on the userspace datapath, two `dpdkvhostuser` ports, one PMD
/// thread on the switch's CPU.
pub struct OvsDpdk {
    run: tempfile::TempDir,
    pids: Vec<Pid>,
}

fn pid_in(path: &Path) -> Result<Pid> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Pid::from_raw(text.trim().parse().with_context(|| format!("pid in {}", path.display()))?))
}

impl OvsDpdk {
    pub fn start(huge: &Path) -> Result<OvsDpdk> {
        let run = tempfile::Builder::new().prefix("vswitch-bench-ovs").tempdir()?;
        let mut ovs = OvsDpdk { run, pids: Vec::new() };
        let d = ovs.run.path().to_path_buf();
        let quiet = |c: &mut Command| -> Result<()> {
            let out = c.env("OVS_RUNDIR", &d).env("OVS_LOGDIR", &d).env("OVS_DBDIR", &d).output()?;
            if !out.status.success() {
                bail!("{:?} failed: {}", c.get_program(), String::from_utf8_lossy(&out.stderr).trim());
            }
            Ok(())
        };
        quiet(Command::new("ovsdb-tool").arg("create").arg(d.join("conf.db")).arg(OVS_SCHEMA))?;
        quiet(
            Command::new("ovsdb-server")
                .arg(d.join("conf.db"))
                .arg(format!("--remote=punix:{}", d.join("db.sock").display()))
                .arg(format!("--pidfile={}", d.join("ovsdb.pid").display()))
                .arg(format!("--unixctl={}", d.join("ovsdb.ctl").display()))
                .arg(format!("--log-file={}", d.join("ovsdb.log").display()))
                .arg("--detach"),
        )?;
        ovs.pids.push(pid_in(&d.join("ovsdb.pid"))?);
        let db = format!("--db=unix:{}", d.join("db.sock").display());
        quiet(Command::new("ovs-vsctl").arg(&db).args(["--no-wait", "init"]))?;
        quiet(Command::new("ovs-vsctl").arg(&db).args(["--no-wait", "set", "Open_vSwitch", "."]).args([
            "other_config:dpdk-init=true".to_string(),
            "other_config:dpdk-socket-mem=256".to_string(),
            format!("other_config:pmd-cpu-mask={:#x}", 1u32 << SWITCH_CPU),
            format!(
                "other_config:dpdk-extra=--no-pci --huge-dir {} --file-prefix ovs{}",
                huge.display(),
                std::process::id()
            ),
        ]))?;
        quiet(
            Command::new(OVS_VSWITCHD)
                .arg(format!("unix:{}", d.join("db.sock").display()))
                .arg(format!("--pidfile={}", d.join("vswitchd.pid").display()))
                .arg(format!("--unixctl={}", d.join("vswitchd.ctl").display()))
                .arg(format!("--log-file={}", d.join("vswitchd.log").display()))
                .arg("--detach"),
        )?;
        ovs.pids.push(pid_in(&d.join("vswitchd.pid"))?);
        // Without --no-wait, ovs-vsctl returns once vswitchd has applied the
        // change, so the sockets exist afterwards.
        quiet(
            Command::new("ovs-vsctl")
                .arg(&db)
                .args(["add-br", "br0", "--", "set", "bridge", "br0"])
                .arg("datapath_type=netdev"),
        )?;
        for (i, sock) in ovs.sockets().iter().enumerate() {
            let name = sock.file_name().and_then(|n| n.to_str()).context("socket name")?.to_string();
            quiet(
                Command::new("ovs-vsctl")
                    .arg(&db)
                    .args(["add-port", "br0", &name, "--", "set", "Interface", &name])
                    .arg("type=dpdkvhostuser"),
            )
            .with_context(|| format!("adding vhost-user port {i}"))?;
        }
        Ok(ovs)
    }

    pub fn sockets(&self) -> [PathBuf; 2] {
        [self.run.path().join("vhu0"), self.run.path().join("vhu1")]
    }

    /// ovs-vswitchd, whose threads (PMD, handlers, revalidators) are the
    /// switch's CPU.
    pub fn pid(&self) -> Pid {
        self.pids[1]
    }
}

fn alive(pid: Pid) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
}

/// Stops a detached daemon (not our child, so it cannot be waited for).
fn stop(pid: Pid) {
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    if alive(pid) {
        let _ = kill(pid, Signal::SIGKILL);
    }
}

impl Drop for OvsDpdk {
    fn drop(&mut self) {
        for &pid in self.pids.iter().rev() {
            stop(pid);
        }
        let _ = fs::remove_dir_all(format!("/var/run/dpdk/ovs{}", std::process::id()));
    }
}

/// A switch of ours as the vhost-user backend of the loopback: `vswitch`
/// itself, or `vswitch-floor` (vswitch's vhost-user port code with no
/// switching logic, the floor of the path).
pub struct VhostBackend {
    dir: tempfile::TempDir,
    child: Child,
}

impl VhostBackend {
    pub fn start(kind: Kind, poll_us: u64) -> Result<VhostBackend> {
        let dir = tempfile::Builder::new().prefix("vswitch-bench-vhost").tempdir()?;
        let program = match kind {
            Kind::Vswitch => "vswitch",
            Kind::Floor => "vswitch-floor",
            _ => bail!("{} has no vhost-user ports of ours", kind.name()),
        };
        let mut cmd = Command::new(std::env::current_exe()?.with_file_name(program));
        if kind == Kind::Vswitch {
            cmd.args(["--nostdin", "-s"]).arg(dir.path().join("ctl"));
        }
        let sockets = [dir.path().join("vhu0"), dir.path().join("vhu1")];
        for sock in &sockets {
            cmd.arg("--vhost-user").arg(sock);
        }
        // vswitch has no poll window: in its event loop polling lost (see
        // docs/vhost-user.md).
        if kind == Kind::Floor {
            cmd.arg("--vhost-user-poll-us").arg(poll_us.to_string());
        }
        let child =
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).spawn().with_context(|| format!("starting {program}"))?;
        let backend = VhostBackend { dir, child };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !sockets.iter().all(|s| s.exists()) {
            if Instant::now() > deadline {
                bail!("{program} did not come up");
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(backend)
    }

    pub fn sockets(&self) -> [PathBuf; 2] {
        [self.dir.path().join("vhu0"), self.dir.path().join("vhu1")]
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }
}

impl Drop for VhostBackend {
    fn drop(&mut self) {
        let _ = kill(self.pid(), Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// The process CPU time of `pid`, all threads.
pub fn cpu_time(pid: Pid) -> Duration {
    nix::time::clock_getcpuclockid(pid).and_then(nix::time::clock_gettime).map_or(Duration::ZERO, Duration::from)
}

const PROMPT: &str = "testpmd> ";

/// testpmd in interactive mode, driven through its console.
struct Testpmd {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    prefix: String,
}

impl Testpmd {
    fn start(huge: &Path, sockets: &[PathBuf; 2]) -> Result<Testpmd> {
        let prefix = format!("vswbench{}", std::process::id());
        // testpmd flushes its console output only when it exits; line
        // buffering lets each command's answer be read as it comes.
        let mut cmd = Command::new("stdbuf");
        cmd.args([
            "-oL",
            TESTPMD,
            "-l",
            &format!("{SWITCH_CPU},{TESTPMD_CPU}"),
            "--main-lcore",
            &SWITCH_CPU.to_string(),
        ])
        .args(["--no-pci", "--single-file-segments", "-m", "256", "--file-prefix", &prefix])
        .arg("--huge-dir")
        .arg(huge);
        for (i, sock) in sockets.iter().enumerate() {
            cmd.arg("--vdev").arg(format!(
                "net_virtio_user{i},path={},queues=1,queue_size={RING},mac={}",
                sock.display(),
                MACS[i]
            ));
        }
        cmd.args(["--", "-i", "--total-num-mbufs=16384", "--forward-mode=mac", "--nb-cores=1"])
            .arg(format!("--rxd={RING}"))
            .arg(format!("--txd={RING}"))
            .arg(format!("--eth-peer=0,{}", MACS[1]))
            .arg(format!("--eth-peer=1,{}", MACS[0]));
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting dpdk-testpmd")?;
        let stdin = child.stdin.take().context("testpmd stdin")?;
        let stdout = child.stdout.take().context("testpmd stdout")?;
        let (tx, lines) = channel();
        // The prompt has no newline and a command's output ends with the
        // next one, so lines are cut at newlines and after prompts.
        thread::spawn(move || {
            let mut stdout = stdout;
            let mut pending = String::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut chunk) {
                pending.push_str(&String::from_utf8_lossy(&chunk[..n]));
                while let Some(end) =
                    [pending.find('\n').map(|i| i + 1), pending.find(PROMPT).map(|i| i + PROMPT.len())]
                        .into_iter()
                        .flatten()
                        .min()
                {
                    let line: String = pending.drain(..end).collect();
                    if tx.send(line.trim_end().to_string()).is_err() {
                        return;
                    }
                }
            }
        });
        let mut pmd = Testpmd { child, stdin, lines, prefix };
        pmd.until_prompt(Duration::from_secs(30)).context("testpmd did not come up")?;
        Ok(pmd)
    }

    /// Lines up to the next prompt.
    fn until_prompt(&mut self, timeout: Duration) -> Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.ends_with(PROMPT.trim_end()) => return Ok(seen),
                Ok(line) => seen.push(line),
                Err(RecvTimeoutError::Timeout) => bail!("no testpmd prompt within {timeout:?}: {:?}", seen.last()),
                Err(RecvTimeoutError::Disconnected) => bail!("testpmd exited: {:?}", seen.last()),
            }
        }
    }

    fn command(&mut self, line: &str) -> Result<Vec<String>> {
        while self.lines.try_recv().is_ok() {}
        writeln!(self.stdin, "{line}")?;
        self.until_prompt(Duration::from_secs(10)).with_context(|| format!("testpmd command {line}"))
    }

    /// Frames received on both ports so far.
    fn received(&mut self) -> Result<u64> {
        while self.lines.try_recv().is_ok() {}
        writeln!(self.stdin, "show port stats all")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut counts = Vec::new();
        while counts.len() < 2 {
            let line = self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .context("testpmd port statistics")?;
            if let Some(rest) = line.trim_start().strip_prefix("RX-packets:") {
                counts.push(
                    rest.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).context("RX-packets count")?,
                );
            }
        }
        Ok(counts.iter().sum())
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(format!("/var/run/dpdk/{}", self.prefix));
    }
}

/// Settling time after the first frames, before anything is counted.
const WARM_UP: Duration = Duration::from_secs(1);
/// Times `tx_first` is tried before the loop is declared dead.
const START_ATTEMPTS: usize = 5;
/// How long the attached but silent switch is watched for its idle CPU.
const IDLE: Duration = Duration::from_secs(1);

/// Runs the loopback through the switch whose vhost-user sockets are
/// `sockets` and whose CPU is `pid`'s: idle CPU with both frontends
/// attached and silent, then frames/s and CPU per frame over `duration`.
pub fn loopback(huge: &Path, sockets: &[PathBuf; 2], pid: Pid, duration: Duration, bursts: u32) -> Result<Measurement> {
    pin(pid, SWITCH_CPU);
    let mut pmd = Testpmd::start(huge, sockets)?;
    let (idle_from, idle_at) = (cpu_time(pid), Instant::now());
    thread::sleep(IDLE);
    let idle_cpu_pct = 100.0 * (cpu_time(pid) - idle_from).as_secs_f64() / idle_at.elapsed().as_secs_f64();
    // A switch that brings its port up a moment after the frontend
    // attached loses the first bursts, and lost frames never come back
    // into the loop: start again until frames circulate.
    let mut frames_from = 0;
    for _ in 0..START_ATTEMPTS {
        pmd.command(&format!("start tx_first {bursts}"))?;
        thread::sleep(WARM_UP);
        let before = pmd.received()?;
        thread::sleep(Duration::from_millis(100));
        frames_from = pmd.received()?;
        if frames_from > before {
            break;
        }
        pmd.command("stop")?;
    }
    let (cpu_from, at) = (cpu_time(pid), Instant::now());
    thread::sleep(duration);
    let (frames, cpu, seconds) = (pmd.received()? - frames_from, cpu_time(pid) - cpu_from, at.elapsed().as_secs_f64());
    pmd.command("stop")?;
    if frames == 0 {
        bail!("no frames came back through the switch");
    }
    Ok(Measurement {
        frames_per_s: frames as f64 / seconds,
        cpu_ns_per_frame: cpu.as_nanos() as f64 / frames as f64,
        idle_cpu_pct,
        ..Measurement::default()
    })
}
