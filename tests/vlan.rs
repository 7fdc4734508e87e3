//! VLANs (spec §4.2, §6, checklist 33-39) against vde_switch 2.3.2: the
//! console rules and the retagging of single frames on both switches, a
//! tagged trunk between vswitch and vde_switch that carries VLAN 10 and
//! keeps VLAN 20 apart, and UML guests speaking 802.1Q through the switch.

mod common;
mod lab;

use common::uml::{self, Eth0, GuestSpec, Outcome};
use common::*;
use lab::{cable, data, start};

// ----- console rules and single frames, on both switches --------------------

/// Checklist 33, 38, 39: `vlan/*` argument rules, errors and listings.
fn vlan_commands(target: Target) {
    let sw = Switch::start(target, &[]);
    let mut m = sw.mgmt();
    m.cmd_ok("vlan/create 10");
    assert_eq!(m.cmd("vlan/create 10"), "1017 File exists\n");
    for bad in ["vlan/create 0", "vlan/create 4094", "vlan/create 4095"] {
        assert_eq!(m.cmd(bad), "1022 Invalid argument\n", "{bad}");
    }
    m.cmd_ok("vlan/create 4093");
    m.cmd_ok("port/create 3");
    m.cmd_ok("vlan/addport 10 3");
    assert_eq!(m.cmd("vlan/remove 10"), "1098 Address already in use\n", "an inactive member counts");
    assert_eq!(m.cmd("vlan/delport 0 3"), "1098 Address already in use\n", "the untagged VLAN");
    assert_eq!(m.cmd("vlan/remove 20"), "1006 No such device or address\n");
    let _c = Client::connect(&sw.ctl_dir(), Some(2), "c");
    assert_eq!(
        data(&mut m, "vlan/allprint"),
        "VLAN 0000\n -- Port 0002 tagged=0 active=1 status=Forwarding\n \
         -- Port 0003 tagged=0 active=0 status=Learning\nVLAN 0010\n \
         -- Port 0003 tagged=1 active=0 status=Learning\nVLAN 4093\n"
    );
    assert_eq!(
        data(&mut m, "vlan/print"),
        "VLAN 0000\n -- Port 0002 tagged=0 active=1 status=Forwarding\nVLAN 0010\nVLAN 4093\n"
    );
    assert_eq!(m.cmd("vlan/allprint 0"), "0000 DATA END WITH '.'\n.\n1022 Invalid argument\n");
    assert_eq!(data(&mut m, "vlan/print 0"), "VLAN 0000\n -- Port 0002 tagged=0 active=1 status=Forwarding\n");
    m.cmd_ok("vlan/delport 10 3");
    m.cmd_ok("vlan/delport 10 3");
    m.cmd_ok("vlan/remove 10");
}

/// Port 1 on VLAN 0, port 2 untagged in VLAN 10, port 3 tagged in VLAN 10.
fn vlan10_ports(sw: &Switch) -> (Client, Client, Client) {
    let mut m = sw.mgmt();
    for c in ["vlan/create 10", "port/create 2", "port/setvlan 2 10", "port/create 3", "vlan/addport 10 3"] {
        m.cmd_ok(c);
    }
    let plain = Client::connect(&sw.ctl_dir(), Some(1), "VLAN 0");
    let access = Client::connect(&sw.ctl_dir(), Some(2), "VLAN 10 untagged");
    let trunk = Client::connect(&sw.ctl_dir(), Some(3), "VLAN 10 tagged");
    (plain, access, trunk)
}

fn tagged(untagged: &[u8], tci: u16) -> Vec<u8> {
    let mut f = untagged[..12].to_vec();
    f.extend_from_slice(&[0x81, 0x00]);
    f.extend_from_slice(&tci.to_be_bytes());
    f.extend_from_slice(&untagged[12..]);
    f
}

/// Checklist 34: untagged → tagged gets `81 00 00 0a` (60 → 64 bytes),
/// tagged → untagged loses it, VLAN 0 hears neither; the same for learned
/// unicasts.
fn access_and_trunk_retag(target: Target) {
    let sw = Switch::start(target, &[]);
    let (plain, access, trunk) = vlan10_ports(&sw);
    let hello = frame(BROADCAST, station_mac(2), TEST_ETHERTYPE, 46);
    access.send(&hello);
    trunk.expect_frame(&tagged(&hello, 10));
    let answer = frame(station_mac(2), station_mac(3), TEST_ETHERTYPE, 46);
    trunk.send(&tagged(&answer, 10));
    access.expect_frame(&answer);
    let again = frame(station_mac(3), station_mac(2), TEST_ETHERTYPE, 100);
    access.send(&again);
    trunk.expect_frame(&tagged(&again, 10));
    assert_silent(&[&plain, &access, &trunk]);
}

/// Checklist 35, 36: tagged → tagged keeps PCP and DEI; frames for a VLAN
/// the port is not in, a VLAN that does not exist, or 4095 are dropped but
/// counted as input.
fn tagged_rules(target: Target) {
    let sw = Switch::start(target, &[]);
    let (plain, access, trunk) = vlan10_ports(&sw);
    let mut m = sw.mgmt();
    m.cmd_ok("port/create 4");
    m.cmd_ok("vlan/addport 10 4");
    let trunk2 = Client::connect(&sw.ctl_dir(), Some(4), "second trunk");
    let f = tagged(&frame(BROADCAST, station_mac(3), TEST_ETHERTYPE, 46), 0xb00a);
    trunk.send(&f);
    trunk2.expect_frame(&f);
    access.expect_frame(&frame_untagged(&f));
    let before = m.port(1).expect("port 1").in_pkts;
    for tci in [10, 20, 4095] {
        plain.send(&tagged(&frame(BROADCAST, station_mac(1), TEST_ETHERTYPE, 46), tci));
    }
    assert_silent(&[&plain, &access, &trunk, &trunk2]);
    assert_eq!(m.port(1).expect("port 1").in_pkts, before + 3, "dropped frames still count as IN");
}

fn frame_untagged(tagged: &[u8]) -> Vec<u8> {
    let mut f = tagged[..12].to_vec();
    f.extend_from_slice(&tagged[16..]);
    f
}

/// Checklist 37: a port with `port/setvlan P 4095` neither sends nor
/// receives untagged frames, but its tagged VLANs work.
fn no_untagged_vlan(target: Target) {
    let sw = Switch::start(target, &[]);
    let (plain, access, trunk) = vlan10_ports(&sw);
    sw.mgmt().cmd_ok("port/setvlan 3 4095");
    trunk.send(&frame(BROADCAST, station_mac(3), TEST_ETHERTYPE, 46));
    plain.send(&frame(BROADCAST, station_mac(1), TEST_ETHERTYPE, 46));
    assert_silent(&[&plain, &access, &trunk]);
    let hello = frame(BROADCAST, station_mac(2), TEST_ETHERTYPE, 46);
    access.send(&hello);
    trunk.expect_frame(&tagged(&hello, 10));
}

test_both_targets!(vlan_commands, access_and_trunk_retag, tagged_rules, no_untagged_vlan);

// ----- a trunk between vswitch and vde_switch ---------------------------------

/// Port 1: trunk, tagged in VLAN 10 only; port 2: VLAN 10; port 3: VLAN 20.
const TRUNK_RC: &[&str] = &[
    "vlan/create 10",
    "vlan/create 20",
    "port/create 1",
    "vlan/addport 10 1",
    "port/setvlan 1 4095",
    "port/create 2",
    "port/setvlan 2 10",
    "port/create 3",
    "port/setvlan 3 20",
];

#[test]
fn mixed_trunk_carries_vlan_10_and_keeps_vlan_20_apart() {
    let vs = start(Target::Vswitch, 0x0a, TRUNK_RC, &[]);
    let vde = start(Target::VdeSwitch, 0x0b, TRUNK_RC, &[]);
    let _trunk = cable(&vs, 1, &vde, 1);
    // A second endpoint on vswitch's trunk port sees what goes on the wire.
    let wire = Client::connect(&vs.ctl_dir(), Some(1), "trunk sniffer");
    let a10 = Client::connect(&vs.ctl_dir(), Some(2), "vswitch VLAN 10");
    let a20 = Client::connect(&vs.ctl_dir(), Some(3), "vswitch VLAN 20");
    let plug = |port: u32, descr: &str| {
        let mut p = VdePlug::spawn(&format!("{}[{port}]", vde.ctl_dir().display()), descr);
        p.wait_attached(&mut vde.mgmt(), descr);
        p
    };
    let b10 = plug(2, "b10");
    let b20 = plug(3, "b20");

    let hello = frame(BROADCAST, station_mac(0xa1), TEST_ETHERTYPE, 46);
    a10.send(&hello);
    wire.expect_frame(&tagged(&hello, 10));
    b10.expect_frame(&hello);
    let answer = frame(station_mac(0xa1), station_mac(0xb1), TEST_ETHERTYPE, 46);
    b10.send(&answer);
    a10.expect_frame(&answer);
    let again = frame(station_mac(0xb1), station_mac(0xa1), TEST_ETHERTYPE, 200);
    a10.send(&again);
    wire.expect_frame(&tagged(&again, 10));
    b10.expect_frame(&again);
    assert_silent(&[&wire, &a10, &a20, &b10, &b20]);

    // VLAN 20 exists on both switches but not on the trunk.
    b20.send(&frame(BROADCAST, station_mac(0xb2), TEST_ETHERTYPE, 46));
    a20.send(&frame(BROADCAST, station_mac(0xa2), TEST_ETHERTYPE, 46));
    // Nor does VLAN 10 leak into VLAN 20 on the far side.
    let from_b10 = frame(BROADCAST, station_mac(0xb1), TEST_ETHERTYPE, 46);
    b10.send(&from_b10);
    a10.expect_frame(&from_b10);
    assert_silent(&[&wire, &a10, &a20, &b10, &b20]);

    let expected = "VLAN 0000\nVLAN 0010\n -- Port 0001 tagged=1 active=1 status=Forwarding\n \
                    -- Port 0002 tagged=0 active=1 status=Forwarding\nVLAN 0020\n \
                    -- Port 0003 tagged=0 active=1 status=Forwarding\n";
    let vs_list = data(&mut vs.mgmt(), "vlan/allprint");
    let vde_list = data(&mut vde.mgmt(), "vlan/allprint");
    eprintln!("vlan/allprint, vswitch:\n{vs_list}vlan/allprint, vde_switch:\n{vde_list}");
    assert_eq!(vs_list, expected);
    assert_eq!(vde_list, expected);
}

// ----- UML guests speaking 802.1Q ------------------------------------------

/// Boots the guests on a switch configured like the trunk test and waits for
/// their results.
fn run_guests(target: Target, specs: &[GuestSpec]) -> Outcome<()> {
    let sw = start(target, 0x0a, TRUNK_RC, &[]);
    uml::run_guests(target, &sw.ctl_dir(), specs, || ())
}

/// A guest on the trunk tags its traffic with VLAN 10 itself (`eth0.10`)
/// and reaches an untagged guest in VLAN 10; a guest in VLAN 20 reaches
/// neither. Run on vde_switch too, to show the scenario itself is right.
#[test]
fn uml_guests_speak_8021q_through_the_switch() {
    const SPECS: &[GuestSpec] = &[
        GuestSpec { vlan: Some(10), strangers: &[3], ..GuestSpec::new(1, Eth0::Vde { port: Some(1) }, &[2]) },
        GuestSpec { strangers: &[3], ..GuestSpec::new(2, Eth0::Vde { port: Some(2) }, &[1]) },
        GuestSpec { strangers: &[1, 2], ..GuestSpec::new(3, Eth0::Vde { port: Some(3) }, &[]) },
    ];
    let (ours, theirs) = uml::on_both_targets(|target| run_guests(target, SPECS));
    for out in [&ours, &theirs] {
        let all = out.dump();
        let target = uml::name(out.target);
        assert!(!all.contains("NOVLAN"), "{target}: the UML kernel could not make a VLAN device:\n{all}");
        out.assert_results(SPECS);
    }
}
