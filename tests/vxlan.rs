//! VXLAN ports (`--vxlan SPEC`, issue 13) against real peers: the Linux
//! kernel's `vxlan` device, vdeplug4's `vxlan://` and a second vswitch, in
//! unicast (`remote=`) and multicast (`group=`) mode; tags carried, a
//! wrong VNI counted and dropped, a station moving between endpoints.
//!
//! Each test builds two network namespaces joined by a veth pair (names
//! carry the pid and a counter, so concurrent runs do not collide), with
//! link-local 169.254/16 addresses only. Each side's stack reaches the
//! VXLAN through an interface (a vswitch tap or the kernel's vxlan device)
//! and pings the other side. Namespaces are deleted (which removes their
//! interfaces) and switches killed on drop, also when a test fails. The
//! tests need root and `ip netns`; without them each says why and passes
//! without running.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::uml::{self, Eth0, GuestSpec};
use common::{Client, Mgmt, Station, Target, assert_silent, frame, station_mac};
use nix::unistd::Uid;
use tempfile::TempDir;

const VSWITCH: &str = env!("CARGO_BIN_EXE_vswitch");
const TIMEOUT: Duration = Duration::from_secs(10);
const GROUP: &str = "239.1.1.42";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Whether namespaces can be made here, probed once per test process:
/// tests run in parallel, and probes of the same name would collide.
fn can_run() -> bool {
    static CAN_RUN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAN_RUN.get_or_init(|| {
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
    })
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("run command");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Two namespaces joined by a veth pair: `a` at 169.254.1.1, `b` at
/// 169.254.1.2, with multicast routed over the veth.
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
        run(&[
            "ip",
            "link",
            "add",
            &lab.veth_a,
            "netns",
            &lab.a,
            "type",
            "veth",
            "peer",
            "name",
            &lab.veth_b,
            "netns",
            &lab.b,
        ]);
        for (ns, dev, ip) in [(&lab.a, &lab.veth_a, "169.254.1.1/24"), (&lab.b, &lab.veth_b, "169.254.1.2/24")] {
            lab.ip(ns, &["addr", "add", ip, "dev", dev]);
            lab.ip(ns, &["link", "set", dev, "up"]);
            lab.ip(ns, &["link", "set", "lo", "up"]);
            lab.ip(ns, &["route", "add", "224.0.0.0/4", "dev", dev]);
        }
        lab
    }

    /// A new lab, or none (the test then passes without running) where
    /// namespaces cannot be made.
    fn if_possible() -> Option<Lab> {
        can_run().then(Lab::new)
    }

    fn ip(&self, ns: &str, args: &[&str]) {
        let mut full = vec!["ip", "-n", ns];
        full.extend_from_slice(args);
        run(&full);
    }

    /// Starts a vswitch in `ns` with `args`, and a tap `(name, address)`
    /// if given.
    fn vswitch(&mut self, ns: &str, tap: Option<(&str, &str)>, args: &[&str]) -> Sw {
        let dir = TempDir::new().expect("temp dir");
        let sw = Sw { ctl: dir.path().join("ctl"), mgmt: dir.path().join("mgmt") };
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns, VSWITCH, "-s"]).arg(&sw.ctl).arg("-M").arg(&sw.mgmt);
        if let Some((name, _)) = tap {
            command.args(["-t", name]);
        }
        let child = command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start vswitch");
        self.switches.push(child);
        self.dirs.push(dir);
        let deadline = Instant::now() + TIMEOUT;
        while !sw.mgmt.exists() {
            assert!(Instant::now() < deadline, "vswitch in {ns} did not start");
            thread::sleep(Duration::from_millis(20));
        }
        if let Some((name, addr)) = tap {
            self.ip(ns, &["addr", "add", addr, "dev", name]);
            self.ip(ns, &["link", "set", name, "up"]);
        }
        sw
    }

    /// A process in `ns` that dies with the lab.
    fn spawn(&mut self, ns: &str, args: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start process");
        self.switches.push(child);
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

    /// The ULA addresses fd00:7a::1 (in `a`) and fd00:7a::2 (in `b`) on the
    /// veth pair, for an IPv6 underlay.
    fn add_ula(&self) {
        self.ip(&self.a, &["addr", "add", "fd00:7a::1/64", "dev", &self.veth_a, "nodad"]);
        self.ip(&self.b, &["addr", "add", "fd00:7a::2/64", "dev", &self.veth_b, "nodad"]);
    }

    /// The `--vxlan` specs of VNI `vni` for `a` and `b`: each other as
    /// remote, or both in `GROUP` over their veth.
    fn specs(&self, vni: u32, multicast: bool) -> (String, String) {
        if multicast {
            (
                format!("id={vni},group={GROUP},dev={}", self.veth_a),
                format!("id={vni},group={GROUP},dev={}", self.veth_b),
            )
        } else {
            (format!("id={vni},remote=169.254.1.2"), format!("id={vni},remote=169.254.1.1"))
        }
    }

    /// A vswitch in each namespace (`args_a`, `args_b`) with a client on
    /// each, after stations 1 (at `a`) and 2 (at `b`) have exchanged frames,
    /// so both switches know where each is.
    fn joined_switches(&mut self, args_a: &[&str], args_b: &[&str]) -> (Sw, Sw, Client, Client) {
        let (a, b) = (self.a.clone(), self.b.clone());
        let sw_a = self.vswitch(&a, None, args_a);
        let sw_b = self.vswitch(&b, None, args_b);
        let ca = Client::connect(&sw_a.ctl, None, "a");
        let cb = Client::connect(&sw_b.ctl, None, "b");
        common::station::exchange(&ca, station_mac(1), &cb, station_mac(2));
        (sw_a, sw_b, ca, cb)
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

/// A switch's sockets.
struct Sw {
    ctl: PathBuf,
    mgmt: PathBuf,
}

impl Sw {
    fn cmd(&self, line: &str) -> String {
        Mgmt::connect(&self.mgmt).cmd_ok(line)
    }

    /// The counter `name=` on the `vxlan/print` line that starts with
    /// `prefix`.
    fn counter(&self, prefix: &str, name: &str) -> u64 {
        let print = self.cmd("vxlan/print");
        let line = print.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("{prefix} in {print}"));
        let value = line.split(' ').find_map(|w| w.strip_prefix(name)).unwrap_or_else(|| panic!("{name} in {line}"));
        value.split('/').next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{name} in {line}"))
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
    let Some(mut lab) = Lab::if_possible() else { return };
    let (a, b, vb) = (lab.a.clone(), lab.b.clone(), lab.veth_b.clone());
    let tap = format!("t{}", &lab.veth_a[2..]);
    let sw = lab.vswitch(&a, Some((&tap, "169.254.100.1/24")), &["--vxlan", "id=42,remote=169.254.1.2"]);
    lab.kernel_vxlan(&b, &vb, 42, &["remote", "169.254.1.1"], "169.254.100.2/24");
    assert!(lab.ping(&a, "169.254.100.2"), "vswitch's side reaches the kernel's vxlan");
    assert!(lab.ping(&b, "169.254.100.1"), "the kernel's vxlan reaches vswitch's side");
    assert!(sw.cmd("port/print").contains("module vxlan       : id=42,remote=169.254.1.2\n"));
    assert!(sw.counter(" -- remote 169.254.1.2", "in=") > 0);
    assert!(sw.counter(" -- remote 169.254.1.2", "out=") > 0);
    assert_eq!(sw.counter(" -- remote 169.254.1.2", "stations="), 1, "the kernel device's MAC");
}

#[test]
fn vswitch_and_kernel_vxlan_multicast() {
    let Some(mut lab) = Lab::if_possible() else { return };
    let (a, b, va, vb) = (lab.a.clone(), lab.b.clone(), lab.veth_a.clone(), lab.veth_b.clone());
    let spec = format!("id=7,group={GROUP},dev={va}");
    let tap = format!("t{}", &va[2..]);
    lab.vswitch(&a, Some((&tap, "169.254.100.1/24")), &["--vxlan", &spec]);
    lab.kernel_vxlan(&b, &vb, 7, &["group", GROUP], "169.254.100.2/24");
    assert!(lab.ping(&a, "169.254.100.2"));
    assert!(lab.ping(&b, "169.254.100.1"));
}

#[test]
fn a_wrong_vni_does_not_cross() {
    let Some(mut lab) = Lab::if_possible() else { return };
    let (a, b, vb) = (lab.a.clone(), lab.b.clone(), lab.veth_b.clone());
    let tap = format!("t{}", &lab.veth_a[2..]);
    let sw = lab.vswitch(&a, Some((&tap, "169.254.100.1/24")), &["--vxlan", "id=42,remote=169.254.1.2"]);
    lab.kernel_vxlan(&b, &vb, 43, &["remote", "169.254.1.1"], "169.254.100.2/24");
    let out = Command::new("ip")
        .args(["netns", "exec", &b, "ping", "-c", "2", "-W", "1", "169.254.100.1"])
        .output()
        .expect("ping");
    assert!(!out.status.success(), "frames of VNI 43 must not reach a VNI 42 port");
    assert!(sw.counter("Port 0002 vxlan", "wrong-vni=") >= 2, "each ARP request is counted");
    assert_eq!(sw.counter(" -- remote 169.254.1.2", "in="), 0);
}

#[test]
fn two_vswitches_unicast_and_multicast() {
    if !can_run() {
        return;
    }
    for multicast in [false, true] {
        let mut lab = Lab::new();
        let (a, b, va, vb) = (lab.a.clone(), lab.b.clone(), lab.veth_a.clone(), lab.veth_b.clone());
        let (spec_a, spec_b) = lab.specs(9, multicast);
        let (tap_a, tap_b) = (format!("t{}", &va[2..]), format!("t{}", &vb[2..]));
        lab.vswitch(&a, Some((&tap_a, "169.254.100.1/24")), &["--vxlan", &spec_a]);
        lab.vswitch(&b, Some((&tap_b, "169.254.100.2/24")), &["--vxlan", &spec_b]);
        assert!(lab.ping(&a, "169.254.100.2"), "multicast={multicast}");
        assert!(lab.ping(&b, "169.254.100.1"), "multicast={multicast}");
    }
}

/// vdeplug4's `vxlan://` (as users join a VXLAN today): frames cross both
/// ways. vdeplug4 4.0.1 cannot send unicast to the endpoints it learns
/// (its receive passes no room for the sender's address, so the learned
/// entry has none and `sendmsg` fails with EDESTADDRREQ): only what it
/// floods to the group reaches us, and the test checks broadcasts from it.
#[test]
fn vswitch_and_vdeplug4() {
    let Some(mut lab) = Lab::if_possible() else { return };
    let (a, b, va, vb) = (lab.a.clone(), lab.b.clone(), lab.veth_a.clone(), lab.veth_b.clone());
    let spec = format!("id=5,group={GROUP},dev={va}");
    let sw_a = lab.vswitch(&a, None, &["--vxlan", &spec]);
    let sw_b = lab.vswitch(&b, None, &[]);
    let ctl_b = sw_b.ctl.to_str().expect("utf-8 path").to_string();
    let url = format!("vxlan://{GROUP}/vni=5/if={vb}");
    lab.spawn(&b, &["dpipe", "vde_plug", &ctl_b, "=", "vde_plug", &url]);
    let deadline = Instant::now() + TIMEOUT;
    while !sw_b.cmd("port/print").contains("endpoint ID") {
        assert!(Instant::now() < deadline, "vde_plug did not attach");
        thread::sleep(Duration::from_millis(50));
    }
    let ca = Client::connect(&sw_a.ctl, None, "a");
    let cb = Client::connect(&sw_b.ctl, None, "b");
    let (ma, mb) = (station_mac(1), station_mac(2));
    let from_b = frame(common::BROADCAST, mb, common::TEST_ETHERTYPE, 46);
    cb.send(&from_b);
    ca.expect_frame(&from_b);
    let from_a = frame(common::BROADCAST, ma, common::TEST_ETHERTYPE, 46);
    ca.send(&from_a);
    cb.expect_frame(&from_a);
    let unicast = frame(mb, ma, common::TEST_ETHERTYPE, 46);
    ca.send(&unicast);
    cb.expect_frame(&unicast);
    assert_eq!(sw_a.counter(" -- learned 169.254.1.2", "stations="), 1, "b learned behind vdeplug4's endpoint");
}

/// Two vswitches with VLAN 5 tagged on their VXLAN port: a tagged frame
/// crosses with its tag, and one of a VLAN the far side's client is not
/// in does not reach it.
#[test]
fn a_tagged_frame_crosses_with_its_tag() {
    let Some(mut lab) = Lab::if_possible() else { return };
    let (a, b) = (lab.a.clone(), lab.b.clone());
    let sw_a = lab.vswitch(&a, None, &["--vxlan", "id=3,remote=169.254.1.2"]);
    let sw_b = lab.vswitch(&b, None, &["--vxlan", "id=3,remote=169.254.1.1"]);
    let ca = Client::connect(&sw_a.ctl, Some(2), "a");
    let cb = Client::connect(&sw_b.ctl, Some(2), "b");
    for sw in [&sw_a, &sw_b] {
        sw.cmd("vlan/create 5");
        sw.cmd("vlan/addport 5 1");
        sw.cmd("vlan/addport 5 2");
    }
    let mut tagged = frame(common::BROADCAST, station_mac(1), 0x8100, 50);
    tagged[14..18].copy_from_slice(&[0x00, 0x05, 0x88, 0xb5]);
    ca.send(&tagged);
    cb.expect_frame(&tagged);
    let mut other = tagged.clone();
    other[15] = 6;
    ca.send(&other);
    assert_silent(&[&cb]);
}

/// A station heard behind one endpoint, then behind another: the VXLAN
/// port moves it, and unicast to it follows.
#[test]
fn a_station_moves_between_endpoints() {
    let Some(mut lab) = Lab::if_possible() else { return };
    let (a, b, vb) = (lab.a.clone(), lab.b.clone(), lab.veth_b.clone());
    lab.ip(&b, &["addr", "add", "169.254.1.3/24", "dev", &vb]);
    let sw_a = lab.vswitch(&a, None, &["--vxlan", "id=8,remote=169.254.1.2,remote=169.254.1.3"]);
    let sw_b2 = lab.vswitch(&b, None, &["--vxlan", "id=8,local=169.254.1.2,remote=169.254.1.1"]);
    let sw_b3 = lab.vswitch(&b, None, &["--vxlan", "id=8,local=169.254.1.3,remote=169.254.1.1"]);
    let ca = Client::connect(&sw_a.ctl, None, "a");
    let (ma, mover) = (station_mac(1), station_mac(9));
    let hello = frame(common::BROADCAST, mover, common::TEST_ETHERTYPE, 46);
    {
        let at2 = Client::connect(&sw_b2.ctl, None, "mover at .2");
        at2.send(&hello);
        ca.expect_frame(&hello);
        assert_eq!(sw_a.counter(" -- remote 169.254.1.2", "stations="), 1);
        let to_mover = frame(mover, ma, common::TEST_ETHERTYPE, 46);
        ca.send(&to_mover);
        at2.expect_frame(&to_mover);
    }
    let at3 = Client::connect(&sw_b3.ctl, None, "mover at .3");
    let hello = frame(common::BROADCAST, mover, common::TEST_ETHERTYPE, 46);
    at3.send(&hello);
    ca.expect_frame(&hello);
    assert_eq!(sw_a.counter(" -- remote 169.254.1.2", "stations="), 0);
    assert_eq!(sw_a.counter(" -- remote 169.254.1.3", "stations="), 1);
    let to_mover = frame(mover, ma, common::TEST_ETHERTYPE, 46);
    ca.send(&to_mover);
    at3.expect_frame(&to_mover);
    let before = sw_a.counter(" -- remote 169.254.1.2", "out=");
    let again = frame(mover, ma, common::TEST_ETHERTYPE, 46);
    ca.send(&again);
    at3.expect_frame(&again);
    assert_eq!(sw_a.counter(" -- remote 169.254.1.2", "out="), before, "known unicast goes to one endpoint");
}

/// An IPv6 underlay (ULA addresses), and a frame too large for the
/// underlay's MTU: dropped and counted as too-large on its endpoint, while
/// the largest that fits crosses.
#[test]
fn ipv6_underlay_and_too_large_frames() {
    let Some(mut lab) = Lab::if_possible() else { return };
    lab.add_ula();
    let (sw_a, _sw_b, ca, cb) =
        lab.joined_switches(&["--vxlan", "id=11,remote=fd00:7a::2"], &["--vxlan", "id=11,remote=fd00:7a::1"]);
    // 1500 bytes of veth MTU: 40 IPv6 + 8 UDP + 8 VXLAN leave 1444.
    let fits = frame(station_mac(2), station_mac(1), common::TEST_ETHERTYPE, 1444 - 14);
    ca.send(&fits);
    cb.expect_frame(&fits);
    let too_large = frame(station_mac(2), station_mac(1), common::TEST_ETHERTYPE, 1445 - 14);
    ca.send(&too_large);
    assert_silent(&[&cb]);
    assert_eq!(sw_a.counter(" -- remote fd00:7a::2", "too-large="), 1);
}

/// Jumbo frames (`--mtu 9000`) over an underlay with room for them: the
/// receive buffers hold the longest frame behind its VXLAN header, so a
/// 9018-byte frame arrives whole both ways.
#[test]
fn jumbo_frames_cross_with_mtu_on_both_switches() {
    let Some(mut lab) = Lab::if_possible() else { return };
    let (a, b, va, vb) = (lab.a.clone(), lab.b.clone(), lab.veth_a.clone(), lab.veth_b.clone());
    // 9018 + 8 VXLAN + 8 UDP + 20 IPv4 (+ 14 outer Ethernet, not counted).
    lab.ip(&a, &["link", "set", &va, "mtu", "9100"]);
    lab.ip(&b, &["link", "set", &vb, "mtu", "9100"]);
    let (sw_a, _sw_b, ca, cb) = lab.joined_switches(
        &["--mtu", "9000", "--vxlan", "id=12,remote=169.254.1.2"],
        &["--mtu", "9000", "--vxlan", "id=12,remote=169.254.1.1"],
    );
    let jumbo = frame(station_mac(2), station_mac(1), common::TEST_ETHERTYPE, 9000 + 4);
    assert_eq!(jumbo.len(), 9018);
    ca.send(&jumbo);
    cb.expect_frame(&jumbo);
    let back = frame(station_mac(1), station_mac(2), common::TEST_ETHERTYPE, 9000 + 4);
    cb.send(&back);
    ca.expect_frame(&back);
    assert_eq!(sw_a.counter(" -- remote 169.254.1.2", "too-large="), 0);
}

/// A multicast VXLAN over an IPv6 underlay between two vswitches.
#[test]
fn ipv6_multicast_underlay() {
    let Some(mut lab) = Lab::if_possible() else { return };
    lab.add_ula();
    let spec_a = format!("id=12,group=ff05::1:42,dev={}", lab.veth_a);
    let spec_b = format!("id=12,group=ff05::1:42,dev={}", lab.veth_b);
    let (sw_a, _sw_b, _ca, _cb) = lab.joined_switches(&["--vxlan", &spec_a], &["--vxlan", &spec_b]);
    assert_eq!(sw_a.counter(" -- learned fd00:7a::2", "stations="), 1);
}

/// UML guests on two vswitches in two namespaces ping across the VXLAN,
/// in unicast and in multicast mode. (Guests use 169.254.0.0/24; the
/// underlay 169.254.1.0/24, which the guests never see.)
#[test]
fn uml_guests_ping_across() {
    if !can_run() {
        return;
    }
    const A: [GuestSpec; 1] = [GuestSpec::new(11, Eth0::Vde { port: None }, &[12])];
    const B: [GuestSpec; 1] = [GuestSpec::new(12, Eth0::Vde { port: None }, &[11])];
    for multicast in [false, true] {
        let mut lab = Lab::new();
        let (a, b) = (lab.a.clone(), lab.b.clone());
        let (spec_a, spec_b) = lab.specs(4, multicast);
        let sw_a = lab.vswitch(&a, None, &["--vxlan", &spec_a]);
        let sw_b = lab.vswitch(&b, None, &["--vxlan", &spec_b]);
        // Neither side's guests power off before both have pinged.
        let (done_a, wait_a) = mpsc::channel();
        let (done_b, wait_b) = mpsc::channel();
        let (ctl_a, ctl_b) = (&sw_a.ctl, &sw_b.ctl);
        thread::scope(|s| {
            let left = s.spawn(move || guests_on(ctl_a, &A, done_a, wait_b));
            guests_on(ctl_b, &B, done_b, wait_a);
            left.join().expect("guests on the first switch");
        });
        // Senders of a group are learned; configured remotes are listed as such.
        let behind = if multicast { " -- learned 169.254.1.2" } else { " -- remote 169.254.1.2" };
        assert_eq!(sw_a.counter(behind, "stations="), 1, "multicast={multicast}: guest 12 learned behind b");
    }
}

/// Runs `specs` on the switch at `ctl`; holds them (bounded) until the
/// guests of the other switch have their results too.
fn guests_on(ctl: &Path, specs: &[GuestSpec], done: mpsc::Sender<()>, other: mpsc::Receiver<()>) {
    let out = uml::run_guests(Target::Vswitch, ctl, specs, || {
        let _ = done.send(());
        let _ = other.recv_timeout(Duration::from_secs(90));
    });
    drop(done);
    out.assert_results(specs);
}

/// The kernel's vxlan device in a namespace and a UML guest on vswitch in
/// another: the namespace's stack and the guest ping each other.
#[test]
fn uml_guest_and_kernel_vxlan_ping_each_other() {
    if !can_run() {
        return;
    }
    const GUEST: [GuestSpec; 1] = [GuestSpec::new(21, Eth0::Vde { port: None }, &[22])];
    let mut lab = Lab::new();
    let (a, b, vb) = (lab.a.clone(), lab.b.clone(), lab.veth_b.clone());
    let sw = lab.vswitch(&a, None, &["--vxlan", "id=6,remote=169.254.1.2"]);
    lab.kernel_vxlan(&b, &vb, 6, &["remote", "169.254.1.1"], "169.254.0.22/24");
    let out = uml::run_guests(Target::Vswitch, &sw.ctl, &GUEST, || lab.ping(&b, &uml::ip(21)));
    out.assert_results(&GUEST);
    assert_eq!(out.inspected, Some(true), "the namespace's stack pings the guest");
}

/// Two VNIs on one switch share the UDP port (one socket, demultiplexed by
/// VNI), each reaching its own kernel vxlan device; `vxlan/del` closes one
/// and the other keeps working.
#[test]
fn two_vnis_share_one_udp_port() {
    let Some(mut lab) = Lab::if_possible() else { return };
    let (a, b, va, vb) = (lab.a.clone(), lab.b.clone(), lab.veth_a.clone(), lab.veth_b.clone());
    let (tap1, tap2) = (format!("t{}", &va[2..]), format!("u{}", &va[2..]));
    let sw = lab.vswitch(&a, Some((&tap1, "169.254.41.1/24")), &["-t", &tap2]);
    lab.ip(&a, &["addr", "add", "169.254.42.1/24", "dev", &tap2]);
    lab.ip(&a, &["link", "set", &tap2, "up"]);
    // tap1 on port 1 (VLAN 0) with VNI 41 on port 3; tap2 on port 2 and
    // VNI 42 on port 4 in VLAN 10: two separate segments.
    assert!(sw.cmd("vxlan/add id=41,remote=169.254.1.2").contains("Port 0003"));
    assert!(sw.cmd("vxlan/add id=42,remote=169.254.1.2").contains("Port 0004"));
    assert!(Mgmt::connect(&sw.mgmt).cmd("vxlan/add id=42,remote=169.254.1.2").contains("VNI 42 already has a port"));
    sw.cmd("vlan/create 10");
    sw.cmd("port/setvlan 2 10");
    sw.cmd("port/setvlan 4 10");
    for (vni, addr) in [("41", "169.254.41.2/24"), ("42", "169.254.42.2/24")] {
        let dev = format!("k{vni}{}", &vb[2..]);
        lab.ip(
            &b,
            &["link", "add", &dev, "type", "vxlan", "id", vni, "remote", "169.254.1.1", "dstport", "4789", "dev", &vb],
        );
        lab.ip(&b, &["addr", "add", addr, "dev", &dev]);
        lab.ip(&b, &["link", "set", &dev, "up"]);
    }
    assert!(lab.ping(&a, "169.254.41.2"), "VNI 41");
    assert!(lab.ping(&a, "169.254.42.2"), "VNI 42");
    assert!(sw.counter("Port 0003", "wrong-vni=") == 0);
    sw.cmd("vxlan/del 3");
    assert!(!sw.cmd("vxlan/print").contains("Port 0003"));
    assert!(lab.ping(&a, "169.254.42.2"), "VNI 42 after VNI 41 closed");
}
