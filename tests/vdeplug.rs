//! Interoperability with vdeplug4's `vde_plug` and `dpipe`, and the basic
//! switching behaviour of the conformance checklist (spec §13 items 8, 16,
//! 17, 19, 21–24, 26, 27, 51, 67). Every scenario runs against vswitch and the
//! reference vde_switch with the same assertions, except where spec §12
//! makes vswitch deliberately differ.

mod common;

use std::fs;
use std::process::{Command, Stdio};

use common::*;

use common::station::exchange;

/// Checklist 67: the URL forms of vde_plug land on the right ports with
/// vdeplug4's description, and frames flow between plugs and a raw client.
fn url_forms_attach_and_exchange(target: Target) {
    let sw = Switch::start(target, &[]);
    let dir = sw.ctl_dir().to_str().unwrap().to_owned();
    let mut mgmt = sw.mgmt();

    // Attach one at a time so that automatic allocation is deterministic.
    let mut plain = VdePlug::spawn(&dir, "plain");
    assert_eq!(plain.wait_attached(&mut mgmt, "plain"), 1, "plain DIR");
    let mut url = VdePlug::spawn(&format!("vde://{dir}"), "url");
    assert_eq!(url.wait_attached(&mut mgmt, "url"), 2, "vde://DIR");
    let mut five = VdePlug::spawn(&format!("vde://{dir}[5]"), "five");
    assert_eq!(five.wait_attached(&mut mgmt, "five"), 5, "vde://DIR[5]");
    let mut zero = VdePlug::spawn(&format!("{dir}[0]"), "zero");
    assert_eq!(zero.wait_attached(&mut mgmt, "zero"), 0, "DIR[0]");
    let raw = Client::connect(&sw.ctl_dir(), None, "raw");
    assert_eq!(raw.port(), 3);

    let ports = mgmt.ports();
    let active: Vec<u32> = ports.iter().filter(|p| p.active).map(|p| p.number).collect();
    assert_eq!(active, [0, 1, 2, 3, 5], "active ports in {ports:?}");

    // A broadcast from the raw client reaches every plug, port 0 included.
    let raw_mac = station_mac(0x10);
    let hello = frame(BROADCAST, raw_mac, TEST_ETHERTYPE, 46);
    raw.send(&hello);
    let plugs: [(&VdePlug, [u8; 6]); 4] = [
        (&plain, station_mac(0x11)),
        (&url, station_mac(0x12)),
        (&five, station_mac(0x15)),
        (&zero, station_mac(0x20)),
    ];
    for (plug, _) in plugs {
        plug.expect_frame(&hello);
    }
    // Each plug answers with a unicast that only the raw client gets.
    for (plug, mac) in plugs {
        let answer = frame(raw_mac, mac, TEST_ETHERTYPE, 60);
        plug.send(&answer);
        raw.expect_frame(&answer);
    }
    // Plug to plug, now that all their MACs are learned.
    let across = frame(station_mac(0x15), station_mac(0x20), TEST_ETHERTYPE, 200);
    zero.send(&across);
    five.expect_frame(&across);
    assert_silent(&[&raw, &plain, &url, &five, &zero]);
}

/// The next debug event line, or a panic naming the event awaited.
fn next_event(events: &mut Mgmt, what: &str) -> String {
    events.read_event(EVENT_TIMEOUT).unwrap_or_else(|| panic!("no {what} event within {EVENT_TIMEOUT:?}"))
}

/// Checklist 51: a session with `debug/add port` sees a plug arrive and
/// leave as `port/+`, `port/ep/+`, `port/descr`, then `port/ep/-`, `port/-`.
fn plug_attach_and_detach_events(target: Target) {
    let sw = Switch::start(target, &[]);
    let mut events = sw.mgmt();
    events.cmd_ok("debug/add port");
    let mut plug = VdePlug::spawn(sw.ctl_dir().to_str().unwrap(), "watched");
    let description = plug.expected_description("watched");
    assert_eq!(next_event(&mut events, "port/+"), "3021 port/+ 01");
    let added = next_event(&mut events, "port/ep/+");
    let fd = added
        .strip_prefix("3031 port/ep/+ Port 01 FD ")
        .unwrap_or_else(|| panic!("expected port/ep/+ for port 1, got {added:?}"))
        .to_owned();
    assert_eq!(next_event(&mut events, "port/descr"), format!("3023 port/descr Port 01 FD {fd} -> \"{description}\""));

    // Kill the plug only once it has surely read the handshake reply (its
    // frame got through): if it dies with the reply unread, the switch sees
    // a reset instead of EOF, and vde_switch 2.3.2 then closes the stream
    // but keeps the endpoint.
    plug.send(&frame(BROADCAST, station_mac(1), TEST_ETHERTYPE, 46));
    wait_until(EVENT_TIMEOUT, "the plug's frame to be counted on port 1", || {
        (events.port(1)?.in_pkts == 1).then_some(())
    });
    plug.process().kill();
    assert_eq!(next_event(&mut events, "port/ep/-"), format!("3032 port/ep/- Port 01 FD {fd}"));
    assert_eq!(next_event(&mut events, "port/-"), "3022 port/- 01");
}

/// Two switches cabled with `dpipe vde_plug DIR1 = vde_plug DIR2` pass a
/// broadcast and unicasts in both directions.
fn dpipe_cable_joins_two_switches(target: Target) {
    let sw1 = Switch::start(target, &[]);
    let sw2 = Switch::start(target, &[]);
    let _cable = ProcessGuard::spawn(
        Command::new("dpipe")
            .args(["vde_plug", "-D", "cable"])
            .arg(sw1.ctl_dir())
            .args(["=", "vde_plug", "-D", "cable"])
            .arg(sw2.ctl_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    for sw in [&sw1, &sw2] {
        sw.mgmt().wait_for_endpoint("the cable's vde_plug", |descr| descr.starts_with("cable user="));
    }
    let a = Client::connect(&sw1.ctl_dir(), None, "A on switch 1");
    let b = Client::connect(&sw2.ctl_dir(), None, "B on switch 2");
    exchange(&a, station_mac(1), &b, station_mac(2));
    assert_silent(&[&a, &b]);
}

/// Checklist 8: the reply is a 110-byte sockaddr_un naming `D/001.<n>`
/// for the first client, and that socket carries frames.
fn first_client_gets_001(target: Target) {
    let sw = Switch::start(target, &[]);
    let a = Client::connect(&sw.ctl_dir(), None, "A");
    let ctl_dir = fs::canonicalize(sw.ctl_dir()).unwrap();
    assert_eq!(a.switch_socket().parent(), Some(ctl_dir.as_path()));
    let name = a.switch_socket().file_name().unwrap().to_str().unwrap();
    let suffix = name.strip_prefix("001.").unwrap_or_else(|| panic!("first data socket is {name:?}, expected 001.<n>"));
    assert!(!suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()), "data socket {name:?}");
    let b = Client::connect(&sw.ctl_dir(), None, "B");
    exchange(&a, station_mac(1), &b, station_mac(2));
}

/// Checklist 16: automatic ports are 1, 2, 3… skipping active ports and
/// ports marked not allocatable, never 0; a port left empty is reused.
fn automatic_port_allocation(target: Target) {
    let sw = Switch::start(target, &[]);
    let mut mgmt = sw.mgmt();
    mgmt.cmd_ok("port/create 2");
    let dir = sw.ctl_dir();
    let explicit = Client::connect(&dir, Some(4), "explicit 4");
    assert_eq!(explicit.port(), 4);
    let autos: Vec<Client> = (0..3).map(|i| Client::connect(&dir, None, &format!("auto {i}"))).collect();
    let ports: Vec<u32> = autos.iter().map(Client::port).collect();
    assert_eq!(ports, [1, 3, 5]);

    let mut leaving = Client::connect(&dir, None, "leaving");
    assert_eq!(leaving.port(), 6);
    leaving.close_ctl();
    wait_until(EVENT_TIMEOUT, "port 6 to become inactive", || mgmt.port(6).filter(|p| !p.active).map(|_| ()));
    assert_eq!(Client::connect(&dir, None, "reuse").port(), 6);
}

/// Checklist 17: a second client on the same port is a second endpoint,
/// listed before the first; both receive what is sent to the port.
fn two_endpoints_share_a_port(target: Target) {
    let sw = Switch::start(target, &[]);
    let dir = sw.ctl_dir();
    let first = Client::connect(&dir, Some(7), "first");
    let second = Client::connect(&dir, Some(7), "second");
    assert_eq!((first.port(), second.port()), (7, 7));
    let port = sw.mgmt().port(7).expect("port 7 exists");
    assert_eq!(port.endpoints, ["second", "first"], "newest endpoint first");

    let other = Client::connect(&dir, None, "other");
    let hello = frame(BROADCAST, station_mac(1), TEST_ETHERTYPE, 46);
    other.send(&hello);
    first.expect_frame(&hello);
    second.expect_frame(&hello);
}

/// Checklist 19: closing the control stream removes the endpoint and its
/// data socket; the port stays, inactive, with its counters.
fn closing_control_stream_detaches(target: Target) {
    let sw = Switch::start(target, &[]);
    let mut mgmt = sw.mgmt();
    let mut a = Client::connect(&sw.ctl_dir(), None, "A");
    let b = Client::connect(&sw.ctl_dir(), None, "B");
    exchange(&a, station_mac(1), &b, station_mac(2));
    let before = mgmt.port(1).expect("port 1");
    assert!(before.active && before.in_pkts == 2, "{before:?}");

    let data_socket = a.switch_socket().to_owned();
    assert!(data_socket.exists());
    a.close_ctl();
    wait_until(EVENT_TIMEOUT, "the data socket to be unlinked", || (!data_socket.exists()).then_some(()));
    let after = wait_until(EVENT_TIMEOUT, "port 1 to become inactive", || mgmt.port(1).filter(|p| !p.active));
    assert_eq!(after, PortStatus { active: false, endpoints: vec![], ..before });
    // Nothing is delivered to the departed client any more.
    b.send(&frame(BROADCAST, station_mac(2), TEST_ETHERTYPE, 46));
    assert_silent(&[&a]);
}

/// Stations for the forwarding scenarios: A and C share port 1, B is on
/// port 2, D and E share port 3.
struct Lan {
    a: Client,
    c: Client,
    b: Client,
    d: Client,
    e: Client,
}

const MAC_A: [u8; 6] = station_mac(0x0a);
const MAC_B: [u8; 6] = station_mac(0x0b);

impl Lan {
    fn attach(sw: &Switch) -> Lan {
        let dir = sw.ctl_dir();
        Lan {
            a: Client::connect(&dir, Some(1), "A (port 1)"),
            c: Client::connect(&dir, Some(1), "C (port 1)"),
            b: Client::connect(&dir, Some(2), "B (port 2)"),
            d: Client::connect(&dir, Some(3), "D (port 3)"),
            e: Client::connect(&dir, Some(3), "E (port 3)"),
        }
    }

    fn all(&self) -> [&dyn Station; 5] {
        [&self.a, &self.c, &self.b, &self.d, &self.e]
    }
}

/// Checklist 21: a broadcast reaches every endpoint of every other port
/// exactly once, and no endpoint of the sending port.
fn broadcast_reaches_other_ports_once(target: Target) {
    let sw = Switch::start(target, &[]);
    let lan = Lan::attach(&sw);
    let hello = frame(BROADCAST, MAC_A, TEST_ETHERTYPE, 46);
    lan.a.send(&hello);
    for station in [&lan.b, &lan.d, &lan.e] {
        station.expect_frame(&hello);
    }
    assert_silent(&lan.all());
}

/// Checklists 22 and 23: a unicast to a learned MAC reaches only that
/// port's endpoints; an unknown unicast is flooded like a broadcast.
fn unicast_follows_learning(target: Target) {
    let sw = Switch::start(target, &[]);
    let lan = Lan::attach(&sw);
    let unknown = frame(station_mac(0x99), MAC_A, TEST_ETHERTYPE, 46);
    lan.a.send(&unknown);
    for station in [&lan.b, &lan.d, &lan.e] {
        station.expect_frame(&unknown);
    }
    assert_silent(&lan.all());

    let reply = frame(MAC_A, MAC_B, TEST_ETHERTYPE, 46);
    lan.b.send(&reply);
    lan.a.expect_frame(&reply);
    lan.c.expect_frame(&reply);
    let back = frame(MAC_B, MAC_A, TEST_ETHERTYPE, 46);
    lan.a.send(&back);
    lan.b.expect_frame(&back);
    assert_silent(&lan.all());
}

/// Checklist 24: a frame whose source MAC has the multicast bit is
/// forwarded but not learned (a unicast source is, as a control).
fn multicast_source_is_not_learned(target: Target) {
    let sw = Switch::start(target, &[]);
    let a = Client::connect(&sw.ctl_dir(), None, "A");
    let b = Client::connect(&sw.ctl_dir(), None, "B");
    let group_source = [0x03, 0, 0, 0, 0, 0x0a];
    let odd = frame(BROADCAST, group_source, TEST_ETHERTYPE, 46);
    a.send(&odd);
    b.expect_frame(&odd);
    let normal = frame(BROADCAST, MAC_A, TEST_ETHERTYPE, 46);
    a.send(&normal);
    b.expect_frame(&normal);
    let table = sw.mgmt().cmd_ok("hash/print");
    assert!(table.contains("Addr: 02:00:00:00:00:0a "), "{table}");
    assert!(!table.contains("03:00:00:00:00:0a"), "{table}");
}

/// Checklist 26: runts (< 14 bytes) are dropped, short frames are delivered
/// unpadded, and datagrams over 1518 bytes are truncated by vde_switch but
/// dropped by vswitch (spec §12).
fn frame_size_limits(target: Target) {
    let sw = Switch::start(target, &[]);
    let a = Client::connect(&sw.ctl_dir(), None, "A");
    let b = Client::connect(&sw.ctl_dir(), None, "B");
    for runt_len in [1, 6, 13] {
        a.send(&frame(BROADCAST, MAC_A, TEST_ETHERTYPE, 14)[..runt_len]);
    }
    for len in [14, 20, 59, 60, 1518] {
        let f = frame(BROADCAST, MAC_A, TEST_ETHERTYPE, len - 14);
        a.send(&f);
        b.expect_frame(&f);
    }
    for len in [1519, 2000] {
        let f = frame(BROADCAST, MAC_A, TEST_ETHERTYPE, len - 14);
        a.send(&f);
        match target {
            Target::VdeSwitch => b.expect_frame(&f[..1518]),
            Target::Vswitch => assert_silent(&[&b]),
        }
    }
    assert_silent(&[&a, &b]);
}

/// Checklist 27: IN/OUT packet and byte counters per port; OUT counts once
/// per port even when the port has two endpoints.
fn port_counters(target: Target) {
    let sw = Switch::start(target, &[]);
    let dir = sw.ctl_dir();
    let a = Client::connect(&dir, Some(1), "A");
    let b1 = Client::connect(&dir, Some(2), "B1");
    let b2 = Client::connect(&dir, Some(2), "B2");
    let mac_b1 = station_mac(0xb1);

    let hello = frame(BROADCAST, MAC_A, TEST_ETHERTYPE, 46); // 60 bytes
    a.send(&hello);
    b1.expect_frame(&hello);
    b2.expect_frame(&hello);
    let answer = frame(MAC_A, mac_b1, TEST_ETHERTYPE, 86); // 100 bytes
    b1.send(&answer);
    a.expect_frame(&answer);
    let to_b1 = frame(mac_b1, MAC_A, TEST_ETHERTYPE, 56); // 70 bytes
    a.send(&to_b1);
    b1.expect_frame(&to_b1);
    b2.expect_frame(&to_b1);
    assert_silent(&[&a, &b1, &b2]);

    let mut mgmt = sw.mgmt();
    let port1 = mgmt.port(1).expect("port 1");
    let port2 = mgmt.port(2).expect("port 2");
    let counters = |p: &PortStatus| (p.in_pkts, p.in_bytes, p.out_pkts, p.out_bytes);
    assert_eq!(counters(&port1), (2, 130, 1, 100), "port 1: {port1:?}");
    assert_eq!(counters(&port2), (1, 100, 2, 130), "port 2: {port2:?}");
}

test_both_targets!(
    url_forms_attach_and_exchange,
    plug_attach_and_detach_events,
    dpipe_cable_joins_two_switches,
    first_client_gets_001,
    automatic_port_allocation,
    two_endpoints_share_a_port,
    closing_control_stream_detaches,
    broadcast_reaches_other_ports_once,
    unicast_follows_learning,
    multicast_source_is_not_learned,
    frame_size_limits,
    port_counters,
);
