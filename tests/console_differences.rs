//! Console differences found by replaying generated command sequences
//! (clients attaching, sending and leaving) on vswitch and vde_switch
//! 2.3.2 side by side. Each is either matched byte for byte here, or kept
//! on purpose (README, "Where vswitch differs") and each switch's own rule
//! is asserted.

mod common;
#[path = "fixtures/console/support.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use support::{Console, mask};
use vswitch::wire::RequestKind;

/// The MAC in a `hash/print` row or a `hash/-` event line.
fn mac_in(line: &str) -> Option<&str> {
    line.split_whitespace().find(|w| w.len() == 17 && w.matches(':').count() == 5)
}

/// Stations `first..first+n` speak from `from` (each broadcast read by
/// `to`, so no socket fills up).
fn speak(from: &Client, to: &Client, first: u8, n: u8) {
    for i in first..first + n {
        let hello = frame(BROADCAST, station_mac(i), TEST_ETHERTYPE, 46);
        from.send(&hello);
        to.expect_frame(&hello);
    }
}

/// `hash/setsize` forgets every station, announcing each in the order of
/// `hash/print` (bucket ascending, newest first), as vde_switch's flush
/// walks its buckets. Returns the reply with its events.
fn flush_events(target: Target) -> String {
    let sw = Switch::start(target, &[]);
    let (a, b) = (Client::connect(&sw.ctl_dir(), None, "a"), Client::connect(&sw.ctl_dir(), None, "b"));
    speak(&a, &b, 1, 20);
    speak(&b, &a, 21, 20);
    let mut console = Console::open(&sw.mgmt_path());
    let listed = console.cmd("hash/print");
    let listed: Vec<&str> = listed.lines().filter(|l| l.starts_with("Hash: ")).filter_map(mac_in).collect();
    assert_eq!(listed.len(), 40, "{target:?}: every station learned");
    assert_eq!(console.cmd("debug/add hash"), "1000 Success\n");
    let reply = console.cmd("hash/setsize 64");
    let deleted: Vec<&str> = reply.lines().filter(|l| l.starts_with("3012 hash/- ")).filter_map(mac_in).collect();
    assert_eq!(deleted, listed, "{target:?}: flush events in hash/print order");
    reply
}

#[test]
fn table_flush_events_come_in_vde_switch_order() {
    assert_eq!(flush_events(Target::Vswitch), flush_events(Target::VdeSwitch));
}

/// `port/create 0` and `port/create` reserve the lowest free port, unless
/// port 0 exists: then, like any other existing port, `1017 File exists`.
fn create_0_while_port_0_exists(target: Target) {
    let sw = Switch::start(target, &[]);
    let mut console = Console::open(&sw.mgmt_path());
    assert_eq!(console.cmd("port/create 0"), "1000 Success\n", "{target:?}: no port 0 yet");
    let _zero = Client::connect_as(&sw.ctl_dir(), RequestKind::NewPort0, 0, b"port 0");
    let ports = console.cmd("port/allprint 0");
    assert!(ports.contains("Port 0000 untagged_vlan=0000 ACTIVE"), "{target:?}: {ports}");
    assert_eq!(console.cmd("port/create 0"), "1017 File exists\n", "{target:?}");
    assert_eq!(console.cmd("port/create"), "1017 File exists\n", "{target:?}");
}

test_both_targets!(create_0_while_port_0_exists);

/// A description with bytes that are not UTF-8 (Latin-1 `é`): `port/print`
/// and the `port/descr` event print them as sent. A control byte is shown
/// as `?` by vswitch only (kept on purpose).
fn description_bytes(target: Target) -> String {
    let sw = Switch::start(target, &[]);
    let mut events = Console::open(&sw.mgmt_path());
    assert_eq!(events.cmd("debug/add port/descr"), "1000 Success\n");
    let client = Client::connect_as(&sw.ctl_dir(), RequestKind::NewControl, 0, b"caf\xe9 \x01 \xc3\xa9t\xe9");
    let event = events.cmd_raw("port/showinfo");
    let printed = events.cmd_raw(&format!("port/print {}", client.port()));
    let shown: &[u8] = match target {
        Target::VdeSwitch => b"caf\xe9 \x01 \xc3\xa9t\xe9",
        Target::Vswitch => b"caf\xe9 ? \xc3\xa9t\xe9",
    };
    for (what, reply) in [("port/descr event", &event), ("port/print", &printed)] {
        let found = reply.windows(shown.len()).any(|w| w == shown);
        assert!(found, "{target:?}: {what} does not show {shown:?}: {:?}", String::from_utf8_lossy(reply));
    }
    let both = [event, printed].concat().iter().map(|&b| if b == 1 { b'?' } else { b }).collect::<Vec<u8>>();
    mask(&String::from_utf8_lossy(&both), Path::new("/nonexistent"))
}

#[test]
fn description_bytes_are_printed_as_sent() {
    assert_eq!(description_bytes(Target::Vswitch), description_bytes(Target::VdeSwitch));
}

/// `port/print` of an active port with `port/setuser`: vde_switch prints
/// the current user twice (both names come from one static buffer of
/// `getpwuid`); vswitch prints the ACL's user, on purpose.
fn acl_user_in_port_print(target: Target) {
    let sw = Switch::start(target, &[]);
    let mut console = Console::open(&sw.mgmt_path());
    assert_eq!(console.cmd("port/create 5"), "1000 Success\n");
    assert_eq!(console.cmd("port/setuser 5 nobody"), "1000 Success\n");
    let _root = Client::connect(&sw.ctl_dir(), Some(5), "root's client");
    let reply = console.cmd("port/print 5");
    let acl_user = match target {
        Target::VdeSwitch => "root",
        Target::Vswitch => "nobody",
    };
    let expected = format!(" Current User: root Access Control: (User: {acl_user} - Group: NONE)\n");
    assert!(reply.contains(&expected), "{target:?}: {reply}");
}

test_both_targets!(acl_user_in_port_print);

/// `port/setvlan` on an active port: vde_switch forgets every station (as
/// on any port activation), vswitch only the stations of that port.
fn setvlan_forgets(target: Target) {
    let sw = Switch::start(target, &[]);
    let (a, b) = (Client::connect(&sw.ctl_dir(), None, "a"), Client::connect(&sw.ctl_dir(), None, "b"));
    speak(&a, &b, 0x0a, 1);
    speak(&b, &a, 0x0b, 1);
    let mut console = Console::open(&sw.mgmt_path());
    assert_eq!(console.cmd("vlan/create 10"), "1000 Success\n");
    assert_eq!(console.cmd("debug/add hash/-"), "1000 Success\n");
    let mut deleted = console.cmd(&format!("port/setvlan {} 10", a.port()));
    deleted.push_str(&console.drain_for(Duration::from_millis(150)));
    let forgotten: Vec<&str> = deleted.lines().filter(|l| l.starts_with("3012 ")).filter_map(mac_in).collect();
    let expected = match target {
        Target::VdeSwitch => vec!["02:00:00:00:00:0a", "02:00:00:00:00:0b"],
        Target::Vswitch => vec!["02:00:00:00:00:0a"],
    };
    let mut sorted = forgotten.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, expected, "{target:?}: {deleted}");
}

test_both_targets!(setvlan_forgets);

/// Whether a BPDU with the topology-change flag arrives within `wait`.
fn topology_change_within(peer: &Client, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Some(f) = peer.recv_timeout(left) else { return false };
        // Flags follow the tag, length, LLC header, protocol id, version
        // and type; bit 0 is topology change.
        if f.starts_with(&[0x01, 0x80, 0xc2, 0, 0, 0]) && f.len() > 25 && f[25] & 1 == 1 {
            return true;
        }
    }
    false
}

/// With FSTP on, `vlan/delport` of an active port that is not in the VLAN
/// still makes the VLAN announce a topology change: one more BPDU on its
/// FSTP ports (here port 3, which heard a BPDU in VLAN 10).
fn delport_of_a_stranger_announces_a_change(target: Target) {
    let sw = Switch::start(target, &["-F", "--macaddr", "02:00:00:00:00:f1"]);
    let mut console = Console::open(&sw.mgmt_path());
    for command in ["vlan/create 10", "port/create 3", "vlan/addport 10 3"] {
        assert_eq!(console.cmd(command), "1000 Success\n", "{command}");
    }
    let peer = Client::connect(&sw.ctl_dir(), Some(3), "fstp peer");
    let _stranger = Client::connect(&sw.ctl_dir(), Some(4), "not in VLAN 10");
    // Root 0001:02:00:00:00:00:99 on VLAN 10, from its port 1.
    let better = "0180c20000000200000000998100000a0027424203000002023c00010200000000990000000000010200000000998001000028000400000000";
    let better: Vec<u8> =
        (0..better.len()).step_by(2).map(|i| u8::from_str_radix(&better[i..i + 2], 16).unwrap()).collect();
    peer.send(&better);
    while peer.recv_timeout(Duration::from_millis(300)).is_some() {}
    assert_eq!(console.cmd("vlan/delport 10 4"), "1000 Success\n");
    assert!(topology_change_within(&peer, Duration::from_secs(1)), "{target:?}: no topology change BPDU");
}

test_both_targets!(delport_of_a_stranger_announces_a_change);

/// `vlan/delport` of an active port that is not in the VLAN, FSTP off:
/// vde_switch forgets that port's stations and every station of the VLAN;
/// vswitch forgets nothing (kept on purpose, as for `port/setvlan`).
fn delport_of_a_stranger_forgets(target: Target) {
    let sw = Switch::start(target, &[]);
    let mut console = Console::open(&sw.mgmt_path());
    for command in ["vlan/create 10", "port/create 1", "vlan/addport 10 1", "port/create 2", "vlan/addport 10 2"] {
        assert_eq!(console.cmd(command), "1000 Success\n", "{command}");
    }
    let (a, b) = (Client::connect(&sw.ctl_dir(), Some(1), "a"), Client::connect(&sw.ctl_dir(), Some(2), "b"));
    let stranger = Client::connect(&sw.ctl_dir(), Some(3), "stranger");
    for (from, to, n) in [(&a, &b, 0x0a), (&b, &a, 0x0b)] {
        let hello = frame(BROADCAST, station_mac(n), TEST_ETHERTYPE, 46);
        let mut tagged = hello[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x0a]);
        tagged.extend_from_slice(&hello[12..]);
        from.send(&tagged);
        to.expect_frame(&tagged);
    }
    speak(&stranger, &a, 0x0c, 1);
    assert_eq!(console.cmd("debug/add hash/-"), "1000 Success\n");
    let mut deleted = console.cmd("vlan/delport 10 3");
    deleted.push_str(&console.drain_for(Duration::from_millis(150)));
    let mut forgotten: Vec<&str> = deleted.lines().filter(|l| l.starts_with("3012 ")).filter_map(mac_in).collect();
    forgotten.sort_unstable();
    let expected = match target {
        Target::VdeSwitch => vec!["02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"],
        Target::Vswitch => vec![],
    };
    assert_eq!(forgotten, expected, "{target:?}: {deleted}");
}

test_both_targets!(delport_of_a_stranger_forgets);
