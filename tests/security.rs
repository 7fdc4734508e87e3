//! Security (issue 7): permissions and groups of the control directory and
//! its sockets, the identity of clients running as another user, port
//! ACLs, the switch never acting as a confused deputy for a client, and a
//! MAC table that random source addresses cannot grow without bound.
//!
//! Clients of another user are the raw client `helpers/raw_client.py` run
//! as `nobody:nogroup` (no supplementary groups) through `setpriv`. Where
//! vswitch deliberately differs from vde_switch 2.3.2 (spec §12: refusals
//! close the stream; ACLs and file access are checked with the peer's
//! kernel identity), the expected outcome is spelled out per target, so
//! the reference shows what the hardening prevents.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Group, Pid};

use common::client::{unique_socket_path, v3_request};
use common::station::exchange;
use common::*;
use vswitch::wire::{ClientAddr, Request, RequestKind, SOCKADDR_UN_LEN};

const NOBODY: u32 = 65534;
const RAW_CLIENT: &str = include_str!("helpers/raw_client.py");

// ----- helpers ---------------------------------------------------------------

fn gid_of(name: &str) -> u32 {
    Group::from_name(name).expect("read the group database").unwrap_or_else(|| panic!("no group {name:?}")).gid.as_raw()
}

/// Lets `nobody` reach the switch's private temporary directory (the
/// control directory's own mode then decides).
fn open_up(sw: &Switch) {
    fs::set_permissions(sw.dir(), fs::Permissions::from_mode(0o755)).expect("chmod the temporary directory");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn reply_path(reply: &[u8]) -> PathBuf {
    assert_eq!(reply.len(), SOCKADDR_UN_LEN, "handshake reply must be one sockaddr_un, got {reply:02x?}");
    let path = &reply[2..];
    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
    PathBuf::from(OsStr::from_bytes(&path[..end]))
}

/// A handshake whose control stream stays open (the endpoint lives as
/// long as the returned stream).
fn handshake_held(ctl_dir: &Path, request: &[u8]) -> (HandshakeOutcome, UnixStream) {
    let mut stream = UnixStream::connect(ctl_dir.join("ctl")).expect("connect to ctl");
    (send_request(&mut stream, request), stream)
}

/// How vswitch and vde_switch 2.3.2 answer a refused port request (§3.4, §12).
fn refusal(target: Target) -> Outcome {
    match target {
        Target::Vswitch => Outcome::Closed,
        Target::VdeSwitch => Outcome::NoReply,
    }
}

/// The same, as seen by a raw handshake.
fn raw_refusal(target: Target) -> HandshakeOutcome {
    match target {
        Target::Vswitch => HandshakeOutcome::Closed,
        Target::VdeSwitch => HandshakeOutcome::NoReply,
    }
}

/// A request from root (the test) for `port`, from a socket of its own in
/// the control directory.
fn root_request(ctl_dir: &Path, port: u32) -> HandshakeOutcome {
    let socket_path = unique_socket_path(ctl_dir);
    let socket = UnixDatagram::bind(&socket_path).expect("bind client socket");
    let outcome = raw_handshake(ctl_dir, &v3_request(RequestKind::NewControl, port, &socket_path, "root"));
    drop(socket);
    let _ = fs::remove_file(&socket_path);
    outcome
}

/// What the raw client reported about its handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Reply(PathBuf),
    Closed,
    NoReply,
}

/// `helpers/raw_client.py` running as nobody:nogroup without supplementary
/// groups. It prints its handshake outcome, then keeps both sockets open
/// and obeys `send`/`recv` commands until told to quit. Killed with its
/// process group on drop.
struct NobodyClient {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    outcome: Outcome,
}

impl NobodyClient {
    /// Runs the client with address `addr` (see the helper's usage) asking
    /// for `port` (0: any) and waits for its handshake outcome.
    fn start(ctl_dir: &Path, port: u32, descr: &str, addr: &str, options: &[&str]) -> NobodyClient {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--reset-env"])
            .args(["/usr/bin/python3", "-c", RAW_CLIENT])
            .arg(ctl_dir)
            .arg(port.to_string())
            .arg(descr)
            .arg(addr)
            .args(options)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0);
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        let mut client = NobodyClient { name: descr.to_owned(), child, stdin, lines, outcome: Outcome::Closed };
        let first = client.line("its handshake outcome");
        client.outcome = match first.split_once(' ') {
            Some(("REPLY", path)) => Outcome::Reply(PathBuf::from(path)),
            _ if first == "CLOSED" => Outcome::Closed,
            _ if first == "NOREPLY" => Outcome::NoReply,
            _ => panic!("{}: helper reported {first:?}", client.name),
        };
        client
    }

    /// The next line the helper printed. Its own waits are at most 3 s.
    fn line(&self, what: &str) -> String {
        self.lines
            .recv_timeout(EVENT_TIMEOUT * 2)
            .unwrap_or_else(|_| panic!("{}: no line with {what} from the helper", self.name))
    }

    /// The switch's data socket named in the reply; panics if refused.
    fn switch_socket(&self) -> &Path {
        match &self.outcome {
            Outcome::Reply(path) => path,
            other => panic!("{}: the switch refused the client: {other:?}", self.name),
        }
    }
}

impl Station for NobodyClient {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&self, frame: &[u8]) {
        // `Station` takes `&self`; the helper's stdin is written through a
        // shared reference (`&ChildStdin` implements `Write`).
        let mut stdin = self.stdin.as_ref().expect("helper running");
        writeln!(stdin, "send {}", hex(frame)).expect("write to the helper");
        let answer = self.line("the answer to send");
        assert_eq!(answer, "SENT", "{}: cannot send {}", self.name, describe(frame));
    }

    fn recv_timeout(&self, timeout: Duration) -> Option<Vec<u8>> {
        let mut stdin = self.stdin.as_ref().expect("helper running");
        writeln!(stdin, "recv {}", timeout.as_millis().clamp(1, 3000)).expect("write to the helper");
        let answer = self.line("the answer to recv");
        if answer == "TIMEOUT" {
            return None;
        }
        let data = answer.strip_prefix("FRAME ").unwrap_or_else(|| panic!("{}: helper said {answer:?}", self.name));
        Some((0..data.len()).step_by(2).map(|i| u8::from_str_radix(&data[i..i + 2], 16).expect("hex")).collect())
    }
}

impl Drop for NobodyClient {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

fn wait_port_inactive(mgmt: &mut Mgmt, port: u32) {
    wait_until(EVENT_TIMEOUT, &format!("port {port} to become inactive"), || {
        mgmt.port(port).filter(|p| !p.active && p.endpoints.is_empty())
    });
}

/// Descriptors vde_switch 2.3.2 keeps per refused request (the data socket
/// it created before checking the port); vswitch keeps none.
fn leaked_per_refusal(target: Target) -> usize {
    usize::from(target == Target::VdeSwitch)
}

// ----- modes and groups ------------------------------------------------------

/// Mode (with the set-gid bit) and group of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Access {
    mode: u32,
    gid: u32,
}

fn access_of(path: &Path) -> Access {
    let meta = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("stat {path:?}: {e}"));
    Access { mode: meta.mode() & 0o7777, gid: meta.gid() }
}

/// The access of `path` once it equals `expected`, or as it is after a
/// quiet period: vde_switch applies the management mode to a port-0 data
/// socket only after sending its reply.
fn settled_access_of(path: &Path, expected: Access) -> Access {
    let deadline = Instant::now() + QUIET_PERIOD;
    loop {
        let actual = access_of(path);
        if actual == expected || Instant::now() >= deadline {
            return actual;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// What spec §2.2 expects for one set of options.
struct ModeCase {
    args: &'static [&'static str],
    dir: (u32, &'static str),
    ctl: (u32, &'static str),
    /// A client whose socket file is owned by nobody: also chown'ed to nobody.
    path_client: (u32, &'static str),
    abstract_client: (u32, &'static str),
    port0_client: (u32, &'static str),
    mgmt: (u32, &'static str),
}

const MODE_CASES: &[ModeCase] = &[
    ModeCase {
        args: &[],
        dir: (0o2700, "root"),
        ctl: (0o600, "root"),
        path_client: (0o600, "root"),
        abstract_client: (0o600, "root"),
        port0_client: (0o600, "root"),
        mgmt: (0o600, "root"),
    },
    ModeCase {
        args: &["-m", "0660", "-g", "daemon", "--mgmtmode", "0640", "--mgmtgroup", "daemon"],
        dir: (0o2770, "daemon"),
        ctl: (0o660, "daemon"),
        path_client: (0o600, "daemon"),
        abstract_client: (0o660, "daemon"),
        port0_client: (0o640, "daemon"),
        mgmt: (0o640, "daemon"),
    },
    // Without the directory's set-gid bit, only explicit chgrps give group
    // daemon; a port-0 socket keeps the `-g` group (no --mgmtgroup given).
    ModeCase {
        args: &["--dirmode", "0750", "-g", "daemon"],
        dir: (0o750, "daemon"),
        ctl: (0o640, "daemon"),
        path_client: (0o600, "daemon"),
        abstract_client: (0o640, "daemon"),
        port0_client: (0o600, "daemon"),
        mgmt: (0o600, "root"),
    },
    ModeCase {
        args: &["-m", "0640", "--dirmode", "0755"],
        dir: (0o755, "root"),
        ctl: (0o640, "root"),
        path_client: (0o600, "root"),
        abstract_client: (0o640, "root"),
        port0_client: (0o600, "root"),
        mgmt: (0o600, "root"),
    },
    ModeCase {
        args: &["-m", "0666"],
        dir: (0o2777, "root"),
        ctl: (0o666, "root"),
        path_client: (0o600, "root"),
        abstract_client: (0o666, "root"),
        port0_client: (0o600, "root"),
        mgmt: (0o600, "root"),
    },
];

/// An abstract address spanning the whole path field, as UML binds it.
fn abstract_client(ctl_dir: &Path, kind: RequestKind) -> (UnixDatagram, (HandshakeOutcome, UnixStream)) {
    let mut field = [0u8; SOCKADDR_UN_LEN];
    field[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
    let name = unique_socket_path(Path::new("vswitch-security"));
    let name = name.as_os_str().as_bytes();
    field[3..3 + name.len()].copy_from_slice(name);
    let socket = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&field[3..]).expect("abstract name"))
        .expect("bind abstract client socket");
    let request = Request::encode_v3(kind, 0, &ClientAddr(field), b"abstract");
    (socket, handshake_held(ctl_dir, &request))
}

/// Modes and groups of the directory, `ctl`, data sockets of path,
/// abstract and port-0 clients, and the management socket, for several
/// option sets (spec §2.2). All mismatches are listed at once.
fn socket_modes_and_groups(target: Target) {
    let mut mismatches = Vec::new();
    for case in MODE_CASES {
        let sw = Switch::start(target, case.args);
        let ctl_dir = sw.ctl_dir();
        let check = |mismatches: &mut Vec<String>, what: &str, path: &Path, (mode, group): (u32, &str)| {
            let expected = Access { mode, gid: gid_of(group) };
            let actual = settled_access_of(path, expected);
            if actual != expected {
                mismatches.push(format!(
                    "{:?}: {what}: mode {:04o} gid {}, expected {:04o} gid {} ({group})",
                    case.args, actual.mode, actual.gid, expected.mode, expected.gid
                ));
            }
        };
        check(&mut mismatches, "directory", &ctl_dir, case.dir);
        check(&mut mismatches, "ctl", &ctl_dir.join("ctl"), case.ctl);
        check(&mut mismatches, "management socket", &sw.mgmt_path(), case.mgmt);

        // A path client whose socket file belongs to nobody.
        let socket_path = unique_socket_path(&ctl_dir);
        let socket = UnixDatagram::bind(&socket_path).expect("bind client socket");
        chown(&socket_path, Some(NOBODY), None).expect("chown client socket to nobody");
        let request = v3_request(RequestKind::NewControl, 0, &socket_path, "path");
        let (outcome, path_stream) = handshake_held(&ctl_dir, &request);
        match outcome {
            HandshakeOutcome::Reply(reply) => {
                let data = reply_path(&reply);
                check(&mut mismatches, "data socket of a path client", &data, case.path_client);
                let owner = fs::metadata(&data).expect("stat data socket").uid();
                if owner != NOBODY {
                    mismatches.push(format!("{:?}: data socket of nobody's client owned by uid {owner}", case.args));
                }
            }
            other => mismatches.push(format!("{:?}: path client refused: {other:?}", case.args)),
        }
        let (abstract_socket, (outcome, abstract_stream)) = abstract_client(&ctl_dir, RequestKind::NewControl);
        match outcome {
            HandshakeOutcome::Reply(reply) => {
                check(&mut mismatches, "data socket of an abstract client", &reply_path(&reply), case.abstract_client)
            }
            other => mismatches.push(format!("{:?}: abstract client refused: {other:?}", case.args)),
        }
        // A port-0 client, also owned by nobody: the mode and group become
        // the management socket's, the owner stays the client's.
        let port0_path = unique_socket_path(&ctl_dir);
        let port0_socket = UnixDatagram::bind(&port0_path).expect("bind client socket");
        chown(&port0_path, Some(NOBODY), None).expect("chown client socket to nobody");
        let (outcome, port0_stream) =
            handshake_held(&ctl_dir, &v3_request(RequestKind::NewPort0, 0, &port0_path, "port0"));
        match outcome {
            HandshakeOutcome::Reply(reply) => {
                let data = reply_path(&reply);
                check(&mut mismatches, "data socket of a port-0 client", &data, case.port0_client);
                let owner = fs::metadata(&data).expect("stat data socket").uid();
                if owner != NOBODY {
                    mismatches
                        .push(format!("{:?}: port-0 data socket of nobody's client owned by uid {owner}", case.args));
                }
            }
            other => mismatches.push(format!("{:?}: port-0 client refused: {other:?}", case.args)),
        }
        drop((socket, abstract_socket, port0_socket, path_stream, abstract_stream, port0_stream));
        let _ = fs::remove_file(&socket_path);
        let _ = fs::remove_file(&port0_path);
    }
    assert!(mismatches.is_empty(), "{target:?}: modes and groups differ from spec §2.2:\n{}", mismatches.join("\n"));
}

// ----- identity and port ACLs ------------------------------------------------

/// A socket path for a nobody client in the (world-writable) control dir.
fn nobody_socket(ctl_dir: &Path) -> String {
    unique_socket_path(ctl_dir).with_extension("nobody").to_str().expect("UTF-8 path").to_owned()
}

/// With `-m 0666`, a client running as nobody gets a port whose current
/// user is nobody and a data socket owned by nobody, and exchanges frames.
/// A root client may not join that port. A port restricted to root refuses
/// nobody (also with an abstract address, which vde_switch 2.3.2 lets
/// through: spec §3.4 quirk, hardened in vswitch) until its group is set to
/// nobody's group.
fn nobody_client_identity(target: Target) {
    let sw = Switch::start(target, &["-m", "0666"]);
    open_up(&sw);
    let ctl_dir = sw.ctl_dir();
    let mut mgmt = sw.mgmt();
    let root = Client::connect(&ctl_dir, None, "root client");
    let (mac_root, mac_nobody) = (station_mac(1), station_mac(2));

    let nobody = NobodyClient::start(&ctl_dir, 5, "nobody client", &nobody_socket(&ctl_dir), &["--bind"]);
    let data_socket = nobody.switch_socket().to_path_buf();
    let listing = mgmt.cmd_ok("port/print 5");
    assert!(listing.contains(" Current User: nobody Access Control: (User: NONE - Group: NONE)"), "{listing}");
    assert!(listing.contains(": nobody client\n"), "{listing}");
    let meta = fs::metadata(&data_socket).expect("stat the data socket");
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (NOBODY, 0o600), "owner and mode of {data_socket:?}");
    exchange(&root, mac_root, &nobody, mac_nobody);
    exchange(&nobody, mac_nobody, &root, mac_root);

    let fds = sw.open_fds();
    assert_eq!(root_request(&ctl_dir, 5), raw_refusal(target), "root joining nobody's port 5");
    sw.wait_open_fds(fds + leaked_per_refusal(target));
    drop(nobody);
    wait_port_inactive(&mut mgmt, 5);

    mgmt.cmd_ok("port/setuser 5 root");
    let fds = sw.open_fds();
    let refused = NobodyClient::start(&ctl_dir, 5, "nobody refused", &nobody_socket(&ctl_dir), &["--bind"]);
    assert_eq!(refused.outcome, refusal(target), "nobody asking for port 5 restricted to root");
    drop(refused);
    sw.wait_open_fds(fds + leaked_per_refusal(target));

    let fds = sw.open_fds();
    let name = format!("@vswitch-security-{}", std::process::id());
    let abstract_client = NobodyClient::start(&ctl_dir, 5, "nobody abstract", &name, &["--bind"]);
    match target {
        Target::Vswitch => {
            assert_eq!(
                abstract_client.outcome,
                Outcome::Closed,
                "abstract client of nobody on a port restricted to root"
            );
            drop(abstract_client);
            sw.wait_open_fds(fds);
        }
        Target::VdeSwitch => {
            // 2.3.2 sees no user behind an abstract address and admits it.
            abstract_client.switch_socket();
            drop(abstract_client);
            wait_port_inactive(&mut mgmt, 5);
        }
    }

    mgmt.cmd_ok("port/setgroup 5 nogroup");
    let admitted = NobodyClient::start(&ctl_dir, 5, "nobody admitted", &nobody_socket(&ctl_dir), &["--bind"]);
    admitted.switch_socket();
    let listing = mgmt.cmd_ok("port/print 5");
    assert!(listing.contains(" Current User: nobody Access Control: (User: "), "{listing}");
    assert!(listing.contains(" - Group: nogroup)"), "{listing}");
    // vde_switch prints both users from getpwuid's one static buffer, so
    // its ACL user shows as `nobody` too.
    if target == Target::Vswitch {
        assert!(listing.contains("(User: root - Group: nogroup)"), "{listing}");
    }
    let (mac_root, mac_nobody) = (station_mac(3), station_mac(4));
    exchange(&admitted, mac_nobody, &root, mac_root);
}

/// A client running as nobody asking for port 0 (`REQ_NEW_PORT0`, e.g.
/// `vde_plug 'DIR[0]'`) gets a data socket it owns, with the management
/// socket's mode (spec §2.2), and so can use it: frames flow both ways.
fn nobody_on_port0(target: Target) {
    let sw = Switch::start(target, &["-m", "0666"]);
    open_up(&sw);
    let ctl_dir = sw.ctl_dir();
    let root = Client::connect(&ctl_dir, None, "root client");
    let nobody = NobodyClient::start(&ctl_dir, 0, "nobody port 0", &nobody_socket(&ctl_dir), &["--bind", "--port0"]);
    let data_socket = nobody.switch_socket().to_path_buf();
    assert!(data_socket.file_name().unwrap().to_string_lossy().starts_with("000."), "{data_socket:?}");
    let (mac_root, mac_nobody) = (station_mac(1), station_mac(2));
    exchange(&root, mac_root, &nobody, mac_nobody);
    exchange(&nobody, mac_nobody, &root, mac_root);
    let meta = fs::metadata(&data_socket).expect("stat the data socket");
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (NOBODY, 0o600), "owner and mode of {data_socket:?}");
}

// ----- confused deputy -------------------------------------------------------

/// A root-owned datagram socket the test reads.
struct RootSocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl RootSocket {
    fn bind(path: PathBuf, mode: u32) -> RootSocket {
        let socket = UnixDatagram::bind(&path).expect("bind root socket");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod root socket");
        RootSocket { socket, path }
    }

    /// Whether a datagram arrives within the quiet period.
    fn received_something(&self) -> bool {
        self.socket.set_read_timeout(Some(QUIET_PERIOD)).expect("set read timeout");
        let mut buf = [0u8; 2048];
        match self.socket.recv(&mut buf) {
            Ok(_) => true,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
            Err(e) => panic!("recv on {:?}: {e}", self.path),
        }
    }
}

/// What `no_confused_deputy` needs for each attempt.
struct DeputyLab<'a> {
    sw: &'a Switch,
    ctl_dir: &'a Path,
    root: &'a Client,
    mac_root: [u8; 6],
    /// Whether the switch is expected to act for the client (vde_switch).
    deputised: bool,
}

impl DeputyLab<'_> {
    /// A request as nobody naming `addr`, then a flood from root: does it
    /// reach `victim`?
    fn attempt(&self, mgmt: &mut Mgmt, descr: &str, port: u32, addr: &str, options: &[&str], victim: &RootSocket) {
        let fds = self.sw.open_fds();
        let client = NobodyClient::start(self.ctl_dir, port, descr, addr, options);
        let flood = frame(BROADCAST, self.mac_root, TEST_ETHERTYPE, 46);
        self.root.send(&flood);
        let reached = victim.received_something();
        if self.deputised {
            assert!(matches!(client.outcome, Outcome::Reply(_)), "{descr}: vde_switch refused: {:?}", client.outcome);
            assert!(reached, "{descr}: vde_switch did not forward to {:?}", victim.path);
            drop(client);
            wait_until(EVENT_TIMEOUT, &format!("the endpoint of {descr} to go"), || {
                mgmt.find_endpoint(|d| d == descr).is_none().then_some(())
            });
        } else {
            assert_eq!(client.outcome, Outcome::Closed, "{descr}");
            assert!(!reached, "{descr}: a frame reached {:?}", victim.path);
            drop(client);
            self.sw.wait_open_fds(fds);
        }
    }
}

/// A client running as nobody names, as its own address, sockets that
/// nobody may not use: a root socket with mode 0600 in a root-only
/// directory (directly, and through a symlink nobody made), and a
/// root-owned socket nobody may write but whose owner would pass a port ACL
/// restricted to root. vswitch looks the path up and connects with the
/// peer's identity and checks ACLs against the peer's credentials, so it
/// refuses all three and the root sockets receive nothing; vde_switch 2.3.2
/// checks with its own root rights and the socket owner, connects, and
/// floods reach the root sockets.
fn no_confused_deputy(target: Target) {
    let sw = Switch::start(target, &["-m", "0666"]);
    open_up(&sw);
    let ctl_dir = sw.ctl_dir();
    let mut mgmt = sw.mgmt();
    let private = sw.dir().join("private");
    fs::create_dir(&private).expect("create private directory");
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).expect("chmod private directory");
    let secret = RootSocket::bind(private.join("root.sock"), 0o600);
    let root = Client::connect(&ctl_dir, None, "root client");
    let mac_root = station_mac(1);
    let deputised = target == Target::VdeSwitch;

    let lab = DeputyLab { sw: &sw, ctl_dir: &ctl_dir, root: &root, mac_root, deputised };
    lab.attempt(&mut mgmt, "deputy direct", 0, secret.path.to_str().unwrap(), &[], &secret);

    let link = ctl_dir.join(".nobody-link");
    lab.attempt(
        &mut mgmt,
        "deputy symlink",
        0,
        link.to_str().unwrap(),
        &["--symlink-to", secret.path.to_str().unwrap()],
        &secret,
    );
    let link_meta = fs::symlink_metadata(&link).expect("the helper made the symlink");
    assert!(link_meta.file_type().is_symlink() && link_meta.uid() == NOBODY, "{link:?} must be nobody's symlink");

    // A socket nobody may write, owned by root, on a port only root may use.
    let public = sw.dir().join("public");
    fs::create_dir(&public).expect("create public directory");
    fs::set_permissions(&public, fs::Permissions::from_mode(0o755)).expect("chmod public directory");
    let writable = RootSocket::bind(public.join("root-owned.sock"), 0o666);
    mgmt.cmd_ok("port/create 5");
    mgmt.cmd_ok("port/setuser 5 root");
    lab.attempt(&mut mgmt, "deputy acl", 5, writable.path.to_str().unwrap(), &[], &writable);
}

// ----- console output injection ----------------------------------------------

/// A client's description is free text chosen by whoever can reach `ctl`
/// (anyone, with `-m 0666`), and the console prints it inside its framed
/// replies. A description carrying a line break, a forged end of the data
/// block, status line and prompt, and a terminal escape must not end the
/// reply early (the rest would be read as the answer to the next command by
/// `vdeterm`, `unixcmd` and scripts) nor reach the administrator's terminal.
///
/// vde_switch 2.3.2 prints descriptions raw, so this hardening is tested
/// against vswitch only (in the spirit of spec §12: no client may corrupt
/// what others see).
#[test]
fn client_description_cannot_forge_console_output_vswitch() {
    const FORGED: &str = "evil\n.\n1000 Success\n\nvde$ \x1b[2J";
    let sw = Switch::start(Target::Vswitch, &[]);
    let _client = Client::connect(&sw.ctl_dir(), None, FORGED);
    let mut mgmt = sw.mgmt();
    let listing = mgmt.cmd_ok("port/print 1");
    let next = mgmt.cmd_ok("port/showinfo");
    assert!(
        next.starts_with("0000 DATA END WITH '.'\nNumports="),
        "the description's forged prompt ended `port/print` early; the next reply starts with the rest: {next:?}"
    );
    let endpoint_lines: Vec<&str> = listing.lines().filter(|l| l.starts_with("  -- endpoint ID")).collect();
    assert_eq!(endpoint_lines.len(), 1, "{listing:?}");
    assert!(endpoint_lines[0].contains("evil"), "{listing:?}");
    assert!(!listing.contains('\x1b'), "a terminal escape from the description reached the console: {listing:?}");
}

// ----- bounded memory --------------------------------------------------------

/// 60-byte broadcasts from `count` distinct, random-looking unicast source
/// MACs: index `i` is mixed by an odd multiplier, a bijection on 40 bits.
fn send_random_sources(sender: &Client, range: std::ops::Range<u64>) {
    let mut frame = [0u8; 60];
    frame[..6].copy_from_slice(&BROADCAST);
    frame[12..14].copy_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    for i in range {
        let mixed = i.wrapping_mul(0x9e37_79b9_7f4b) & 0xff_ffff_ffff;
        frame[6] = 0x02; // locally administered unicast
        frame[7..12].copy_from_slice(&mixed.to_be_bytes()[3..]);
        sender.send(&frame);
    }
}

/// The number of `hash/print` entries, read on a raw session: the reply
/// is megabytes long, so only the end of what arrived is searched for the
/// prompt.
fn hash_entries(mgmt_path: &Path) -> usize {
    const PROMPT: &[u8] = b"\nvde$ ";
    let mut stream = UnixStream::connect(mgmt_path).expect("connect to the management socket");
    stream.set_read_timeout(Some(EVENT_TIMEOUT)).expect("set read timeout");
    let deadline = Instant::now() + Duration::from_secs(20);
    let read_until_prompt = |stream: &mut UnixStream| {
        let mut text = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        while !text.ends_with(PROMPT) {
            assert!(Instant::now() < deadline, "no prompt within 20 s; {} bytes received", text.len());
            match stream.read(&mut chunk) {
                Ok(0) => panic!("management session closed"),
                Ok(n) => text.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("read from the management socket: {e}"),
            }
        }
        String::from_utf8(text).expect("UTF-8 reply")
    };
    read_until_prompt(&mut stream);
    stream.write_all(b"hash/print\n").expect("send hash/print");
    let reply = read_until_prompt(&mut stream);
    assert!(
        reply.ends_with("1000 Success\n\nvde$ "),
        "hash/print failed: {:?}",
        &reply[reply.len().saturating_sub(200)..]
    );
    reply.lines().filter(|line| line.starts_with("Hash: ")).count()
}

/// 100,000 frames from distinct random source MACs: the MAC table stops at
/// its 65,536-station capacity, so `hash/print` lists exactly that many and
/// the switch's RSS stops growing once the table is full.
#[test]
fn mac_table_stays_bounded_vswitch() {
    const CAPACITY: usize = 65_536;
    const FILL: u64 = 70_000;
    const TOTAL: u64 = 100_000;
    const RSS_MARGIN_KIB: u64 = 1024;
    let sw = Switch::start(Target::Vswitch, &[]);
    let mut mgmt = sw.mgmt();
    let sender = Client::connect(&sw.ctl_dir(), None, "random sources");
    let port = sender.port();
    let rss_start = rss_kib(sw.pid());
    let wait_read = |mgmt: &mut Mgmt, frames: u64| {
        wait_until(Duration::from_secs(20), &format!("the switch to read {frames} frames"), || {
            (mgmt.port(port)?.in_pkts == frames).then_some(())
        })
    };

    send_random_sources(&sender, 0..FILL);
    wait_read(&mut mgmt, FILL);
    let rss_full = rss_kib(sw.pid());
    send_random_sources(&sender, FILL..TOTAL);
    wait_read(&mut mgmt, TOTAL);
    let rss_end = rss_kib(sw.pid());
    let entries = hash_entries(&sw.mgmt_path());
    println!(
        "MAC table: {entries} entries after {TOTAL} sources; VmRSS {rss_start} KiB at start, {rss_full} KiB after \
         {FILL} sources, {rss_end} KiB after {TOTAL}"
    );
    assert_eq!(entries, CAPACITY, "hash/print entries after {TOTAL} distinct sources");
    assert!(
        rss_end <= rss_full + RSS_MARGIN_KIB,
        "RSS grew from {rss_full} KiB to {rss_end} KiB after the table was full (margin {RSS_MARGIN_KIB} KiB)"
    );
    sw.assert_alive();
}

test_both_targets!(socket_modes_and_groups, nobody_client_identity, nobody_on_port0, no_confused_deputy);
