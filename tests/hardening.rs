//! Hardening (issue 16): nothing a console user or a client does can borrow
//! the switch's rights or stop it. A console session of `nobody` (through
//! `setpriv`, as in `security.rs`) cannot `load` a file only root may read;
//! a stderr nobody drains, a `load` stuck in the file system and thousands
//! of idle connections leave the console answering and frames moving.

mod common;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{Signal, kill};

use common::client::{unique_socket_path, v3_request};
use common::station::exchange;
use common::*;
use vswitch::wire::RequestKind;

const PROMPT: &[u8] = b"\nvde$ ";

/// A console client, as a Python one-liner run by `setpriv` as
/// `nobody:nogroup` without supplementary groups: reads the greeting, sends
/// one line and prints everything up to the next prompt.
const NOBODY_CONSOLE: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
def reply():
    data = b""
    while not data.endswith(b"\nvde$ "):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data
reply()
s.sendall(sys.argv[2].encode() + b"\n")
sys.stdout.write(reply().decode(errors="replace"))
"#;

fn console_as_nobody(mgmt: &Path, line: &str) -> String {
    let out = Command::new("timeout")
        .args(["20", "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--reset-env"])
        .args(["/usr/bin/python3", "-c", NOBODY_CONSOLE])
        .arg(mgmt)
        .arg(line)
        .current_dir("/")
        .stderr(Stdio::inherit())
        .output()
        .expect("run the console client as nobody");
    assert!(out.status.success(), "console client as nobody failed: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write_file(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).expect("write test file");
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod test file");
}

fn open_up(dir: &Path) {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod a temporary directory");
}

/// Two vde_plug processes attach and exchange frames.
fn plugs_exchange(ctl_dir: &Path, mgmt: &mut Mgmt) {
    let url = ctl_dir.to_str().expect("UTF-8 path");
    let mut a = VdePlug::spawn(url, "hard-a");
    let mut b = VdePlug::spawn(url, "hard-b");
    a.wait_attached(mgmt, "hard-a");
    b.wait_attached(mgmt, "hard-b");
    exchange(&a, station_mac(1), &b, station_mac(2));
}

#[test]
fn a_console_user_loads_only_what_it_may_read() {
    let files = tempfile::Builder::new().prefix("vswitch-load-").tempdir().expect("temporary directory");
    open_up(files.path());
    let secret = files.path().join("secret");
    write_file(&secret, "# SECRET-7f3a only root may read this\nport/create 7\n", 0o600);
    let public = files.path().join("public");
    write_file(&public, "port/create 9\n", 0o644);
    let rc = files.path().join("rc");
    write_file(&rc, "port/setnumports 40\n", 0o600);

    let sw = Switch::start(Target::Vswitch, &["--mgmtmode", "0666", "-f", rc.to_str().unwrap()]);
    open_up(sw.dir());
    let mut root = sw.mgmt();
    assert!(root.cmd_ok("port/showinfo").contains("Numports=40"), "root's rc file ran with the switch's rights");

    let refused = console_as_nobody(&sw.mgmt_path(), &format!("load {}", secret.display()));
    assert!(refused.ends_with("1013 Permission denied\n\nvde$ "), "nobody's load of a root-only file: {refused:?}");
    assert!(!refused.contains("SECRET"), "the refused file's contents leaked: {refused:?}");
    assert!(root.port(7).is_none(), "no line of the refused file ran");

    let allowed = console_as_nobody(&sw.mgmt_path(), &format!("load {}", public.display()));
    assert!(allowed.contains("port/create 9\n1000 Success\n"), "nobody's load of a readable file: {allowed:?}");

    let own = root.cmd_ok(&format!("load {}", secret.display()));
    assert!(own.contains("SECRET-7f3a"), "root may load its own file: {own:?}");
    assert!(root.port(7).is_some());
}

/// A pipe whose buffer is full: whoever writes to it blocks until the
/// other end is read.
fn full_pipe() -> (OwnedFd, OwnedFd) {
    let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
    // Non-blocking only while filling: the flag belongs to the open pipe,
    // which the switch shares, and it must find a pipe that blocks.
    fcntl(&write_end, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).expect("make the pipe non-blocking");
    let chunk = [b'#'; 4096];
    while nix::unistd::write(&write_end, &chunk).is_ok() {}
    fcntl(&write_end, FcntlArg::F_SETFL(OFlag::empty())).expect("make the pipe blocking again");
    (read_end, write_end)
}

#[test]
fn a_stderr_nobody_reads_stops_nothing() {
    let dir = tempfile::Builder::new().prefix("vswitch-stderr-").tempdir().expect("temporary directory");
    let (stderr_read, stderr_write) = full_pipe();
    // The stdin console's replies go to a pipe nobody reads either.
    let (stdout_read, stdout_write) = full_pipe();
    let (stdin_read, stdin_write) = nix::unistd::pipe().expect("pipe");
    let _switch = ProcessGuard::spawn(
        with_switch_files(&mut Command::new(Target::Vswitch.program()), dir.path())
            .stdin(Stdio::from(stdin_read))
            .stdout(Stdio::from(stdout_write))
            .stderr(Stdio::from(stderr_write)),
    );
    // Far more reply than the pipe and the switch's console queue hold.
    let mut stdin = fs::File::from(stdin_write);
    stdin.write_all(&b"help\n".repeat(200)).expect("send commands to the stdin console");
    let mgmt_path = dir.path().join("sw.mgmt");
    let ctl = dir.path().join("sw").join("ctl");
    let mut mgmt = wait_until(STARTUP_TIMEOUT, "the management socket", || Mgmt::try_connect(&mgmt_path).ok());

    // Each refused request is a log line; enough seconds of them to fill
    // the switch's log queue even at the rate-limited pace.
    let started = Instant::now();
    let mut refused = 0;
    while refused < 3000 || started.elapsed() < Duration::from_secs(8) {
        let mut stream = UnixStream::connect(&ctl).expect("connect to ctl");
        stream.write_all(&[0; 16]).expect("send a bad request");
        refused += 1;
    }

    assert!(mgmt.cmd_ok("port/showinfo").contains("Numports=32"), "the console answers");
    plugs_exchange(&dir.path().join("sw"), &mut mgmt);

    let text = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&text);
    thread::spawn(move || {
        let mut pipe = fs::File::from(stderr_read);
        let mut chunk = [0u8; 65536];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                return;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    let log = || String::from_utf8_lossy(&text.lock().unwrap()).replace('#', "");
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !log().lines().any(|l| l.ends_with("log lines dropped (output blocked)")) {
        assert!(Instant::now() < deadline, "no count of dropped log lines in {:?}", log());
        thread::sleep(Duration::from_millis(20));
    }
    let log = log();
    assert!(log.contains("V0 request not supported"), "refusals are logged: {log}");
    assert!(log.contains("more refused connections not logged"), "refusals are rate-limited: {log}");

    // The stdin console waited for its output instead of losing it.
    let replies = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&replies);
    thread::spawn(move || {
        let mut pipe = fs::File::from(stdout_read);
        let mut chunk = [0u8; 65536];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                return;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    let answered = || String::from_utf8_lossy(&replies.lock().unwrap()).matches("COMMAND PATH").count();
    wait_until(Duration::from_secs(10), "every stdin command answered", || (answered() == 200).then_some(()));
    drop(stdin);
}

/// A FUSE file system that never answers: the kernel waits for the reply
/// to its first request (INIT), so every look-up below the mount point
/// blocks until the device is closed.
struct StalledMount {
    path: PathBuf,
    device: Option<fs::File>,
}

impl StalledMount {
    fn new(path: PathBuf) -> StalledMount {
        fs::create_dir(&path).expect("create the mount point");
        let device = fs::OpenOptions::new().read(true).write(true).open("/dev/fuse").expect("open /dev/fuse");
        // The device goes to mount(8) as its standard input, descriptor 0.
        let status = Command::new("mount")
            .args(["-t", "fuse", "-o", "fd=0,rootmode=40000,user_id=0,group_id=0", "stalled"])
            .arg(&path)
            .stdin(device.try_clone().expect("duplicate the FUSE descriptor"))
            .status()
            .expect("run mount");
        assert!(status.success(), "mount a FUSE file system: {status}");
        StalledMount { path, device: Some(device) }
    }
}

impl Drop for StalledMount {
    fn drop(&mut self) {
        // Closing the device aborts the connection: blocked look-ups fail.
        drop(self.device.take());
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[test]
fn a_load_stuck_in_the_file_system_stops_nothing() {
    let sw = Switch::start(Target::Vswitch, &[]);
    let stalled = StalledMount::new(sw.dir().join("stalled"));
    let script = stalled.path.join("script");

    let (sender, receiver) = mpsc::channel();
    let mgmt_path = sw.mgmt_path();
    thread::spawn(move || {
        let mut stream = UnixStream::connect(&mgmt_path).expect("connect to the console");
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut reply = Vec::new();
        let read_prompt = |stream: &mut UnixStream, reply: &mut Vec<u8>| {
            let mut chunk = [0u8; 4096];
            while !reply.ends_with(PROMPT) {
                match stream.read(&mut chunk) {
                    Ok(0) => return,
                    Ok(n) => reply.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        };
        read_prompt(&mut stream, &mut reply);
        reply.clear();
        stream.write_all(format!("load {}\n", script.display()).as_bytes()).unwrap();
        read_prompt(&mut stream, &mut reply);
        let _ = sender.send(String::from_utf8_lossy(&reply).into_owned());
    });

    // So does a client whose socket path lies on that file system: its
    // handshake waits in the background.
    let mut stuck_client = UnixStream::connect(sw.ctl_dir().join("ctl")).expect("connect to ctl");
    let request = v3_request(RequestKind::NewControl, 0, &stalled.path.join("client"), "stuck");
    stuck_client.write_all(&request).expect("send the port request");

    // While those wait on the file system, everything else goes on.
    let mut mgmt = sw.mgmt();
    assert!(mgmt.cmd_ok("port/showinfo").contains("Numports=32"));
    plugs_exchange(&sw.ctl_dir(), &mut mgmt);

    let reply = receiver.recv_timeout(Duration::from_secs(30)).expect("the stuck load is answered");
    assert!(reply.ends_with("1110 Connection timed out\n\nvde$ "), "stuck load: {reply:?}");
    stuck_client.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(stuck_client.read(&mut byte).expect("read the handshake reply"), 0, "the stuck client is refused");
    sw.assert_alive();
    drop(stalled);
}

/// Opens `count` connections to `path` in a thread (connect blocks while
/// the listen backlog is full: a switch that stops accepting fails the
/// test instead of hanging it).
fn idle_connections(path: &Path, count: usize) -> Vec<UnixStream> {
    let (sender, receiver) = mpsc::channel();
    let path = path.to_path_buf();
    thread::spawn(move || {
        let streams: std::io::Result<Vec<UnixStream>> = (0..count).map(|_| UnixStream::connect(&path)).collect();
        let _ = sender.send(streams);
    });
    receiver.recv_timeout(Duration::from_secs(30)).expect("connections accepted").expect("connect")
}

#[test]
fn thousands_of_idle_connections_leave_room_for_real_clients() {
    let sw = Switch::start(Target::Vswitch, &[]);
    let baseline = sw.open_fds();
    let idle_ctl = idle_connections(&sw.ctl_dir().join("ctl"), 3000);
    let idle_mgmt = idle_connections(&sw.mgmt_path(), 3000);
    // 128 connections owing their request and 128 console sessions at
    // most (with a descriptor limit of 1024 or more), so their descriptors
    // are bounded.
    wait_until(EVENT_TIMEOUT, "the switch to have closed the oldest idle connections", || {
        (sw.open_fds() <= baseline + 128 + 128).then_some(())
    });

    let mut mgmt = sw.mgmt();
    assert!(mgmt.cmd_ok("port/showinfo").contains("Numports=32"));
    plugs_exchange(&sw.ctl_dir(), &mut mgmt);

    drop(idle_ctl);
    drop(idle_mgmt);
    drop(mgmt);
    sw.wait_open_fds(baseline);
}

/// BPDUs `station` receives within `window`.
fn bpdus_within(station: &dyn Station, window: Duration) -> usize {
    let deadline = Instant::now() + window;
    let mut count = 0;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match station.recv_timeout(left) {
            Some(f) if f.starts_with(&[0x01, 0x80, 0xc2, 0, 0, 0]) => count += 1,
            Some(_) => {}
            None => break,
        }
    }
    count
}

/// Stopped for three hello intervals (4 s each), the switch sends no burst
/// of hellos when it continues: its clock jumps instead of replaying every
/// missed second. vde_switch's clock stands still while it is stopped.
fn no_bpdu_burst_after_a_stop(target: Target) {
    let sw = Switch::start(target, &["-F"]);
    let client = Client::connect(&sw.ctl_dir(), None, "bpdus");
    assert!(bpdus_within(&client, Duration::from_secs(6)) >= 1, "hellos arrive while the switch runs");
    kill(sw.pid(), Signal::SIGSTOP).expect("stop the switch");
    thread::sleep(Duration::from_secs(13));
    kill(sw.pid(), Signal::SIGCONT).expect("continue the switch");
    // A burst would come at once; the next regular hello not before 4 s.
    let burst = bpdus_within(&client, Duration::from_millis(1500));
    assert!(burst <= 1, "{burst} BPDUs right after continuing");
    sw.assert_alive();
}

test_both_targets!(no_bpdu_burst_after_a_stop);

/// Out of descriptors, a new control connection is accepted and closed at
/// once (a descriptor is kept in reserve for that), instead of waiting in
/// the listen backlog for a reply that never comes; once clients leave,
/// everything works again.
#[test]
fn out_of_descriptors_a_newcomer_is_closed_not_left_waiting() {
    let sw = Switch::start(Target::Vswitch, &[]);
    let mut mgmt = sw.mgmt();
    let baseline = sw.open_fds();
    let limit = format!("--nofile={0}:{0}", baseline + 8);
    let status = Command::new("prlimit").args(["--pid", &sw.pid().to_string(), &limit]).status().expect("prlimit");
    assert!(status.success(), "lower the switch's descriptor limit");

    // Clients until one finds no descriptor for its data socket: the switch
    // then has exactly one left (its control connection's, closed again).
    let sockets = tempfile::tempdir().expect("temporary directory");
    let mut attached = Vec::new();
    let refused = loop {
        let path = unique_socket_path(sockets.path());
        let data = std::os::unix::net::UnixDatagram::bind(&path).expect("bind a client socket");
        let mut stream = UnixStream::connect(sw.ctl_dir().join("ctl")).expect("connect to ctl");
        match send_request(&mut stream, &v3_request(RequestKind::NewControl, 0, &path, "fill")) {
            HandshakeOutcome::Reply(_) => attached.push((stream, data)),
            outcome => break outcome,
        }
        assert!(attached.len() < 10, "the descriptor limit holds");
    };
    assert_eq!(refused, HandshakeOutcome::Closed, "the client that did not fit");
    // An idle connection takes that last descriptor.
    let before = sw.open_fds();
    let idle = UnixStream::connect(sw.ctl_dir().join("ctl")).expect("connect to ctl");
    sw.wait_open_fds(before + 1);

    let newcomer = raw_handshake(&sw.ctl_dir(), &v3_request(RequestKind::NewControl, 0, Path::new("/x"), "late"));
    assert_eq!(newcomer, HandshakeOutcome::Closed, "out of descriptors, a newcomer is closed at once");

    let clients = attached.len();
    drop(idle);
    drop(attached);
    sw.wait_open_fds(before - 2 * clients);
    assert!(mgmt.cmd_ok("port/showinfo").contains("Numports=32"));
    plugs_exchange(&sw.ctl_dir(), &mut mgmt);
}
