//! The switches under test: started fresh for every run, measured through
//! /proc, stopped and cleaned up on drop.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Kind {
    Vswitch,
    VdeSwitch,
    Floor,
    /// Two vswitches joined as users do without VXLAN ports: `dpipe
    /// vde_plug DIR = vde_plug vxlan://…` on each side.
    VdePlugVxlan,
    /// The floor on a tokio current-thread runtime.
    TokioFloor,
    /// Open vSwitch with DPDK, the vhost-user loopback's reference.
    OvsDpdk,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Vswitch => "vswitch",
            Kind::VdeSwitch => "vde_switch",
            Kind::Floor => "floor",
            Kind::VdePlugVxlan => "vde_plug vxlan",
            Kind::TokioFloor => "tokio floor",
            Kind::OvsDpdk => "ovs-dpdk",
        }
    }
}

/// With `--pin`, the switch under test runs on this CPU and the load
/// generator on the other, so neither steals the other's time slices.
pub const SWITCH_CPU: usize = 0;
pub const LOAD_CPU: usize = 1;

/// Binds `pid` (0: the calling thread) to one CPU, when the machine has it.
pub fn pin(pid: Pid, cpu: usize) {
    use nix::sched::{CpuSet, sched_setaffinity};
    let mut set = CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = sched_setaffinity(pid, &set);
    }
}

/// How the floor forwarder fans frames out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fanout {
    Pair,
    All,
}

pub struct Switch {
    pid: Pid,
    /// The floor runs in the foreground; the switches daemonise.
    child: Option<Child>,
    dir: tempfile::TempDir,
}

fn sibling(name: &str) -> Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name(name))
}

/// The switches this benchmark starts, next to its own executable.
const SIBLINGS: [&str; 2] = ["vswitch", "vswitch-floor"];

/// Makes sure vswitch and vswitch-floor are next to this executable.
/// `cargo run --bin vswitch-bench` builds this binary only; cargo tells the
/// program it runs where it came from, so the others are built the same
/// way (same profile and target directory) before anything starts.
pub fn find_binaries() -> Result<()> {
    let missing = || -> Result<Vec<PathBuf>> {
        Ok(SIBLINGS
            .iter()
            .map(|name| sibling(name))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .filter(|p| !p.exists())
            .collect())
    };
    if missing()?.is_empty() {
        return Ok(());
    }
    if let (Some(cargo), Some(manifest)) = (std::env::var_os("CARGO"), std::env::var_os("CARGO_MANIFEST_DIR")) {
        let exe = std::env::current_exe()?;
        let profile = exe.parent().and_then(|d| d.file_name()).and_then(|n| n.to_str()).unwrap_or("debug");
        let mut build = Command::new(cargo);
        build.arg("build").arg("--bins").arg("--manifest-path").arg(PathBuf::from(manifest).join("Cargo.toml"));
        if profile != "debug" {
            build.args(["--profile", profile]);
        }
        eprintln!("vswitch-bench: building vswitch and vswitch-floor ({profile})");
        let status = build.status().context("running cargo build")?;
        if !status.success() {
            bail!("cargo build --bins failed ({status})");
        }
    }
    match missing()?.first() {
        None => Ok(()),
        Some(path) => bail!("{} not found; run `cargo build --release --bins` first", path.display()),
    }
}

/// What a vswitch target runs besides switching.
#[derive(Debug, Default, Clone, Copy)]
pub struct Extras {
    pub capture: bool,
    pub qemu: bool,
    /// `--mtu`, for vswitch and the floor (vde_switch has no such option).
    pub mtu: Option<u32>,
}

impl Switch {
    /// Starts a fresh `kind`, bound to `cpu` if given, with vswitch's
    /// `extras`: a capturing vswitch writes every port's frames to a file in
    /// its directory from the start (an rc file's `capture/start 0`); with
    /// `qemu` it also serves `--stream` and `--dgram` sockets (see
    /// [`Switch::stream_path`]); `mtu` is passed on as `--mtu`.
    pub fn start(kind: Kind, numports: u32, fanout: Fanout, cpu: Option<usize>, extras: Extras) -> Result<Switch> {
        Switch::start_in(kind, numports, fanout, cpu, extras, None, &[])
    }

    /// Like `start`, in network namespace `netns` if given, with `extra`
    /// arguments for a vswitch or vde_switch.
    pub fn start_in(
        kind: Kind,
        numports: u32,
        fanout: Fanout,
        cpu: Option<usize>,
        extras: Extras,
        netns: Option<&str>,
        extra: &[String],
    ) -> Result<Switch> {
        let dir = tempfile::tempdir()?;
        let sw = dir.path().join("sw");
        let pidfile = dir.path().join("sw.pid");
        let ports = numports.to_string();
        let mtu: Vec<String> = extras.mtu.map(|m| vec!["--mtu".into(), m.to_string()]).unwrap_or_default();
        let mut child = None;
        match kind {
            Kind::Floor | Kind::TokioFloor => {
                let mode = if fanout == Fanout::Pair { "pair" } else { "all" };
                let runtime = if kind == Kind::Floor { "epoll" } else { "tokio" };
                let c = Command::new(sibling("vswitch-floor")?)
                    .arg(&sw)
                    .args(["--fanout", mode, "--runtime", runtime])
                    .args(&mtu)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()
                    .context("starting vswitch-floor")?;
                fs::write(&pidfile, c.id().to_string())?;
                child = Some(c);
            }
            Kind::OvsDpdk => bail!("Open vSwitch is only started for the vhost-user loopback"),
            Kind::Vswitch | Kind::VdeSwitch | Kind::VdePlugVxlan => {
                let program = if kind == Kind::VdeSwitch { PathBuf::from("vde_switch") } else { sibling("vswitch")? };
                let mut command = match netns {
                    Some(ns) => {
                        let mut c = Command::new("ip");
                        c.args(["netns", "exec", ns]).arg(&program);
                        c
                    }
                    None => Command::new(&program),
                };
                if extras.capture {
                    let rc = dir.path().join("capture.rc");
                    fs::write(&rc, format!("capture/start 0 {}\n", dir.path().join("all.pcapng").display()))?;
                    command.arg("-f").arg(rc);
                }
                if extras.qemu {
                    command.arg("--stream").arg(dir.path().join("q.stream"));
                    command.arg("--dgram").arg(dir.path().join("q.dgram"));
                }
                let status = command
                    .arg("-s")
                    .arg(&sw)
                    .arg("-p")
                    .arg(&pidfile)
                    .args(["-n", &ports, "-d"])
                    .args(extra)
                    .args(&mtu)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .with_context(|| format!("starting {}", program.display()))?;
                if !status.success() {
                    bail!("{} exited with {status}", kind.name());
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(text) = fs::read_to_string(&pidfile)
                && let Ok(pid) = text.trim().parse::<i32>()
                && std::os::unix::net::UnixStream::connect(sw.join("ctl")).is_ok()
            {
                let pid = Pid::from_raw(pid);
                if let Some(cpu) = cpu {
                    pin(pid, cpu);
                }
                return Ok(Switch { pid, child, dir });
            }
            if Instant::now() > deadline {
                bail!("{} did not come up", kind.name());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn ctl_dir(&self) -> PathBuf {
        self.dir.path().join("sw")
    }

    pub fn stream_path(&self) -> PathBuf {
        self.dir.path().join("q.stream")
    }

    pub fn dgram_path(&self) -> PathBuf {
        self.dir.path().join("q.dgram")
    }

    /// User plus system CPU time used so far, to the nanosecond: the tick
    /// counts in /proc/PID/stat are too coarse for a run of a few thousand
    /// frames.
    pub fn cpu_time(&self) -> Duration {
        nix::time::clock_getcpuclockid(self.pid)
            .and_then(nix::time::clock_gettime)
            .map_or(Duration::ZERO, Duration::from)
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Resident set size in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

/// Whether `pid` still runs (a zombie left by a non-reaping parent does not).
fn running(pid: Pid) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
}

impl Drop for Switch {
    fn drop(&mut self) {
        let _ = kill(self.pid, Signal::SIGTERM);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while running(self.pid) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        if running(self.pid) {
            let _ = kill(self.pid, Signal::SIGKILL);
        }
    }
}
