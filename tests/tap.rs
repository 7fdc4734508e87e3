//! Tap interfaces (`-t NAME`, spec §9.3, checklist item 70): the switch
//! creates the interface, attaches it on an automatic port as module
//! `tuntap`, and carries frames between it and VDE clients.
//!
//! Every switch runs in a network namespace of its own (`unshare --net`),
//! so the tests create, configure and delete interfaces without touching
//! the host's network, and run in parallel with the same interface names.
//! Only link-local 169.254.0.0/16 addresses are used, inside those
//! namespaces. The tests need root and `/dev/net/tun`; without them each
//! test says why and passes without running.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, Uid};
use tempfile::TempDir;
use vswitch::client::Client;

const VSWITCH: &str = env!("CARGO_BIN_EXE_vswitch");
const VDE_SWITCH: &str = "vde_switch";
/// Bound on every wait: start-up, replies, frames, state changes.
const TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);
const PROMPT: &str = "\nvde$ ";

/// The tap's address, given to the interface inside the namespace.
const TAP_IP: [u8; 4] = [169, 254, 77, 1];
/// The VDE client's address and MAC (locally administered).
const CLIENT_IP: [u8; 4] = [169, 254, 77, 2];
const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x77, 0x00, 0x02];

/// Whether tap interfaces can be created in a private namespace here;
/// prints why not.
fn can_run() -> bool {
    if !Uid::effective().is_root() {
        eprintln!("skipping: tap tests need root");
        return false;
    }
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/net/tun") {
        eprintln!("skipping: cannot open /dev/net/tun: {e}");
        return false;
    }
    match Command::new("unshare").args(["--net", "--", "true"]).status() {
        Ok(s) if s.success() => true,
        other => {
            eprintln!("skipping: cannot create a network namespace (unshare --net): {other:?}");
            false
        }
    }
}

fn on_path(program: &str) -> bool {
    Command::new(program).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// A switch running in the foreground in its own network namespace, with
/// its control directory, management socket and log in a temporary
/// directory. Dropping it kills the switch, then removes the directory.
struct NetnsSwitch {
    child: Child,
    dir: TempDir,
}

impl NetnsSwitch {
    /// Starts `program -s DIR/sw -M DIR/sw.mgmt ARGS`. `unshare` executes
    /// the switch in place, so the child's pid is the switch's.
    fn start(program: &str, args: &[&str]) -> NetnsSwitch {
        Self::start_in(tempfile::tempdir().expect("temporary directory"), program, args)
    }

    fn start_in(dir: TempDir, program: &str, args: &[&str]) -> NetnsSwitch {
        let log = File::create(dir.path().join("log")).expect("log file");
        let child = Command::new("unshare")
            .args(["--net", "--", program, "-s"])
            .arg(dir.path().join("sw"))
            .arg("-M")
            .arg(dir.path().join("sw.mgmt"))
            .args(args)
            // An open stdin keeps the foreground switch running.
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn unshare");
        let mut sw = NetnsSwitch { child, dir };
        let deadline = Instant::now() + TIMEOUT;
        while UnixStream::connect(sw.mgmt_path()).is_err() {
            if let Ok(Some(status)) = sw.child.try_wait() {
                panic!("{program} exited during start-up ({status}); log:\n{}", sw.log());
            }
            assert!(Instant::now() < deadline, "{program} did not open its management socket; log:\n{}", sw.log());
            thread::sleep(POLL);
        }
        sw
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn ctl_dir(&self) -> PathBuf {
        self.dir.path().join("sw")
    }

    fn mgmt_path(&self) -> PathBuf {
        self.dir.path().join("sw.mgmt")
    }

    /// What the switch logged on stderr so far.
    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Runs `cmd ARGS` inside the switch's network namespace.
    fn in_netns(&self, cmd: &str, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", self.pid()))
            .arg("--")
            .arg(cmd)
            .args(args)
            .output()
            .expect("run nsenter")
    }

    /// Runs `ip ARGS` inside the namespace and insists that it succeeds.
    fn ip(&self, args: &[&str]) {
        let out = self.in_netns("ip", args);
        assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }

    fn has_interface(&self, name: &str) -> bool {
        self.in_netns("ip", &["link", "show", "dev", name]).status.success()
    }

    /// Gives the tap the address 169.254.77.1/16 and brings it up.
    fn configure_tap(&self, name: &str) {
        self.ip(&["addr", "add", "169.254.77.1/16", "dev", name]);
        self.ip(&["link", "set", name, "up"]);
    }

    /// One console command through the management socket: its reply,
    /// without the prompt.
    fn command(&self, command: &str) -> String {
        let mut session = UnixStream::connect(self.mgmt_path()).expect("connect to the management socket");
        session.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
        read_until_prompt(&mut session);
        session.write_all(format!("{command}\n").as_bytes()).expect("send command");
        read_until_prompt(&mut session)
    }

    /// Polls `port/print` until `done` holds for it; returns that output.
    fn wait_for_ports(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let ports = self.command("port/print");
            if done(&ports) {
                return ports;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; port/print:\n{ports}");
            thread::sleep(POLL);
        }
    }

    /// CPU time the switch has used, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("read /proc/PID/stat");
        // Fields after the command name, which is in parentheses: state is
        // the first, utime the 12th, stime the 13th.
        let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
    }

    /// Stops the switch with SIGTERM and returns how it exited.
    fn stop(&mut self) -> ExitStatus {
        kill(self.pid(), Signal::SIGTERM).expect("send SIGTERM");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the switch") {
                return status;
            }
            assert!(Instant::now() < deadline, "switch did not stop on SIGTERM");
            thread::sleep(POLL);
        }
    }
}

impl Drop for NetnsSwitch {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = kill(self.pid(), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Reads a management session up to the next prompt; returns what came
/// before it.
fn read_until_prompt(session: &mut UnixStream) -> String {
    let mut text = Vec::new();
    let mut chunk = [0u8; 4096];
    while !text.ends_with(PROMPT.as_bytes()) {
        match session.read(&mut chunk) {
            Ok(0) => panic!("session closed before the prompt; got {:?}", String::from_utf8_lossy(&text)),
            Ok(n) => text.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("no prompt ({e}); got {:?}", String::from_utf8_lossy(&text)),
        }
    }
    text.truncate(text.len() - PROMPT.len());
    String::from_utf8(text).expect("console output is text")
}

/// The block `port/print` shows for `port`, header line included.
fn port_block(ports: &str, port: u32) -> Option<String> {
    let header = format!("Port {port:04} ");
    let start = ports.find(&header)?;
    let block = &ports[start..];
    let end = block[1..].find("\nPort ").map_or(block.len(), |i| i + 2);
    let end = block[..end].find("\n.\n").map_or(end, |i| i + 1);
    Some(block[..end].to_string())
}

/// The endpoint ID of the first endpoint line of a port block, as a number
/// for `port/epclose` (the listing pads it with zeros, which `%i` would
/// read as octal).
fn endpoint_id(block: &str) -> u32 {
    let line = block.lines().find(|l| l.contains("-- endpoint ID")).expect("an endpoint line");
    line.split_whitespace().nth(3).and_then(|id| id.parse().ok()).expect("numeric endpoint ID")
}

fn ping(sw: &NetnsSwitch, size: usize) {
    // The destination never answers: only the request matters.
    sw.in_netns("ping", &["-c", "1", "-W", "1", "-s", &size.to_string(), "169.254.77.2"]);
}

/// An ARP who-has `target` from the client, as a broadcast.
fn arp_request(target: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&[0x08, 0x06]); // ARP
    f.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4]); // Ethernet, IPv4
    f.extend_from_slice(&[0x00, 0x01]); // request
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&CLIENT_IP);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f.resize(60, 0);
    f
}

/// An ARP reply to the client saying where `ip` is.
fn is_arp_reply_from(frame: &[u8], ip: [u8; 4]) -> bool {
    frame.len() >= 42
        && frame[..6] == CLIENT_MAC
        && frame[12..14] == [0x08, 0x06]
        && frame[20..22] == [0x00, 0x02]
        && frame[28..32] == ip
        && frame[32..38] == CLIENT_MAC
}

/// An ICMP echo request to the client, of `ip_len` bytes after the
/// Ethernet header.
fn is_ping_to_client(frame: &[u8], ip_len: usize) -> bool {
    frame.len() == 14 + ip_len
        && frame[..6] == CLIENT_MAC
        && frame[12..14] == [0x08, 0x00]
        && frame[23] == 1
        && frame[30..34] == CLIENT_IP
        && frame[34] == 8
}

/// Receives frames on `client` until one satisfies `wanted` or `wait`
/// passes, sending `prod` (if any) every half second meanwhile.
fn receive(client: &Client, wait: Duration, prod: Option<&[u8]>, wanted: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let data = client.data();
    data.set_read_timeout(Some(POLL)).expect("read timeout");
    let deadline = Instant::now() + wait;
    let mut next_prod = Instant::now();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Some(frame) = prod
            && Instant::now() >= next_prod
        {
            data.send(frame).expect("send frame");
            next_prod = Instant::now() + Duration::from_millis(500);
        }
        if let Ok(n) = data.recv(&mut buf)
            && wanted(&buf[..n])
        {
            return Some(buf[..n].to_vec());
        }
    }
    None
}

#[test]
fn tap_answers_arp_through_the_switch() {
    if !can_run() {
        return;
    }
    let sw = NetnsSwitch::start(VSWITCH, &["-t", "vst0"]);
    assert!(sw.has_interface("vst0"), "the tap interface exists in the switch's namespace");
    sw.configure_tap("vst0");
    let client = Client::connect(&sw.ctl_dir(), 0, "tap test").expect("attach a client");
    let who_has = arp_request(TAP_IP);
    let reply = receive(&client, TIMEOUT, Some(&who_has), |f| is_arp_reply_from(f, TAP_IP));
    assert!(reply.is_some(), "no ARP reply from the kernel through the tap; log:\n{}", sw.log());

    let ports = sw.command("port/print");
    let tap = port_block(&ports, 1).unwrap_or_else(|| panic!("port 1 is listed:\n{ports}"));
    assert!(tap.starts_with("Port 0001 untagged_vlan=0000 ACTIVE - Unnamed Allocatable\n"), "{tap}");
    assert!(tap.contains("\n Current User: NONE Access Control: (User: NONE - Group: NONE)\n"), "{tap}");
    assert!(tap.contains(" module tuntap      : vst0\n"), "{tap}");
    let client_port = port_block(&ports, 2).unwrap_or_else(|| panic!("the client is on port 2:\n{ports}"));
    assert!(client_port.contains(" module unix prog   : tap test"), "{client_port}");
}

#[test]
fn oversized_frames_from_the_tap_are_dropped_and_counted() {
    if !can_run() {
        return;
    }
    let sw = NetnsSwitch::start(VSWITCH, &["-t", "vst0"]);
    sw.configure_tap("vst0");
    // Frames up to 4000 bytes leave the interface: one that fits the
    // switch's receive buffer but not a frame, one that fits neither.
    sw.ip(&["link", "set", "vst0", "mtu", "4000"]);
    sw.ip(&["neigh", "replace", "169.254.77.2", "lladdr", "02:00:5e:77:00:02", "dev", "vst0", "nud", "permanent"]);
    let client = Client::connect(&sw.ctl_dir(), 0, "tap test").expect("attach a client");
    for size in [1600, 3000] {
        ping(&sw, size);
    }
    // A normal frame, sent last, arrives; the large ones before it do not.
    ping(&sw, 56);
    let received = receive(&client, TIMEOUT, None, |f| is_ping_to_client(f, 84) || f.len() > 1518);
    let received = received.unwrap_or_else(|| panic!("the small ping did not arrive; log:\n{}", sw.log()));
    assert_eq!(received.len(), 98, "the oversized pings were not forwarded");
    let drops = sw.command("port/drops 1");
    assert!(drops.contains("Port 0001 runt=0 oversize=2 "), "{drops}");
}

#[test]
fn epclose_removes_the_interface_and_exit_cleans_up() {
    if !can_run() {
        return;
    }
    let mut sw = NetnsSwitch::start(VSWITCH, &["-t", "vst0"]);
    let ports = sw.command("port/print");
    let id = endpoint_id(&port_block(&ports, 1).expect("port 1 is listed"));
    assert!(sw.command(&format!("port/epclose 1 {id}")).ends_with("1000 Success\n"));
    assert!(!sw.has_interface("vst0"), "closing the endpoint closes the tap, which removes the interface");
    sw.wait_for_ports("port 1 to go inactive", |p| port_block(p, 1).is_none());
    // A client now gets the free port 1, as in vde_switch.
    let client = Client::connect(&sw.ctl_dir(), 0, "after").expect("attach a client");
    let ports = sw.command("port/print");
    assert!(port_block(&ports, 1).is_some_and(|b| b.contains(": after")), "{ports}");
    drop(client);
    let status = sw.stop();
    assert!(status.success(), "{status}; log:\n{}", sw.log());
    assert!(!sw.ctl_dir().exists(), "the control directory is removed at exit; log:\n{}", sw.log());
}

#[test]
fn a_deleted_interface_detaches_its_endpoint() {
    if !can_run() {
        return;
    }
    let sw = NetnsSwitch::start(VSWITCH, &["-t", "vst0", "-t", "vst1"]);
    sw.ip(&["link", "del", "vst0"]);
    let ports = sw.wait_for_ports("port 1 to go inactive", |p| port_block(p, 1).is_none());
    assert!(port_block(&ports, 2).is_some_and(|b| b.contains(": vst1")), "the other tap stays: {ports}");
    assert!(sw.log().contains("Closing tap interface vst0: "), "log:\n{}", sw.log());
    // The dead descriptor is gone, not polled in a busy loop.
    let before = sw.cpu_ticks();
    thread::sleep(Duration::from_secs(1));
    let used = sw.cpu_ticks() - before;
    assert!(used < 30, "the switch used {used} ticks of CPU in an idle second");
}

#[test]
fn unusable_taps_are_logged_and_skipped() {
    if !can_run() {
        return;
    }
    let too_long = "vst-name-too-long";
    let sw = NetnsSwitch::start(VSWITCH, &["-t", "vst0", "-t", "vst0", "-t", too_long, "-t", "vst2"]);
    let log = sw.log();
    assert!(log.contains("ERROR OPENING tap interface: vst0\n"), "the second vst0 is busy; log:\n{log}");
    assert!(log.contains(&format!("ERROR OPENING tap interface: {too_long}\n")), "log:\n{log}");
    let ports = sw.command("port/print");
    assert!(port_block(&ports, 1).is_some_and(|b| b.contains(": vst0\n")), "{ports}");
    assert!(port_block(&ports, 2).is_some_and(|b| b.contains(": vst2\n")), "{ports}");
    assert!(port_block(&ports, 3).is_none(), "{ports}");
    assert!(sw.has_interface("vst2"));
}

#[test]
fn taps_are_attached_before_the_rc_file_runs() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let rc = dir.path().join("rc");
    fs::write(&rc, "vlan/create 10\nport/setvlan 1 10\n").expect("write rc file");
    let rc = rc.to_str().expect("UTF-8 path").to_string();
    let sw = NetnsSwitch::start_in(dir, VSWITCH, &["-t", "vst0", "-f", &rc]);
    let ports = sw.command("port/print");
    assert!(ports.contains("Port 0001 untagged_vlan=0010 ACTIVE"), "{ports}\nlog:\n{}", sw.log());
}

/// `port/print` with the endpoint IDs (descriptor numbers) masked.
fn masked_port_print(sw: &NetnsSwitch) -> String {
    let ports = sw.command("port/print");
    ports
        .lines()
        .map(|l| match l.find("endpoint ID ") {
            Some(i) => format!("{}ID ####{}", &l[..i + 9], &l[i + 16..]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn port_print_of_a_tap_matches_vde_switch() {
    if !can_run() {
        return;
    }
    if !on_path(VDE_SWITCH) {
        eprintln!("skipping: {VDE_SWITCH} is not installed");
        return;
    }
    let ours = NetnsSwitch::start(VSWITCH, &["-t", "vst0", "-t", "vst1"]);
    let reference = NetnsSwitch::start(VDE_SWITCH, &["-t", "vst0", "-t", "vst1"]);
    let expected = masked_port_print(&reference);
    assert!(expected.contains("  -- endpoint ID #### module tuntap      : vst1"), "{expected}");
    assert_eq!(masked_port_print(&ours), expected);
}

#[test]
fn listing_helpers_find_blocks_and_ids() {
    let line = "  -- endpoint ID 0010 module tuntap      : vst0";
    let listing = format!("0000 DATA END WITH '.'\nPort 0001 a\n{line}\nPort 0002 b\n.\n1000 Success\n");
    assert_eq!(port_block(&listing, 1), Some(format!("Port 0001 a\n{line}\n")));
    assert_eq!(port_block(&listing, 2).as_deref(), Some("Port 0002 b\n"));
    assert_eq!(port_block(&listing, 3), None);
    assert_eq!(endpoint_id(&listing), 10);
}
