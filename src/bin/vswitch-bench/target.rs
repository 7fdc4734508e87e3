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
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Vswitch => "vswitch",
            Kind::VdeSwitch => "vde_switch",
            Kind::Floor => "floor",
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

impl Switch {
    /// Starts a fresh `kind` (with `--mtu` if given), bound to `cpu` if given.
    pub fn start(kind: Kind, numports: u32, mtu: Option<u32>, fanout: Fanout, cpu: Option<usize>) -> Result<Switch> {
        let dir = tempfile::tempdir()?;
        let sw = dir.path().join("sw");
        let pidfile = dir.path().join("sw.pid");
        let ports = numports.to_string();
        let mtu: Vec<String> = mtu.map(|m| vec!["--mtu".into(), m.to_string()]).unwrap_or_default();
        let mut child = None;
        match kind {
            Kind::Floor => {
                let mode = if fanout == Fanout::Pair { "pair" } else { "all" };
                let c = Command::new(sibling("vswitch-floor")?)
                    .arg(&sw)
                    .args(["--fanout", mode])
                    .args(&mtu)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()
                    .context("starting vswitch-floor")?;
                fs::write(&pidfile, c.id().to_string())?;
                child = Some(c);
            }
            Kind::Vswitch | Kind::VdeSwitch => {
                let program = if kind == Kind::Vswitch { sibling("vswitch")? } else { PathBuf::from("vde_switch") };
                let status = Command::new(&program)
                    .arg("-s")
                    .arg(&sw)
                    .arg("-p")
                    .arg(&pidfile)
                    .args(["-n", &ports, "-d"])
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

    /// User plus system CPU time used so far, to the nanosecond: the tick
    /// counts in /proc/PID/stat are too coarse for a run of a few thousand
    /// frames.
    pub fn cpu_time(&self) -> Duration {
        nix::time::clock_getcpuclockid(self.pid)
            .and_then(nix::time::clock_gettime)
            .map_or(Duration::ZERO, Duration::from)
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
