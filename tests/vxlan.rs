//! VXLAN ports (`--vxlan SPEC`, issue 13) against real peers: the Linux
//! kernel's `vxlan` device and a second vswitch, in unicast (`remote=`) and
//! multicast (`group=`) mode.
//!
//! Each test builds two network namespaces joined by a veth pair (names
//! carry the pid and a counter, so concurrent runs do not collide), with
//! link-local 169.254/16 addresses only. Each side's stack reaches the
//! VXLAN through an interface (a vswitch tap or the kernel's vxlan device)
//! and pings the other side. Namespaces are deleted (which removes their
//! interfaces) and switches killed on drop, also when a test fails. The
//! tests need root and `ip netns`; without them each says why and passes
//! without running.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::unistd::Uid;
use tempfile::TempDir;

const VSWITCH: &str = env!("CARGO_BIN_EXE_vswitch");
const TIMEOUT: Duration = Duration::from_secs(10);
const GROUP: &str = "239.1.1.42";

static NEXT: AtomicU32 = AtomicU32::new(0);

fn can_run() -> bool {
    if !Uid::effective().is_root() {
        eprintln!("skipping: VXLAN tests need root for network namespaces");
        return false;
    }
    let probe = format!("vxprobe{}", std::process::id());
    let ok = Command::new("ip").args(["netns", "add", &probe]).status().is_ok_and(|s| s.success());
    if ok {
        let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    } else {
        eprintln!("skipping: cannot create a network namespace (ip netns add)");
    }
    ok
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("run command");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Two namespaces joined by a veth pair: `a` at 169.254.0.1, `b` at
/// 169.254.0.2, with multicast routed over the veth.
struct Lab {
    a: String,
    b: String,
    veth_a: String,
    veth_b: String,
    switches: Vec<Child>,
    dirs: Vec<TempDir>,
}

impl Lab {
    fn new() -> Lab {
        let n = format!("{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let lab = Lab {
            a: format!("vxa{n}"),
            b: format!("vxb{n}"),
            veth_a: format!("va{n}"),
            veth_b: format!("vb{n}"),
            switches: Vec::new(),
            dirs: Vec::new(),
        };
        run(&["ip", "netns", "add", &lab.a]);
        run(&["ip", "netns", "add", &lab.b]);
        run(&["ip", "link", "add", &lab.veth_a, "netns", &lab.a, "type", "veth", "peer", "name", &lab.veth_b, "netns", &lab.b]);
        for (ns, dev, ip) in [(&lab.a, &lab.veth_a, "169.254.0.1/24"), (&lab.b, &lab.veth_b, "169.254.0.2/24")] {
            lab.ip(ns, &["addr", "add", ip, "dev", dev]);
            lab.ip(ns, &["link", "set", dev, "up"]);
            lab.ip(ns, &["link", "set", "lo", "up"]);
            lab.ip(ns, &["route", "add", "224.0.0.0/4", "dev", dev]);
        }
        lab
    }

    fn ip(&self, ns: &str, args: &[&str]) {
        let mut full = vec!["ip", "-n", ns];
        full.extend_from_slice(args);
        run(&full);
    }

    /// Starts a vswitch in `ns` with tap `tap` and `args`; gives the tap
    /// `addr`. Returns the management socket.
    fn vswitch(&mut self, ns: &str, tap: &str, addr: &str, args: &[&str]) -> PathBuf {
        let dir = TempDir::new().expect("temp dir");
        let mgmt = dir.path().join("mgmt");
        let child = Command::new("ip")
            .args(["netns", "exec", ns, VSWITCH, "-s"])
            .arg(dir.path().join("ctl"))
            .arg("-M")
            .arg(&mgmt)
            .args(["-t", tap])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vswitch");
        self.switches.push(child);
        self.dirs.push(dir);
        let deadline = Instant::now() + TIMEOUT;
        while !mgmt.exists() {
            assert!(Instant::now() < deadline, "vswitch in {ns} did not start");
            thread::sleep(Duration::from_millis(20));
        }
        self.ip(ns, &["addr", "add", addr, "dev", tap]);
        self.ip(ns, &["link", "set", tap, "up"]);
        mgmt
    }

    /// The kernel's vxlan device in `ns`, with `addr`.
    fn kernel_vxlan(&self, ns: &str, dev: &str, vni: u32, peer: &[&str], addr: &str) {
        let name = format!("k{}", &dev[2..]);
        let vni = vni.to_string();
        let mut args = vec!["link", "add", &name, "type", "vxlan", "id", &vni, "dstport", "4789", "dev", dev];
        args.extend_from_slice(peer);
        self.ip(ns, &args);
        self.ip(ns, &["addr", "add", addr, "dev", &name]);
        self.ip(ns, &["link", "set", &name, "up"]);
    }

    /// Pings `to` from `ns` until it answers (bounded).
    fn ping(&self, ns: &str, to: &str) -> bool {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            let out = Command::new("ip").args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1", to]).output();
            if out.is_ok_and(|o| o.status.success()) {
                return true;
            }
        }
        false
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.switches {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn vswitch_and_kernel_vxlan_unicast() {
    if !can_run() {
        return;
    }
    let mut lab = Lab::new();
    let (a, b, vb) = (lab.a.clone(), lab.b.clone(), lab.veth_b.clone());
    lab.vswitch(&a, &format!("t{}", &lab.veth_a[2..]), "169.254.100.1/24", &["--vxlan", "id=42,remote=169.254.0.2"]);
    lab.kernel_vxlan(&b, &vb, 42, &["remote", "169.254.0.1"], "169.254.100.2/24");
    assert!(lab.ping(&a, "169.254.100.2"), "vswitch's side reaches the kernel's vxlan");
    assert!(lab.ping(&b, "169.254.100.1"), "the kernel's vxlan reaches vswitch's side");
}

#[test]
fn vswitch_and_kernel_vxlan_multicast() {
    if !can_run() {
        return;
    }
    let mut lab = Lab::new();
    let (a, b, va, vb) = (lab.a.clone(), lab.b.clone(), lab.veth_a.clone(), lab.veth_b.clone());
    let spec = format!("id=7,group={GROUP},dev={va}");
    lab.vswitch(&a, &format!("t{}", &va[2..]), "169.254.100.1/24", &["--vxlan", &spec]);
    lab.kernel_vxlan(&b, &vb, 7, &["group", GROUP], "169.254.100.2/24");
    assert!(lab.ping(&a, "169.254.100.2"));
    assert!(lab.ping(&b, "169.254.100.1"));
}

#[test]
fn a_wrong_vni_does_not_cross() {
    if !can_run() {
        return;
    }
    let mut lab = Lab::new();
    let (a, b, vb) = (lab.a.clone(), lab.b.clone(), lab.veth_b.clone());
    lab.vswitch(&a, &format!("t{}", &lab.veth_a[2..]), "169.254.100.1/24", &["--vxlan", "id=42,remote=169.254.0.2"]);
    lab.kernel_vxlan(&b, &vb, 43, &["remote", "169.254.0.1"], "169.254.100.2/24");
    let out = Command::new("ip")
        .args(["netns", "exec", &b, "ping", "-c", "2", "-W", "1", "169.254.100.1"])
        .output()
        .expect("ping");
    assert!(!out.status.success(), "frames of VNI 43 must not reach a VNI 42 port");
}

#[test]
fn two_vswitches_unicast_and_multicast() {
    if !can_run() {
        return;
    }
    for multicast in [false, true] {
        let mut lab = Lab::new();
        let (a, b, va, vb) = (lab.a.clone(), lab.b.clone(), lab.veth_a.clone(), lab.veth_b.clone());
        let (spec_a, spec_b) = if multicast {
            (format!("id=9,group={GROUP},dev={va}"), format!("id=9,group={GROUP},dev={vb}"))
        } else {
            ("id=9,remote=169.254.0.2".to_string(), "id=9,remote=169.254.0.1".to_string())
        };
        lab.vswitch(&a, &format!("t{}", &va[2..]), "169.254.100.1/24", &["--vxlan", &spec_a]);
        lab.vswitch(&b, &format!("t{}", &vb[2..]), "169.254.100.2/24", &["--vxlan", &spec_b]);
        assert!(lab.ping(&a, "169.254.100.2"), "multicast={multicast}");
        assert!(lab.ping(&b, "169.254.100.1"), "multicast={multicast}");
    }
}
