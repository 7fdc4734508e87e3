//! `--stream` and `--dgram` sockets with raw peers: framing, events and
//! bad input (issue 12). QEMU guests on them are in `qemu.rs`.
//!
//! Every wait is bounded; the switch is stopped by `Drop`, also on panic.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::frames::Mac;
use common::station::exchange;
use common::{BROADCAST, Client, EVENT_TIMEOUT, Station, Switch, TEST_ETHERTYPE, Target, frame, rss_kib, station_mac};
use tempfile::TempDir;

struct Sockets {
    dir: TempDir,
}

impl Sockets {
    fn new() -> Sockets {
        Sockets { dir: tempfile::tempdir().unwrap() }
    }

    fn stream(&self) -> PathBuf {
        self.dir.path().join("qemu.stream")
    }

    fn dgram(&self) -> PathBuf {
        self.dir.path().join("qemu.dgram")
    }

    fn start(&self) -> Switch {
        let (s, d) = (self.stream(), self.dgram());
        Switch::start(Target::Vswitch, &["--stream", s.to_str().unwrap(), "--dgram", d.to_str().unwrap()])
    }
}

fn record(frame: &[u8]) -> Vec<u8> {
    let mut r = (frame.len() as u32).to_be_bytes().to_vec();
    r.extend_from_slice(frame);
    r
}

/// A `-netdev stream` peer.
struct StreamPeer(UnixStream);

impl Station for StreamPeer {
    fn name(&self) -> &str {
        "stream peer"
    }

    fn send(&self, frame: &[u8]) {
        (&self.0).write_all(&record(frame)).expect("stream send");
    }

    fn recv_timeout(&self, timeout: Duration) -> Option<Vec<u8>> {
        self.0.set_read_timeout(Some(timeout.max(Duration::from_millis(1)))).unwrap();
        let mut head = [0u8; 4];
        match (&self.0).read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return None,
            Err(e) => panic!("stream receive: {e}"),
        }
        let mut frame = vec![0; u32::from_be_bytes(head) as usize];
        self.0.set_read_timeout(Some(EVENT_TIMEOUT)).unwrap();
        (&self.0).read_exact(&mut frame).expect("a whole record");
        Some(frame)
    }
}

/// A `-netdev dgram` peer, bound so that the switch can answer it and,
/// like QEMU's, not connected (it takes frames from any address).
struct DgramPeer {
    socket: UnixDatagram,
    switch: PathBuf,
    _dir: TempDir,
}

impl DgramPeer {
    fn new(switch_path: &Path) -> DgramPeer {
        let dir = tempfile::tempdir().unwrap();
        let socket = UnixDatagram::bind(dir.path().join("guest")).unwrap();
        DgramPeer { socket, switch: switch_path.to_path_buf(), _dir: dir }
    }
}

impl Station for DgramPeer {
    fn name(&self) -> &str {
        "dgram peer"
    }

    fn send(&self, frame: &[u8]) {
        self.socket.send_to(frame, &self.switch).expect("dgram send");
    }

    fn recv_timeout(&self, timeout: Duration) -> Option<Vec<u8>> {
        self.socket.set_read_timeout(Some(timeout.max(Duration::from_millis(1)))).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        match self.socket.recv(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                Some(buf)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(e) => panic!("dgram receive: {e}"),
        }
    }
}

fn expect_broadcast_from(station: &dyn Station, source: Mac) {
    let got = station.recv_timeout(EVENT_TIMEOUT).unwrap_or_else(|| panic!("{}: no broadcast", station.name()));
    assert_eq!((&got[..6], &got[6..12]), (&BROADCAST[..], &source[..]), "{}", station.name());
}

const MAC_STREAM: Mac = station_mac(1);
const MAC_DGRAM: Mac = station_mac(2);
const MAC_VDE: Mac = station_mac(3);

#[test]
fn stream_dgram_and_vde_peers_exchange_frames_and_show_up_in_events() {
    let sockets = Sockets::new();
    let sw = sockets.start();
    let mut events = sw.mgmt();
    events.cmd_ok("debug/add port");
    let stream = StreamPeer(UnixStream::connect(sockets.stream()).unwrap());
    let event = events.read_event(EVENT_TIMEOUT).expect("an event for the stream peer");
    assert!(event.contains("port/+ 01") || event.contains("port/ep/+"), "{event}");
    // A dgram sender is an endpoint from its first frame on.
    let dgram = DgramPeer::new(&sockets.dgram());
    exchange(&dgram, MAC_DGRAM, &stream, MAC_STREAM);
    let vde = Client::connect(&sw.ctl_dir(), None, "vde");
    exchange(&vde, MAC_VDE, &dgram, MAC_DGRAM);
    expect_broadcast_from(&stream, MAC_VDE);
    exchange(&stream, MAC_STREAM, &vde, MAC_VDE);
    expect_broadcast_from(&dgram, MAC_STREAM);
    // Records split across writes, and many in one.
    let big = frame(MAC_DGRAM, MAC_STREAM, TEST_ETHERTYPE, 1400);
    let mut bytes = record(&big);
    bytes.extend(record(&big));
    (&stream.0).write_all(&bytes[..3]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    (&stream.0).write_all(&bytes[3..700]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    (&stream.0).write_all(&bytes[700..]).unwrap();
    dgram.expect_frame(&big);
    dgram.expect_frame(&big);
    let listing = sw.mgmt().cmd_ok("port/print");
    let stream_desc =
        format!("module stream      : {} user=root pid={}", sockets.stream().display(), std::process::id());
    assert!(listing.contains(&stream_desc), "{stream_desc:?} in\n{listing}");
    let dgram_desc = format!(
        "module dgram       : {} from {} user=root pid={}",
        sockets.dgram().display(),
        dgram._dir.path().join("guest").display(),
        std::process::id()
    );
    assert!(listing.contains(&dgram_desc), "{dgram_desc:?} in\n{listing}");
    // A closed stream frees its port.
    drop(stream);
    common::wait_until(EVENT_TIMEOUT, "the stream's port to go", || {
        (!sw.mgmt().cmd_ok("port/print").contains("module stream")).then_some(())
    });
}

/// True once the switch has closed `stream` (EOF or reset).
fn closed(stream: &mut UnixStream) -> bool {
    stream.set_read_timeout(Some(EVENT_TIMEOUT)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn with_mtu_9000_jumbo_frames_cross_stream_and_dgram_and_longer_records_close() {
    let sockets = Sockets::new();
    let (s, d) = (sockets.stream(), sockets.dgram());
    let args = ["--mtu", "9000", "--stream", s.to_str().unwrap(), "--dgram", d.to_str().unwrap()];
    let _sw = Switch::start(Target::Vswitch, &args);
    let mut stream = StreamPeer(UnixStream::connect(&s).unwrap());
    let dgram = DgramPeer::new(&d);
    exchange(&dgram, MAC_DGRAM, &stream, MAC_STREAM);
    // Without --mtu a 9018-byte record closes the connection.
    let jumbo = frame(MAC_DGRAM, MAC_STREAM, TEST_ETHERTYPE, 9000 + 4);
    assert_eq!(jumbo.len(), 9018);
    stream.send(&jumbo);
    dgram.expect_frame(&jumbo);
    let back = frame(MAC_STREAM, MAC_DGRAM, TEST_ETHERTYPE, 9000 + 4);
    dgram.send(&back);
    stream.expect_frame(&back);
    // Longer than a tagged frame of that MTU is a bad length.
    (&stream.0).write_all(&9023u32.to_be_bytes()).unwrap();
    assert!(closed(&mut stream.0), "a 9023-byte record ends the connection");
}

#[test]
fn bad_input_on_both_sockets_leaves_the_others_served() {
    let sockets = Sockets::new();
    let sw = sockets.start();
    let a = Client::connect(&sw.ctl_dir(), None, "a");
    let b = Client::connect(&sw.ctl_dir(), None, "b");
    exchange(&a, station_mac(10), &b, station_mac(11));
    let fds = sw.open_fds();
    let rss = rss_kib(sw.pid());

    // Zero, huge and impossible lengths close the connection.
    for length in [0u32, 1523, 65536, u32::MAX] {
        let mut s = UnixStream::connect(sockets.stream()).unwrap();
        s.write_all(&length.to_be_bytes()).unwrap();
        // The switch may already have closed on the length alone.
        let _ = s.write_all(&[0xab; 64]);
        assert!(closed(&mut s), "a record length of {length} closes the connection");
    }
    // A good record, then garbage whose first four bytes are a huge length.
    let mut s = UnixStream::connect(sockets.stream()).unwrap();
    let good = frame(BROADCAST, station_mac(20), TEST_ETHERTYPE, 46);
    s.write_all(&record(&good)).unwrap();
    s.write_all(b"GARBAGE GARBAGE GARBAGE").unwrap();
    assert!(closed(&mut s), "garbage closes the connection");
    a.expect_frame(&good);
    b.expect_frame(&good);
    // A frame cut off by a close.
    let mut s = UnixStream::connect(sockets.stream()).unwrap();
    let cut = record(&frame(BROADCAST, station_mac(21), TEST_ETHERTYPE, 46));
    s.write_all(&cut[..30]).unwrap();
    drop(s);
    // A thousand connections opened and dropped.
    for _ in 0..1000 {
        drop(UnixStream::connect(sockets.stream()).unwrap());
    }
    // Datagrams that are no frames, and from a sender nobody can answer.
    let dg = DgramPeer::new(&sockets.dgram());
    for bad in [&[][..], &[1u8; 5][..], &[2u8; 3000][..]] {
        dg.socket.send_to(bad, &dg.switch).unwrap();
    }
    let unnamed = UnixDatagram::unbound().unwrap();
    unnamed.send_to(&frame(BROADCAST, station_mac(22), TEST_ETHERTYPE, 46), sockets.dgram()).unwrap();
    exchange(&a, station_mac(10), &b, station_mac(11));

    // Senders that flood a client that never reads, and never read
    // themselves.
    let sink = Client::connect(&sw.ctl_dir(), None, "never reads");
    let hello = frame(BROADCAST, station_mac(30), TEST_ETHERTYPE, 46);
    sink.send(&hello);
    a.expect_frame(&hello);
    b.expect_frame(&hello);
    let flood_stream = UnixStream::connect(sockets.stream()).unwrap();
    flood_stream.set_nonblocking(true).unwrap();
    let flood_dgram = DgramPeer::new(&sockets.dgram());
    flood_dgram.socket.set_nonblocking(true).unwrap();
    let to_sink = frame(station_mac(30), station_mac(31), TEST_ETHERTYPE, 46);
    let to_sink_too = frame(station_mac(30), station_mac(32), TEST_ETHERTYPE, 46);
    for _ in 0..20_000 {
        let _ = (&flood_stream).write(&record(&to_sink));
        let _ = flood_dgram.socket.send_to(&to_sink_too, &flood_dgram.switch);
    }
    exchange(&a, station_mac(10), &b, station_mac(11));
    // Broadcasts reach the flooders, which do not read them.
    for n in 0..200 {
        let f = frame(BROADCAST, station_mac(10), TEST_ETHERTYPE, 46 + n % 50);
        a.send(&f);
        b.expect_frame(&f);
    }
    sw.assert_alive();

    drop((flood_stream, flood_dgram, dg, sink, unnamed));
    // The dgram senders' endpoints go when a frame finds their address gone.
    let f = frame(BROADCAST, station_mac(10), TEST_ETHERTYPE, 46);
    a.send(&f);
    b.expect_frame(&f);
    sw.wait_open_fds(fds);
    exchange(&a, station_mac(10), &b, station_mac(11));
    let grown = rss_kib(sw.pid()).saturating_sub(rss);
    assert!(grown < 4096, "RSS grew by {grown} KiB");
    let listing = sw.mgmt().cmd_ok("port/print");
    assert!(!listing.contains("module stream") && !listing.contains("module dgram"), "{listing}");
}

/// User plus system CPU ticks of `pid` so far.
fn cpu_ticks(pid: nix::unistd::Pid) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read the switch's stat");
    let fields: Vec<&str> = stat.rsplit_once(") ").expect("stat format").1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// With its descriptors exhausted, stream connections the switch cannot
/// accept must not make it busy-loop on the ready listener; they are
/// accepted once descriptors are free again (at the next tick). The CPU
/// time is only a busy-loop detector: a spinning switch uses most of a
/// core, the bound is a fifth of one.
#[test]
fn a_stream_listener_out_of_descriptors_does_not_spin() {
    const WINDOW: Duration = Duration::from_secs(2);
    let sockets = Sockets::new();
    let dir = sockets.dir.path();
    let (ctl, mgmt_path) = (dir.join("sw"), dir.join("sw.mgmt"));
    let switch = common::ProcessGuard::spawn(
        std::process::Command::new("prlimit")
            .args(["--nofile=24:24", "--", env!("CARGO_BIN_EXE_vswitch"), "-s"])
            .arg(&ctl)
            .arg("-M")
            .arg(&mgmt_path)
            .arg("--stream")
            .arg(sockets.stream())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    let pid = nix::unistd::Pid::from_raw(switch.pid() as i32);
    let mut mgmt = common::wait_until(common::STARTUP_TIMEOUT, "the management socket", || {
        common::Mgmt::try_connect(&mgmt_path).ok()
    });
    let mut streams = || mgmt.cmd_ok("port/print").matches("module stream").count();
    let mut conns: Vec<StreamPeer> =
        (0..30).map(|_| StreamPeer(UnixStream::connect(sockets.stream()).expect("queued by the kernel"))).collect();
    common::wait_until(EVENT_TIMEOUT, "some connections to be accepted", || (streams() > 0).then_some(()));
    let accepted = streams();
    assert!(accepted < 30, "the descriptor limit let every connection in");
    // SAFETY: sysconf has no preconditions; it only reads a configuration value.
    let ticks_per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).expect("clock ticks");
    let bound = ticks_per_second * WINDOW.as_secs() / 5;
    let before = cpu_ticks(pid);
    std::thread::sleep(WINDOW);
    let used = cpu_ticks(pid) - before;
    assert!(used <= bound, "the switch used {used} CPU ticks in {WINDOW:?} with connections it cannot accept");
    // The first connections were accepted first; closing them frees
    // descriptors for the waiting ones.
    conns.drain(..accepted.min(5));
    common::wait_until(Duration::from_secs(5), "waiting connections to be accepted", || {
        (streams() > accepted - accepted.min(5)).then_some(())
    });
    let f = frame(BROADCAST, station_mac(40), TEST_ETHERTYPE, 46);
    let last = conns.len() - 1;
    common::wait_until(EVENT_TIMEOUT, "a frame between two connections", || {
        conns[0].send(&f);
        conns[1].recv_timeout(Duration::from_millis(100)).filter(|got| *got == f)
    });
    drop(conns.remove(last));
}

/// Runs `script` (Python) as nobody:nogroup, returning its output.
fn as_nobody(script: &str) -> String {
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--reset-env", "python3", "-c", script])
        .output()
        .expect("run setpriv");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Port ACLs are checked against the peer's kernel credentials: a stream
/// connection or datagram sender of another user does not get a port
/// reserved for root, a root one does, and the description names the user.
#[test]
fn port_acls_apply_to_stream_and_dgram_peers() {
    use std::os::unix::fs::PermissionsExt;
    let sockets = Sockets::new();
    std::fs::set_permissions(sockets.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (s, d) = (sockets.stream(), sockets.dgram());
    let sw =
        Switch::start(Target::Vswitch, &["-m", "666", "--stream", s.to_str().unwrap(), "--dgram", d.to_str().unwrap()]);
    // Port 1, the only one automatic allocation can hand out, exists (a
    // root connection came and went) and admits root only.
    let mut mgmt = sw.mgmt();
    mgmt.cmd_ok("port/setnumports 2");
    drop(StreamPeer(UnixStream::connect(&s).unwrap()));
    common::wait_until(EVENT_TIMEOUT, "port 1 to exist", || {
        let listing = sw.mgmt().cmd_ok("port/allprint");
        (listing.contains("Port 0001") && !listing.contains("module stream")).then_some(())
    });
    mgmt.cmd_ok("port/setuser 1 root");
    let stream_script = format!(
        "import socket\ns=socket.socket(socket.AF_UNIX)\ns.connect({s:?})\ns.settimeout(5)\n\
         print('closed' if s.recv(1)==b'' else 'open')"
    );
    assert_eq!(as_nobody(&stream_script), "closed", "nobody's connection is refused port 1");
    let hello = frame(BROADCAST, station_mac(50), TEST_ETHERTYPE, 46);
    let dgram_script = format!(
        "import socket,tempfile,os\nd=tempfile.mkdtemp()\nu=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\n\
         u.bind(os.path.join(d,'g'))\nu.sendto(bytes({hello:?}),{d:?})\nprint('sent')"
    );
    assert_eq!(as_nobody(&dgram_script), "sent");
    let root = StreamPeer(UnixStream::connect(&s).unwrap());
    let listing = common::wait_until(EVENT_TIMEOUT, "root's stream connection on port 1", || {
        let listing = sw.mgmt().cmd_ok("port/print");
        listing.contains("module stream").then_some(listing)
    });
    assert!(!listing.contains("module dgram"), "nobody's datagram got no port:\n{listing}");
    assert!(listing.contains("user=root"), "{listing}");
    drop(root);
}

/// A stream peer that stops reading gets records written in part (its
/// socket takes some bytes of a record, not all): once it reads again,
/// every record it gets is whole and one that was sent, in order, so a
/// partial write never desynchronises the stream.
#[test]
fn records_written_in_part_are_finished_before_the_next() {
    let sockets = Sockets::new();
    let sw = sockets.start();
    let slow = StreamPeer(UnixStream::connect(sockets.stream()).unwrap());
    let sender = UnixStream::connect(sockets.stream()).unwrap();
    common::wait_until(EVENT_TIMEOUT, "both stream peers' ports", || {
        (sw.mgmt().cmd_ok("port/print").matches("module stream").count() == 2).then_some(())
    });
    // Large frames of odd sizes in one write: the switch sends them to the
    // slow peer in batches larger than its socket takes at once.
    let sent: Vec<Vec<u8>> =
        (0..3000).map(|n| frame(BROADCAST, station_mac(60), TEST_ETHERTYPE, 1000 + n % 477)).collect();
    let bytes: Vec<u8> = sent.iter().flat_map(|f| record(f)).collect();
    sender.set_write_timeout(Some(EVENT_TIMEOUT)).unwrap();
    let _ = (&sender).write_all(&bytes);
    let mut next = 0;
    while let Some(got) = slow.recv_timeout(Duration::from_millis(500)) {
        let at = sent[next..]
            .iter()
            .position(|f| *f == got)
            .unwrap_or_else(|| panic!("received a record that was never sent (or out of order): {} bytes", got.len()));
        next += at + 1;
    }
    assert!(next > 0, "the stream peer received nothing");
    sw.assert_alive();
}
