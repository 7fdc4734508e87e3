//! The VXLAN workload: two switches in two network namespaces joined by a
//! veth pair, one sender on the first and one receiver on the second,
//! 64-byte frames end to end over a multicast VXLAN. Either the switches
//! have VXLAN ports (`--vxlan`), or each is joined to the VXLAN as users do
//! without them: `dpipe vde_plug DIR = vde_plug vxlan://GROUP/…`.
//!
//! The receiver never speaks, so its frames are unknown unicast on both
//! paths and go to the group: vdeplug4 4.0.1 cannot send to the endpoints
//! it learns (it records no sender address), so that is the only traffic
//! it carries. Needs root; link-local addresses in namespaces of its own.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::load::{self, Traffic};
use crate::target::{Extras, Fanout, Kind, Switch};

const GROUP: &str = "239.1.1.77";
const VNI: &str = "77";

/// Two namespaces and a veth pair, removed on drop.
struct Lab {
    ns: [String; 2],
    veth: [String; 2],
}

fn ip(args: &[&str]) -> Result<()> {
    let status = Command::new("ip").args(args).stderr(Stdio::null()).status().context("running ip")?;
    if !status.success() {
        bail!("ip {} failed (the VXLAN workload needs root)", args.join(" "));
    }
    Ok(())
}

impl Lab {
    fn new() -> Result<Lab> {
        let id = std::process::id();
        let lab = Lab {
            ns: [format!("vbench{id}a"), format!("vbench{id}b")],
            veth: [format!("vba{id}"), format!("vbb{id}")],
        };
        for ns in &lab.ns {
            ip(&["netns", "add", ns])?;
        }
        let [a, b] = &lab.ns;
        let [va, vb] = &lab.veth;
        ip(&["link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b])?;
        for (i, (ns, dev)) in lab.ns.iter().zip(&lab.veth).enumerate() {
            let addr = format!("169.254.0.{}/24", i + 1);
            ip(&["-n", ns, "addr", "add", &addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "route", "add", "224.0.0.0/4", "dev", dev])?;
        }
        Ok(lab)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A `dpipe` in a namespace, killed on drop with the plugs it started.
struct Dpipe(Child);

impl Drop for Dpipe {
    fn drop(&mut self) {
        for pid in children(self.0.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGTERM);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Processes whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

fn cpu_of(pid: u32) -> Duration {
    nix::time::clock_getcpuclockid(nix::unistd::Pid::from_raw(pid as i32))
        .and_then(nix::time::clock_gettime)
        .map_or(Duration::ZERO, Duration::from)
}

/// One run of `kind` (vswitch's VXLAN ports, or vde_plug's): what reached
/// the receiver, and the CPU time of every process on the path (switches
/// and plugs).
pub fn run(kind: Kind, duration: Duration) -> Result<(Traffic, Duration)> {
    let lab = Lab::new()?;
    let mut switches = Vec::new();
    let mut plugs = Vec::new();
    for (ns, dev) in lab.ns.iter().zip(&lab.veth) {
        let extra = match kind {
            Kind::Vswitch => vec!["--vxlan".to_string(), format!("id={VNI},group={GROUP},dev={dev}")],
            _ => Vec::new(),
        };
        let sw = Switch::start_in(kind, 8, Fanout::Pair, None, Extras::default(), Some(ns), &extra)?;
        if kind == Kind::VdePlugVxlan {
            let dir = sw.ctl_dir();
            let url = format!("vxlan://{GROUP}/vni={VNI}/if={dev}");
            let child = Command::new("ip")
                .args(["netns", "exec", ns, "dpipe", "vde_plug"])
                .arg(&dir)
                .args(["=", "vde_plug", &url])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting dpipe vde_plug")?;
            plugs.push(Dpipe(child));
        }
        switches.push(sw);
    }
    // Both plugs attach and join the group before traffic starts.
    std::thread::sleep(Duration::from_millis(300));
    let mut pids: Vec<u32> = switches.iter().map(|s| s.pid().as_raw() as u32).collect();
    pids.extend(plugs.iter().flat_map(|p| children(p.0.id())));
    let base: Duration = pids.iter().map(|&p| cpu_of(p)).sum();
    let traffic = load::one_way(&switches[0].ctl_dir(), &switches[1].ctl_dir(), 64, duration)?;
    let cpu = pids.iter().map(|&p| cpu_of(p)).sum::<Duration>().saturating_sub(base);
    drop(plugs);
    drop(switches);
    drop(lab);
    Ok((traffic, cpu))
}
