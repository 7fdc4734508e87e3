//! `vswitch-bench`: measures vswitch against the reference `vde_switch`
//! side by side, with real VDE clients, in interleaved runs.
//!
//! Usage: `vswitch-bench [SECONDS_PER_RUN] [REPETITIONS]`

use std::fs;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use vswitch::client::Client;
use vswitch::net::sys::{BATCH, recv_batch, send_batch};

struct Target {
    name: &'static str,
    program: PathBuf,
}

/// A switch started for one run; stopped and cleaned up on drop.
struct RunningSwitch {
    pid: Pid,
    dir: tempfile::TempDir,
}

impl RunningSwitch {
    fn start(target: &Target) -> Result<RunningSwitch> {
        let dir = tempfile::tempdir()?;
        let sw = dir.path().join("sw");
        let pidfile = dir.path().join("sw.pid");
        let status = Command::new(&target.program)
            .arg("-s")
            .arg(&sw)
            .arg("-p")
            .arg(&pidfile)
            .arg("-d")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .with_context(|| format!("starting {}", target.program.display()))?;
        if !status.success() {
            bail!("{} exited with {status}", target.name);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(text) = fs::read_to_string(&pidfile)
                && let Ok(pid) = text.trim().parse::<i32>()
                && sw.join("ctl").exists()
            {
                return Ok(RunningSwitch { pid: Pid::from_raw(pid), dir });
            }
            if Instant::now() > deadline {
                bail!("{} did not come up", target.name);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn ctl_dir(&self) -> PathBuf {
        self.dir.path().join("sw")
    }

    /// User plus system CPU time the switch has used.
    fn cpu_time(&self) -> Duration {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        let after_name = stat.rsplit(')').next().unwrap_or("");
        let fields: Vec<u64> = after_name.split_whitespace().filter_map(|f| f.parse().ok()).collect();
        // utime and stime are fields 14 and 15 of the whole line.
        let ticks = fields.get(10).copied().unwrap_or(0) + fields.get(11).copied().unwrap_or(0);
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as u64;
        Duration::from_nanos(ticks * 1_000_000_000 / hz)
    }
}

impl Drop for RunningSwitch {
    fn drop(&mut self) {
        let _ = kill(self.pid, Signal::SIGTERM);
        for _ in 0..100 {
            if kill(self.pid, None).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = kill(self.pid, Signal::SIGKILL);
    }
}

fn frame(dst: u8, src: u8, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&[2, 0, 0, 0, 0, dst]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, src]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f
}

fn wait(fd: std::os::fd::BorrowedFd, flags: PollFlags) {
    let mut fds = [PollFd::new(fd, flags)];
    let _ = poll(&mut fds, PollTimeout::from(100u16));
}

struct Sample {
    sent: u64,
    received: u64,
    seconds: f64,
    cpu: Duration,
}

/// One sender blasting unicast frames at one receiver for `duration`.
fn unicast_pair(target: &Target, frame_len: usize, duration: Duration) -> Result<Sample> {
    let switch = RunningSwitch::start(target)?;
    let a = Client::connect(&switch.ctl_dir(), 0, "bench-a")?;
    let b = Client::connect(&switch.ctl_dir(), 0, "bench-b")?;
    // Teach the switch both stations so the stream is switched, not flooded.
    b.data().send(&frame(1, 2, 60))?;
    a.data().send(&frame(2, 1, 60))?;
    thread::sleep(Duration::from_millis(100));
    let mut scratch = vec![[0u8; 2048]; BATCH];
    let mut lens = [0usize; BATCH];
    while recv_batch(b.data().as_fd(), &mut scratch, &mut lens)? > 0 {}

    let stop = Arc::new(AtomicBool::new(false));
    let receiver = {
        let stop = stop.clone();
        thread::spawn(move || -> Result<u64> {
            let mut bufs = vec![[0u8; 2048]; BATCH];
            let mut lens = [0usize; BATCH];
            let mut received = 0u64;
            loop {
                let n = recv_batch(b.data().as_fd(), &mut bufs, &mut lens)?;
                received += n as u64;
                if n == 0 {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(received);
                    }
                    wait(b.data().as_fd(), PollFlags::POLLIN);
                }
            }
        })
    };
    let payload = frame(2, 1, frame_len);
    let batch: Vec<&[u8]> = vec![payload.as_slice(); BATCH];
    let cpu_before = switch.cpu_time();
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < duration {
        let (n, error) = send_batch(a.data().as_fd(), &batch);
        sent += n as u64;
        if error.is_some() {
            wait(a.data().as_fd(), PollFlags::POLLOUT);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    thread::sleep(Duration::from_millis(200));
    let cpu = switch.cpu_time().saturating_sub(cpu_before);
    stop.store(true, Ordering::Relaxed);
    let received = receiver.join().map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    Ok(Sample { sent, received, seconds, cpu })
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let seconds: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3.0);
    let reps: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3);
    let own = std::env::current_exe()?.with_file_name("vswitch");
    let targets =
        [Target { name: "vswitch", program: own }, Target { name: "vde_switch", program: PathBuf::from("vde_switch") }];
    let duration = Duration::from_secs_f64(seconds);
    println!("workload: one unicast pair, 64-byte frames; {reps} interleaved runs of {seconds} s");
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let mut loss: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    for _ in 0..reps {
        for (i, t) in targets.iter().enumerate() {
            let s = unicast_pair(t, 64, duration)?;
            rates[i].push(s.received as f64 / s.seconds);
            // Every frame sent reached the switch (the sender blocks rather than
            // drop), so CPU is shared over frames sent.
            cpu[i].push(s.cpu.as_nanos() as f64 / s.sent.max(1) as f64);
            loss[i].push(100.0 * (s.sent - s.received.min(s.sent)) as f64 / s.sent.max(1) as f64);
        }
    }
    println!("{:<12} {:>28} {:>22} {:>8}", "switch", "delivered frames/s (min-max)", "switch CPU ns/frame", "loss %");
    let mut medians = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let (r, lo, hi) = median(rates[i].clone());
        let (c, _, _) = median(cpu[i].clone());
        let (l, _, _) = median(loss[i].clone());
        medians.push((r, c));
        println!("{:<12} {:>12.0} ({:.0}-{:.0}) {:>22.0} {:>8.1}", t.name, r, lo, hi, c, l);
    }
    println!(
        "ratio vswitch/vde_switch: throughput {:.2}x, CPU per frame {:.2}x",
        medians[0].0 / medians[1].0,
        medians[0].1 / medians[1].1
    );
    Ok(())
}
