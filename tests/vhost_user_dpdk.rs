//! DPDK's testpmd as the vhost-user frontend of `--vhost-user PATH`
//! (`net_virtio_user`, guest memory in hugepages): frames of every size a
//! VDE client sends reach testpmd intact and come back (it swaps their MAC
//! addresses); killing testpmd frees its port and a new testpmd attaches.
//! Skipped, saying why, without `dpdk-testpmd`, root or hugepages.

mod common;

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use common::dpdk::{self, Hugepages, Testpmd};
use common::frames::Mac;
use common::{Client, EVENT_TIMEOUT, Station, Switch, TEST_ETHERTYPE, Target, frame, station_mac};

const TESTPMD_MAC: &str = "02:00:00:00:dd:01";
const MAC_VDE: Mac = station_mac(1);
/// What the VDE client addresses its frames to: unknown to the switch, so
/// flooded to testpmd, the only other port.
const MAC_AWAY: Mac = station_mac(2);
/// testpmd takes seconds to map its memory and bring the port up.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);

fn swapped(f: &[u8]) -> Vec<u8> {
    let mut s = f.to_vec();
    s[..6].copy_from_slice(&f[6..12]);
    s[6..12].copy_from_slice(&f[..6]);
    s
}

/// Sends probes until one comes back: the port is up and forwarding.
fn wait_forwarding(vde: &Client, testpmd: &mut Testpmd) {
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    let probe = frame(MAC_AWAY, MAC_VDE, TEST_ETHERTYPE, 46);
    loop {
        assert!(!testpmd.exited(), "testpmd exited");
        vde.send(&probe);
        if let Some(got) = vde.recv_timeout(Duration::from_millis(200)) {
            assert_eq!(got, swapped(&probe), "testpmd's answer to the probe");
            // Late answers to earlier probes.
            while vde.recv_timeout(Duration::from_millis(200)).is_some() {}
            return;
        }
        assert!(Instant::now() < deadline, "no frame came back from testpmd within {ATTACH_TIMEOUT:?}");
    }
}

#[test]
fn testpmd_returns_frames_of_every_size_and_reattaches_after_sigkill() {
    if let Some(why) = dpdk::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let huge = match Hugepages::reserve() {
        Ok(huge) => huge,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let socket: PathBuf = dir.path().join("vhost.sock");
    let sw = Switch::start(Target::Vswitch, &["--vhost-user", socket.to_str().expect("UTF-8 path")]);
    let vde = Client::connect(&sw.ctl_dir(), None, "vde");

    let mut testpmd = Testpmd::macswap(&huge, &socket, TESTPMD_MAC);
    wait_forwarding(&vde, &mut testpmd);
    for len in 60..=1518 {
        let f = frame(MAC_AWAY, MAC_VDE, TEST_ETHERTYPE, len - 14);
        vde.send(&f);
        match vde.recv_timeout(EVENT_TIMEOUT) {
            Some(got) => assert!(got == swapped(&f), "{len}-byte frame came back as {} bytes, changed", got.len()),
            None => panic!("the {len}-byte frame did not come back"),
        }
    }
    let listing = sw.mgmt().cmd_ok("port/print");
    assert!(listing.contains(&format!("module vhost-user  : {}", socket.display())), "{listing}");

    // SIGKILL: the switch sees the control connection end and frees the port.
    drop(testpmd);
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while sw.mgmt().cmd_ok("port/print").contains("module vhost-user") {
        assert!(Instant::now() < deadline, "the killed testpmd's port is still there");
        thread::sleep(Duration::from_millis(50));
    }
    let mut again = Testpmd::macswap(&huge, &socket, TESTPMD_MAC);
    wait_forwarding(&vde, &mut again);
    sw.assert_alive();
}
