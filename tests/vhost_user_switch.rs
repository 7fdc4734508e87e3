//! `--vhost-user PATH` in the switch process: frontends of our own (real
//! socket, memfd guest memory, rings laid out by hand) switched against a
//! VDE client, shown by `port/print`, freed when they go, and frontends
//! that lie in the protocol or the rings losing their own port while
//! everyone else goes on. testpmd's `net_virtio_user` is in
//! `vhost_user_dpdk.rs`; the port's own checks are in `vhost_user.rs`.

mod common;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use common::frames::Mac;
use common::station::exchange;
use common::{BROADCAST, Client, EVENT_TIMEOUT, Station, Switch, TEST_ETHERTYPE, Target, frame, station_mac};
use tempfile::TempDir;
use vswitch::fuzzing::frontend::{
    BUFFERS, EVENT_IDX, Frontend, INDIRECT_DESC, MEM_SIZE, MRG_RXBUF, QUEUE_SIZE, TX, USER_BASE, VERSION_1,
    VRING_DESC_F_NEXT, buffer, request,
};

const FEATURES: u64 = VERSION_1 | MRG_RXBUF | EVENT_IDX | INDIRECT_DESC;
/// Receive buffers a guest keeps posted.
const POSTED: u16 = 64;
const MODULE_LINE: &str = "module vhost-user";

/// A switch with one `--vhost-user` socket.
struct Lab {
    dir: TempDir,
    switch: Switch,
}

impl Lab {
    fn start() -> Lab {
        Lab::start_with(&[])
    }

    fn start_with(args: &[&str]) -> Lab {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("vhost.sock");
        let mut all = vec!["--vhost-user", path.to_str().expect("UTF-8 path")];
        all.extend(args);
        let switch = Switch::start(Target::Vswitch, &all);
        Lab { dir, switch }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("vhost.sock")
    }

    fn vhost_ports(&self) -> usize {
        self.switch.mgmt().cmd_ok("port/print").matches(MODULE_LINE).count()
    }

    fn wait_vhost_ports(&self, n: usize) {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        while self.vhost_ports() != n {
            assert!(
                Instant::now() < deadline,
                "{n} vhost-user ports expected:\n{}",
                self.switch.mgmt().cmd_ok("port/print")
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A well-behaved guest: set up, receive buffers posted, frames received
/// kept in order.
struct Guest {
    front: RefCell<Frontend>,
    received: RefCell<VecDeque<Vec<u8>>>,
}

impl Guest {
    fn attach(lab: &Lab) -> Guest {
        let mut front = Frontend::connect(&lab.socket()).expect("connect to the vhost-user socket");
        front.set_up(FEATURES).expect("set-up messages");
        front.post_receive_buffers(POSTED, 2048);
        Guest { front: RefCell::new(front), received: RefCell::new(VecDeque::new()) }
    }
}

impl Station for Guest {
    fn name(&self) -> &str {
        "vhost-user guest"
    }

    fn send(&self, frame: &[u8]) {
        self.front.borrow_mut().transmit(frame);
    }

    fn recv_timeout(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(frame) = self.received.borrow_mut().pop_front() {
                return Some(frame);
            }
            let mut front = self.front.borrow_mut();
            let frames = front.received();
            if !frames.is_empty() {
                front.post_receive_buffers(frames.len() as u16, 2048);
                self.received.borrow_mut().extend(frames);
                continue;
            }
            if Instant::now() >= deadline {
                return None;
            }
            drop(front);
            thread::sleep(Duration::from_millis(2));
        }
    }
}

const MAC_GUEST: Mac = station_mac(1);
const MAC_VDE: Mac = station_mac(2);
const MAC_OTHER_GUEST: Mac = station_mac(3);

/// A unicast frame of `len` bytes from the guest to the VDE client, and
/// one back, each arriving as sent.
fn both_ways(guest: &Guest, vde: &Client, len: usize) {
    let out = frame(MAC_VDE, MAC_GUEST, TEST_ETHERTYPE, len - 14);
    guest.send(&out);
    vde.expect_frame(&out);
    let back = frame(MAC_GUEST, MAC_VDE, TEST_ETHERTYPE, len - 14);
    vde.send(&back);
    guest.expect_frame(&back);
}

/// A switch started with `args`, a guest and a VDE client that have
/// exchanged frames through it.
fn guest_and_vde(args: &[&str]) -> (Lab, Guest, Client) {
    let lab = Lab::start_with(args);
    let guest = Guest::attach(&lab);
    let vde = Client::connect(&lab.switch.ctl_dir(), None, "vde");
    exchange(&guest, MAC_GUEST, &vde, MAC_VDE);
    (lab, guest, vde)
}

#[test]
fn a_guest_and_a_vde_client_exchange_frames_and_the_port_shows_up() {
    let (lab, guest, vde) = guest_and_vde(&[]);
    exchange(&vde, MAC_VDE, &guest, MAC_GUEST);

    let listing = lab.switch.mgmt().cmd_ok("port/print");
    let description = format!("{MODULE_LINE}  : {} user=root pid={}", lab.socket().display(), std::process::id());
    assert!(listing.contains(&description), "{description:?} in\n{listing}");

    // Every size from the smallest to the largest untagged frame, both ways.
    for len in 60..=1518 {
        both_ways(&guest, &vde, len);
    }
}

/// With `--mtu 9000` a guest's 9018-byte frame (spread over mergeable
/// buffers on the way in) crosses both ways; a longer one reaches nobody,
/// and neither does one over 1518 bytes without the option.
#[test]
fn frames_up_to_the_switch_mtu_cross() {
    for (args, largest) in [(&["--mtu", "9000"][..], 9018), (&[][..], 1518)] {
        let (lab, guest, vde) = guest_and_vde(args);
        both_ways(&guest, &vde, largest);
        guest.send(&frame(MAC_VDE, MAC_GUEST, TEST_ETHERTYPE, largest + 1 - 14));
        // Frames are handled in order: once this one is through, the long
        // one was dealt with.
        exchange(&guest, MAC_GUEST, &vde, MAC_VDE);
        assert_eq!(vde.recv_timeout(Duration::ZERO), None, "a frame over {largest} bytes got through");
        let mut mgmt = lab.switch.mgmt();
        let port = mgmt.find_endpoint(|e| e.contains("vhost.sock")).expect("the guest's port");
        let drops = mgmt.cmd_ok(&format!("port/drops {port}"));
        assert!(drops.contains(" oversize=1 "), "the long frame is counted on the guest's port: {drops}");
    }
}

#[test]
fn two_guests_on_one_socket_get_ports_of_their_own() {
    let lab = Lab::start();
    let (a, b) = (Guest::attach(&lab), Guest::attach(&lab));
    lab.wait_vhost_ports(2);
    exchange(&a, MAC_GUEST, &b, MAC_OTHER_GUEST);
}

#[test]
fn a_guest_that_goes_frees_its_port_and_a_new_one_attaches() {
    let lab = Lab::start();
    let vde = Client::connect(&lab.switch.ctl_dir(), None, "vde");
    for round in 0..3 {
        let guest = Guest::attach(&lab);
        lab.wait_vhost_ports(1);
        exchange(&guest, MAC_GUEST, &vde, MAC_VDE);
        drop(guest);
        lab.wait_vhost_ports(0);
        // The switch learned the guest's MAC on a port now gone: frames to
        // it flood again rather than vanish.
        let to_gone = frame(MAC_GUEST, MAC_VDE, TEST_ETHERTYPE, 46 + round);
        vde.send(&to_gone);
    }
    lab.switch.assert_alive();
}

/// Sets up like a real frontend would, then lies in the way `lie` does.
fn liar(lab: &Lab, lie: impl FnOnce(&mut Frontend)) -> Frontend {
    let mut front = Frontend::connect(&lab.socket()).expect("connect to the vhost-user socket");
    lie(&mut front);
    front
}

/// True once the switch has closed the frontend's connection.
fn closed_by_switch(front: &Frontend) -> bool {
    let fd = front.control().as_raw_fd();
    // SAFETY: a borrowed view of a descriptor the frontend keeps open for
    // the whole call; `ManuallyDrop` keeps it from being closed here.
    let mut stream = std::mem::ManuallyDrop::new(unsafe {
        <std::os::unix::net::UnixStream as std::os::fd::FromRawFd>::from_raw_fd(fd)
    });
    stream.set_read_timeout(Some(EVENT_TIMEOUT)).expect("read timeout");
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn lying_frontends_lose_their_port_and_nobody_else_notices() {
    let (lab, guest, vde) = guest_and_vde(&[]);

    type Lie = fn(&mut Frontend);
    let control_lies: [(&str, Lie); 8] = [
        ("a region past the end of its file", |f| {
            f.set_mem_table(0, MEM_SIZE * 4, USER_BASE, 0, f.memfd.as_raw_fd()).expect("send")
        }),
        ("a memory table without its descriptor", |f| {
            let mut p = 1u32.to_le_bytes().to_vec();
            p.extend_from_slice(&[0; 4]);
            for v in [0, MEM_SIZE, USER_BASE, 0] {
                p.extend_from_slice(&v.to_le_bytes());
            }
            f.send(request::SET_MEM_TABLE, &p, &[]).expect("send")
        }),
        ("a ring outside the memory table", |f| {
            f.set_mem_table(0, MEM_SIZE, USER_BASE, 0, f.memfd.as_raw_fd()).expect("send");
            f.set_vring_addr(TX, 0x1000, USER_BASE + 0x2000, USER_BASE + 0x3000).expect("send")
        }),
        ("a ring size that is not a power of two", |f| f.vring_state(request::SET_VRING_NUM, TX, 100).expect("send")),
        ("a queue that does not exist", |f| f.vring_state(request::SET_VRING_NUM, 7, 256).expect("send")),
        ("an oversized message", |f| f.send(request::SET_OWNER, &vec![0; 0x2000], &[]).expect("send")),
        ("an unknown request", |f| f.send(9999, &[], &[]).expect("send")),
        ("a feature never offered", |f| f.send(request::SET_FEATURES, &(1u64 << 63).to_le_bytes(), &[]).expect("send")),
    ];
    for (what, lie) in control_lies {
        let front = liar(&lab, lie);
        assert!(closed_by_switch(&front), "{what}: the frontend keeps its connection");
        exchange(&guest, MAC_GUEST, &vde, MAC_VDE);
    }

    let ring_lies: [(&str, Lie); 4] = [
        ("a descriptor index beyond the ring", |f| f.make_available(TX, QUEUE_SIZE + 3)),
        ("a descriptor outside guest memory", |f| {
            f.write_desc(TX, 9, MEM_SIZE * 2, 100, 0, 0);
            f.make_available(TX, 9)
        }),
        ("a looping chain", |f| {
            f.write_desc(TX, 10, buffer(TX, 10), 100, VRING_DESC_F_NEXT, 11);
            f.write_desc(TX, 11, buffer(TX, 11), 100, VRING_DESC_F_NEXT, 10);
            f.make_available(TX, 10)
        }),
        ("an available index far ahead", |f| f.set_avail_idx(TX, 5000)),
    ];
    for (what, lie) in ring_lies {
        let bad = Guest::attach(&lab);
        lab.wait_vhost_ports(2);
        lie(&mut bad.front.borrow_mut());
        bad.front.borrow().kick(TX);
        // Whatever the switch made of it, no frame of it reached anyone.
        exchange(&guest, MAC_GUEST, &vde, MAC_VDE);
        assert_eq!(vde.recv_timeout(Duration::ZERO), None, "{what}: a frame reached the VDE client");
        drop(bad);
        lab.wait_vhost_ports(1);
    }

    // The frontend shrinks its memory under a frame the switch is about to
    // read: that port goes, the switch does not die of SIGBUS.
    let shrinking = Guest::attach(&lab);
    lab.wait_vhost_ports(2);
    shrinking.front.borrow_mut().stage(&frame(MAC_VDE, MAC_OTHER_GUEST, TEST_ETHERTYPE, 46));
    shrinking.front.borrow().memfd.set_len(BUFFERS).expect("shrink the guest memory below the buffers");
    shrinking.front.borrow().kick(TX);
    lab.wait_vhost_ports(1);
    exchange(&guest, MAC_GUEST, &vde, MAC_VDE);
    drop(shrinking);

    // Half a message, then nothing: the switch waits for the rest without
    // stalling anyone, and a hang-up ends it.
    let half = liar(&lab, |f| f.send_raw(&[3, 0, 0, 0, 1], &[]).expect("send"));
    exchange(&guest, MAC_GUEST, &vde, MAC_VDE);
    drop(half);
    lab.wait_vhost_ports(1);

    let hello = frame(BROADCAST, MAC_VDE, TEST_ETHERTYPE, 46);
    vde.send(&hello);
    guest.expect_frame(&hello);
    lab.switch.assert_alive();
}

/// The vhost-user socket gets the control socket's mode (`-m`), whatever
/// the umask, as `ctl` does.
#[test]
fn the_socket_has_the_control_sockets_mode() {
    use std::os::unix::fs::PermissionsExt;
    for mode in [None, Some("666"), Some("660")] {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("vhost.sock");
        let mut args = vec!["--vhost-user", path.to_str().expect("UTF-8 path")];
        args.extend(mode.iter().flat_map(|m| ["-m", *m]));
        let sw = Switch::start(Target::Vswitch, &args);
        let mode_of = |p: &std::path::Path| std::fs::metadata(p).expect("socket file").permissions().mode() & 0o777;
        assert_eq!(mode_of(&path), mode_of(&sw.ctl_dir().join("ctl")), "-m {mode:?}");
        if let Some(m) = mode {
            assert_eq!(mode_of(&path), u32::from_str_radix(m, 8).expect("octal"));
        }
    }
}
