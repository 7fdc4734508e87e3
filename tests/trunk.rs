//! VLAN-transparent trunks (`--trunk`, `port/settrunk N 0/1`): tagged
//! frames of VLANs the switch has not configured cross the trunk ports
//! with their tag, learned per (MAC, VID), so guests with VLAN
//! subinterfaces work without `--hub`. Configured VLANs and untagged
//! frames keep vde_switch's rules, and without the options nothing changes.

mod common;
mod lab;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use common::frames::Mac;
use common::uml::{self, Eth0, GuestSpec};
use common::*;
use lab::start;

fn tagged(untagged: &[u8], tci: u16) -> Vec<u8> {
    let mut f = untagged[..12].to_vec();
    f.extend_from_slice(&[0x81, 0x00]);
    f.extend_from_slice(&tci.to_be_bytes());
    f.extend_from_slice(&untagged[12..]);
    f
}

/// A frame from station `src` to `dst` in `vid` (`None`: untagged).
fn from(src: u8, dst: Mac, vid: Option<u16>) -> Vec<u8> {
    let f = frame(dst, station_mac(src), TEST_ETHERTYPE, 46);
    match vid {
        Some(vid) => tagged(&f, vid),
        None => f,
    }
}

#[test]
fn trunks_switch_unconfigured_vlans_with_the_tag_untouched() {
    let sw = Switch::start(Target::Vswitch, &["--trunk"]);
    let dir = sw.ctl_dir();
    let (a, b, c) =
        (Client::connect(&dir, None, "a"), Client::connect(&dir, None, "b"), Client::connect(&dir, None, "c"));
    let hello = from(1, BROADCAST, Some(100));
    a.send(&hello);
    b.expect_frame(&hello);
    c.expect_frame(&hello);
    // Learned per (MAC, VID): the answer and what follows go to one port,
    // priority bits and all.
    let answer = from(2, station_mac(1), Some(0xa000 | 100));
    b.send(&answer);
    a.expect_frame(&answer);
    let again = from(1, station_mac(2), Some(100));
    a.send(&again);
    b.expect_frame(&again);
    assert_silent(&[&a, &b, &c]);
    // Station 1 is unknown in VID 200: flooded there.
    let other = from(3, station_mac(1), Some(200));
    c.send(&other);
    a.expect_frame(&other);
    b.expect_frame(&other);
    // Untagged frames keep VLAN 0's rules.
    let plain = from(1, BROADCAST, None);
    a.send(&plain);
    b.expect_frame(&plain);
    c.expect_frame(&plain);
    assert_silent(&[&a, &b, &c]);
    let table = sw.mgmt().cmd_ok("hash/print");
    assert!(table.contains("Addr: 02:00:00:00:00:01 VLAN 0100 to port: 001"), "{table}");
    assert!(table.contains("Addr: 02:00:00:00:00:02 VLAN 0100 to port: 002"), "{table}");
}

/// `port/settrunk` from an rc file: only ports 1 and 2 are trunks; port 3
/// neither sends nor hears VID 100, and a configured VLAN 10 keeps its
/// membership rules on the trunks.
#[test]
fn settrunk_from_an_rc_file_and_configured_vlans() {
    let rc = ["port/create 1", "port/settrunk 1 1", "port/create 2", "port/settrunk 2 1", "vlan/create 10"];
    let sw = start(Target::Vswitch, 0x0a, &rc, &[]);
    let dir = sw.ctl_dir();
    let a = Client::connect(&dir, Some(1), "a");
    let b = Client::connect(&dir, Some(2), "b");
    let plain = Client::connect(&dir, Some(3), "plain");
    let hello = from(1, BROADCAST, Some(100));
    a.send(&hello);
    b.expect_frame(&hello);
    plain.send(&from(3, BROADCAST, Some(100)));
    a.send(&from(1, BROADCAST, Some(10)));
    assert_silent(&[&a, &b, &plain]);
    let mut m = sw.mgmt();
    m.cmd_ok("vlan/addport 10 1");
    m.cmd_ok("vlan/addport 10 2");
    let ten = from(1, BROADCAST, Some(10));
    a.send(&ten);
    b.expect_frame(&ten);
    m.cmd_ok("port/settrunk 2 0");
    a.send(&from(1, BROADCAST, Some(100)));
    assert_silent(&[&a, &b, &plain]);
}

/// Without the options a tagged frame of an unconfigured VLAN is dropped by
/// both switches alike, and `port/settrunk` is unknown to vde_switch.
fn off_by_default(target: Target) {
    let sw = Switch::start(target, &[]);
    let dir = sw.ctl_dir();
    let (a, b) = (Client::connect(&dir, None, "a"), Client::connect(&dir, None, "b"));
    a.send(&from(1, BROADCAST, Some(100)));
    assert_silent(&[&a, &b]);
    let mut m = sw.mgmt();
    assert_eq!(m.port(1).expect("port 1").in_pkts, 1);
    let expected = match target {
        Target::VdeSwitch => "1038 Function not implemented\n",
        Target::Vswitch => "1000 Success\n",
    };
    assert_eq!(m.cmd("port/settrunk 1 1"), expected);
}

test_both_targets!(off_by_default);

/// Drains `sniffer` in a thread until told to stop; returns what it got.
fn sniff(sniffer: Client, stop: Arc<AtomicBool>) -> thread::JoinHandle<Vec<Vec<u8>>> {
    thread::spawn(move || {
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            seen.extend(sniffer.recv_timeout(Duration::from_millis(50)));
        }
        seen
    })
}

fn vid(frame: &[u8]) -> Option<u16> {
    (frame.len() >= 16 && frame[12..14] == [0x81, 0x00]).then(|| u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff)
}

/// UML guests with `eth0.100` on a `--trunk` switch (no `--hub`) reach each
/// other; a guest on `eth0.200` reaches neither, and the port it sits on
/// (watched by a second endpoint) carries VID 100 broadcasts but none of
/// VID 100's unicasts, which the switch learned.
#[test]
fn uml_guests_with_vlan_subinterfaces_on_a_trunk_switch() {
    const SPECS: &[GuestSpec] = &[
        GuestSpec { vlan: Some(100), strangers: &[3], ..GuestSpec::new(1, Eth0::Vde { port: Some(1) }, &[2]) },
        GuestSpec { vlan: Some(100), strangers: &[3], ..GuestSpec::new(2, Eth0::Vde { port: Some(2) }, &[1]) },
        GuestSpec { vlan: Some(200), strangers: &[1, 2], ..GuestSpec::new(3, Eth0::Vde { port: Some(3) }, &[]) },
    ];
    let sw = Switch::start(Target::Vswitch, &["--trunk"]);
    let stop = Arc::new(AtomicBool::new(false));
    let sniffer = sniff(Client::connect(&sw.ctl_dir(), Some(3), "watching guest 3's port"), stop.clone());
    let outcome = uml::run_guests(Target::Vswitch, &sw.ctl_dir(), SPECS, || ());
    stop.store(true, Ordering::Relaxed);
    let seen = sniffer.join().expect("sniffer thread");
    let all = outcome.dump();
    assert!(!all.contains("NOVLAN"), "the UML kernel could not make a VLAN device:\n{all}");
    outcome.assert_results(SPECS);
    let vid100: Vec<&Vec<u8>> = seen.iter().filter(|f| vid(f) == Some(100)).collect();
    assert!(vid100.iter().any(|f| f[..6] == BROADCAST), "port 3 saw no VID 100 broadcast at all");
    let unicast: Vec<String> = vid100.iter().filter(|f| f[0] & 1 == 0).map(|f| describe(f)).collect();
    assert!(unicast.is_empty(), "VID 100 unicasts reached guest 3's port: {unicast:?}");
}
