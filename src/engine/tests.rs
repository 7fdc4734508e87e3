//! Engine behaviour, driven with a virtual clock and no sockets.

use super::*;

fn mac(n: u8) -> Mac {
    Mac([2, 0, 0, 0, 0, n])
}

fn frame(dst: Mac, src: Mac, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f
}

fn tagged(dst: Mac, src: Mac, tci: u16, len: usize) -> Vec<u8> {
    let mut f = frame(dst, src, len);
    f[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
    f[14..16].copy_from_slice(&tci.to_be_bytes());
    f
}

struct Lab {
    sw: Switch,
    now: u64,
    next_id: u32,
}

impl Lab {
    fn new() -> Self {
        Lab { sw: Switch::new(DEFAULT_NUMPORTS, false, DEFAULT_BUCKETS), now: 0, next_id: 3 }
    }

    fn hub() -> Self {
        Lab { sw: Switch::new(DEFAULT_NUMPORTS, true, DEFAULT_BUCKETS), ..Lab::new() }
    }

    fn plug(&mut self, request: PortRequest) -> EndpointKey {
        self.next_id += 1;
        let a = Attach {
            request,
            id: self.next_id,
            module: "unix prog",
            description: format!("ep{}", self.next_id).into_bytes(),
            user: Some(0),
            credentials: Credentials::default(),
        };
        self.sw.attach(a).unwrap().0
    }

    fn port_of(&self, k: EndpointKey) -> PortId {
        self.sw.endpoint(k).unwrap().port
    }

    fn send(&mut self, from: EndpointKey, bytes: &[u8]) -> Vec<Delivery> {
        let mut out = Vec::new();
        let _ = self.sw.ingress(from, bytes, self.now, &mut out);
        out
    }

    fn targets(&mut self, from: EndpointKey, bytes: &[u8]) -> Vec<EndpointKey> {
        let mut t: Vec<_> = self.send(from, bytes).iter().map(|d| d.endpoint).collect();
        t.sort();
        t
    }

    fn advance(&mut self, secs: u64) {
        for _ in 0..secs {
            self.now += 1;
            self.sw.tick(self.now);
        }
    }
}

#[test]
fn auto_allocation_is_lowest_free_port_from_one() {
    let mut lab = Lab::new();
    let a = lab.plug(PortRequest::Any);
    let b = lab.plug(PortRequest::Any);
    assert_eq!((lab.port_of(a), lab.port_of(b)), (1, 2));
    lab.sw.detach(a);
    let c = lab.plug(PortRequest::Any);
    assert_eq!(lab.port_of(c), 1, "an inactive allocatable port is reused");
    lab.sw.create_explicit_port(3).unwrap();
    let d = lab.plug(PortRequest::Any);
    assert_eq!(lab.port_of(d), 4, "explicitly created ports are skipped");
    let e = lab.plug(PortRequest::Port(3));
    assert_eq!(lab.port_of(e), 3, "but can be asked for by number");
    let z = lab.plug(PortRequest::Zero);
    assert_eq!(lab.port_of(z), 0);
}

#[test]
fn port_range_and_exhaustion() {
    let mut lab = Lab { sw: Switch::new(3, false, 128), ..Lab::new() };
    let req = |request| Attach {
        request,
        id: 1,
        module: "unix prog",
        description: Vec::new(),
        user: None,
        credentials: Credentials::default(),
    };
    assert_eq!(lab.sw.attach(req(PortRequest::Port(3))).unwrap_err(), AttachError::OutOfRange(3));
    lab.plug(PortRequest::Any);
    lab.plug(PortRequest::Any);
    assert_eq!(lab.sw.attach(req(PortRequest::Any)).unwrap_err(), AttachError::NoFreePort);
}

#[test]
fn another_user_cannot_join_an_active_port() {
    let mut lab = Lab::new();
    lab.plug(PortRequest::Port(5));
    let stranger = Attach {
        request: PortRequest::Port(5),
        id: 99,
        module: "unix prog",
        description: Vec::new(),
        user: Some(1000),
        credentials: Credentials { uid: 1000, gids: vec![1000] },
    };
    assert_eq!(lab.sw.attach(stranger).unwrap_err(), AttachError::InUseByOtherUser(5));
}

#[test]
fn abstract_clients_of_different_users_cannot_share_a_port() {
    let mut lab = Lab::new();
    let abstract_client = |uid| Attach {
        request: PortRequest::Port(5),
        id: uid,
        module: "unix prog",
        description: Vec::new(),
        user: None,
        credentials: Credentials { uid, gids: vec![uid] },
    };
    assert!(lab.sw.attach(abstract_client(1000)).is_ok());
    assert_eq!(lab.sw.attach(abstract_client(1001)).unwrap_err(), AttachError::InUseByOtherUser(5));
    assert!(lab.sw.attach(abstract_client(1000)).is_ok());
}

#[test]
fn acl_is_checked_with_kernel_credentials() {
    let mut lab = Lab::new();
    lab.sw.create_explicit_port(5).unwrap();
    lab.sw.set_acl_user(5, Some(0)).unwrap();
    let abstract_client = Attach {
        request: PortRequest::Port(5),
        id: 9,
        module: "unix prog",
        description: Vec::new(),
        user: None,
        credentials: Credentials { uid: 1000, gids: vec![1000] },
    };
    assert_eq!(lab.sw.attach(abstract_client.clone()).unwrap_err(), AttachError::AccessDenied(5));
    lab.sw.set_acl_group(5, Some(1000)).unwrap();
    assert!(lab.sw.attach(abstract_client).is_ok());
}

#[test]
fn broadcast_floods_every_other_port_once_per_endpoint() {
    let mut lab = Lab::new();
    let a = lab.plug(PortRequest::Port(1));
    let a2 = lab.plug(PortRequest::Port(1));
    let b = lab.plug(PortRequest::Port(2));
    let c = lab.plug(PortRequest::Port(3));
    let c2 = lab.plug(PortRequest::Port(3));
    let mut expect = vec![b, c, c2];
    expect.sort();
    assert_eq!(lab.targets(a, &frame(Mac::BROADCAST, mac(1), 60)), expect);
    assert!(!lab.targets(b, &frame(Mac::BROADCAST, mac(2), 60)).contains(&b));
    let out3 = lab.sw.port(3).unwrap().counters();
    assert_eq!((out3.out_pkts, out3.out_bytes), (2, 120), "counted once per port");
    let _ = a2;
}

#[test]
fn learned_unicast_goes_to_one_port_unknown_floods() {
    let mut lab = Lab::new();
    let a = lab.plug(PortRequest::Any);
    let b = lab.plug(PortRequest::Any);
    let c = lab.plug(PortRequest::Any);
    assert_eq!(lab.targets(a, &frame(mac(2), mac(1), 60)), vec![b, c], "unknown floods");
    assert_eq!(lab.targets(b, &frame(mac(1), mac(2), 60)), vec![a]);
    assert_eq!(lab.targets(a, &frame(mac(2), mac(1), 60)), vec![b]);
}

#[test]
fn multicast_source_is_not_learned() {
    let mut lab = Lab::new();
    let a = lab.plug(PortRequest::Any);
    let b = lab.plug(PortRequest::Any);
    let group = Mac([3, 0, 0, 0, 0, 1]);
    lab.send(a, &frame(Mac::BROADCAST, group, 60));
    assert!(lab.sw.mac_table().is_empty());
    assert_eq!(lab.targets(b, &frame(group, mac(2), 60)), vec![a]);
}

#[test]
fn no_hairpin_for_station_on_own_port() {
    let mut lab = Lab::new();
    let a = lab.plug(PortRequest::Port(1));
    let a2 = lab.plug(PortRequest::Port(1));
    lab.plug(PortRequest::Port(2));
    lab.send(a, &frame(Mac::BROADCAST, mac(1), 60));
    let mut out = Vec::new();
    let r = lab.sw.ingress(a2, &frame(mac(1), mac(9), 60), 0, &mut out);
    assert_eq!(r, Err(DropReason::SamePort));
    assert!(out.is_empty());
    assert_eq!(lab.sw.port(1).unwrap().counters().drops(DropReason::SamePort), 1);
}

#[test]
fn runts_and_oversize_are_dropped_and_counted() {
    let mut lab = Lab::new();
    let a = lab.plug(PortRequest::Any);
    lab.plug(PortRequest::Any);
    assert!(lab.send(a, &[0u8; 13]).is_empty());
    assert!(lab.send(a, &frame(Mac::BROADCAST, mac(1), 1519)).is_empty());
    assert_eq!(lab.send(a, &frame(Mac::BROADCAST, mac(1), 14)).len(), 1);
    assert_eq!(lab.send(a, &frame(Mac::BROADCAST, mac(1), 1518)).len(), 1);
    let c = lab.sw.port(1).unwrap().counters();
    assert_eq!((c.drops(DropReason::Runt), c.drops(DropReason::Oversize)), (1, 1));
    assert_eq!((c.in_pkts, c.in_bytes), (2, 14 + 1518), "only accepted frames count as IN");
}

#[test]
fn station_moves_only_after_min_persistence() {
    let mut lab = Lab::new();
    let a = lab.plug(PortRequest::Port(1));
    let b = lab.plug(PortRequest::Port(2));
    let c = lab.plug(PortRequest::Port(3));
    lab.send(a, &frame(Mac::BROADCAST, mac(1), 60));
    lab.advance(3);
    lab.send(b, &frame(Mac::BROADCAST, mac(1), 60));
    assert_eq!(lab.targets(c, &frame(mac(1), mac(3), 60)), vec![a]);
    lab.advance(4);
    lab.send(b, &frame(Mac::BROADCAST, mac(1), 60));
    assert_eq!(lab.targets(c, &frame(mac(1), mac(3), 60)), vec![b]);
}

#[test]
fn stations_age_out_at_the_next_frame_after_gc() {
    let mut lab = Lab::new();
    let a = lab.plug(PortRequest::Any);
    let b = lab.plug(PortRequest::Any);
    lab.sw.mac_table_mut().expire = 3;
    lab.send(a, &frame(Mac::BROADCAST, mac(1), 60));
    lab.advance(9);
    assert_eq!(lab.sw.mac_table().len(), 1, "no sweep without traffic");
    drop(lab.sw.take_events());
    assert_eq!(lab.targets(b, &frame(mac(1), mac(2), 60)), vec![a], "expired: flooded");
    let events = lab.sw.take_events();
    assert_eq!(events[0], Event::HashDel { mac: mac(1), vlan: 0, port: 1 });
}

#[test]
fn unrelated_port_changes_keep_learning() {
    let mut lab = Lab::new();
    let a = lab.plug(PortRequest::Any);
    let b = lab.plug(PortRequest::Any);
    let c = lab.plug(PortRequest::Any);
    lab.send(a, &frame(Mac::BROADCAST, mac(1), 60));
    lab.send(b, &frame(Mac::BROADCAST, mac(2), 60));
    lab.send(c, &frame(Mac::BROADCAST, mac(3), 60));
    lab.plug(PortRequest::Any);
    lab.sw.detach(c);
    assert_eq!(lab.sw.mac_table().len(), 2, "only port 3's station is forgotten");
    assert_eq!(lab.targets(b, &frame(mac(1), mac(2), 60)), vec![a]);
}

#[test]
fn last_endpoint_leaving_deactivates_port_but_keeps_it() {
    let mut lab = Lab::new();
    let a = lab.plug(PortRequest::Port(4));
    let a2 = lab.plug(PortRequest::Port(4));
    drop(lab.sw.take_events());
    lab.sw.detach(a2);
    assert!(lab.sw.port(4).unwrap().is_active());
    lab.sw.detach(a);
    let port = lab.sw.port(4).expect("port kept");
    assert!(!port.is_active());
    let events = lab.sw.take_events();
    assert_eq!(events.last(), Some(&Event::PortDel(4)));
}

#[test]
fn endpoint_listing_is_newest_first() {
    let mut lab = Lab::new();
    let a = lab.plug(PortRequest::Port(1));
    let b = lab.plug(PortRequest::Port(1));
    let order: Vec<EndpointKey> = lab.sw.port(1).unwrap().endpoints().collect();
    assert_eq!(order, vec![b, a]);
}

#[test]
fn hub_repeats_to_every_existing_port_but_zero() {
    let mut lab = Lab::hub();
    let zero = lab.plug(PortRequest::Zero);
    let a = lab.plug(PortRequest::Any);
    let b = lab.plug(PortRequest::Any);
    lab.sw.create_explicit_port(7).unwrap();
    lab.send(a, &frame(mac(2), mac(1), 60));
    assert_eq!(lab.targets(a, &frame(mac(2), mac(1), 60)), vec![b]);
    assert!(lab.sw.mac_table().is_empty(), "a hub learns nothing");
    assert_eq!(lab.sw.port(7).unwrap().counters().out_pkts, 2, "inactive ports still count");
    assert_eq!(lab.sw.port(0).unwrap().counters().out_pkts, 0);
    assert_eq!(lab.targets(zero, &frame(Mac::BROADCAST, mac(9), 60)), vec![a, b]);
}

#[test]
fn vlans_isolate_and_retag() {
    let mut lab = Lab::new();
    lab.sw.create_vlan(10).unwrap();
    let h1 = lab.plug(PortRequest::Port(1));
    let h2 = lab.plug(PortRequest::Port(2));
    let trunk = lab.plug(PortRequest::Port(3));
    lab.sw.set_port_vlan(2, 10).unwrap();
    lab.sw.add_tagged(10, 3).unwrap();

    let out = lab.send(h2, &frame(Mac::BROADCAST, mac(2), 60));
    assert_eq!(out, vec![Delivery { endpoint: trunk, edit: Edit::Tag(10) }]);
    assert_eq!(lab.sw.port(3).unwrap().counters().out_bytes, 64);

    let out = lab.send(trunk, &tagged(Mac::BROADCAST, mac(3), 0xb00a, 64));
    assert_eq!(out, vec![Delivery { endpoint: h2, edit: Edit::Untag }]);
    let out = lab.send(trunk, &tagged(mac(2), mac(3), 10, 64));
    assert_eq!(out, vec![Delivery { endpoint: h2, edit: Edit::Untag }]);
    let out = lab.send(h2, &frame(mac(3), mac(2), 60));
    assert_eq!(out, vec![Delivery { endpoint: trunk, edit: Edit::Tag(10) }]);

    assert!(lab.targets(h1, &frame(Mac::BROADCAST, mac(1), 60)).contains(&trunk));
    assert!(!lab.targets(h1, &frame(Mac::BROADCAST, mac(1), 60)).contains(&h2));
}

#[test]
fn tagged_to_tagged_keeps_priority_bits() {
    let mut lab = Lab::new();
    lab.sw.create_vlan(10).unwrap();
    let a = lab.plug(PortRequest::Port(1));
    let b = lab.plug(PortRequest::Port(2));
    lab.sw.add_tagged(10, 1).unwrap();
    lab.sw.add_tagged(10, 2).unwrap();
    let out = lab.send(a, &tagged(Mac::BROADCAST, mac(1), 0xb00a, 64));
    assert_eq!(out, vec![Delivery { endpoint: b, edit: Edit::AsIs }]);
}

#[test]
fn foreign_and_missing_vlans_are_dropped_but_counted_in() {
    let mut lab = Lab::new();
    lab.sw.create_vlan(10).unwrap();
    let a = lab.plug(PortRequest::Port(1));
    lab.plug(PortRequest::Port(2));
    let mut out = Vec::new();
    assert_eq!(lab.sw.ingress(a, &tagged(Mac::BROADCAST, mac(1), 10, 64), 0, &mut out), Err(DropReason::NotMember));
    assert_eq!(lab.sw.ingress(a, &tagged(Mac::BROADCAST, mac(1), 20, 64), 0, &mut out), Err(DropReason::NotMember));
    assert_eq!(lab.sw.ingress(a, &tagged(Mac::BROADCAST, mac(1), 4095, 64), 0, &mut out), Err(DropReason::NotMember));
    lab.sw.set_port_vlan(1, VLAN_NONE).unwrap();
    assert_eq!(lab.sw.ingress(a, &frame(Mac::BROADCAST, mac(1), 60), 0, &mut out), Err(DropReason::NoUntaggedVlan));
    assert!(out.is_empty());
    assert_eq!(lab.sw.port(1).unwrap().counters().in_pkts, 4);
}

#[test]
fn priority_tagged_frame_in_vlan0_is_delivered_untagged() {
    let mut lab = Lab::new();
    let a = lab.plug(PortRequest::Port(1));
    let b = lab.plug(PortRequest::Port(2));
    let out = lab.send(a, &tagged(Mac::BROADCAST, mac(1), 0x6000, 64));
    assert_eq!(out, vec![Delivery { endpoint: b, edit: Edit::Untag }]);
}

#[test]
fn vlan_rules() {
    let mut lab = Lab::new();
    assert_eq!(lab.sw.create_vlan(0), Err(ConfigError::Invalid));
    assert_eq!(lab.sw.create_vlan(4094), Err(ConfigError::Invalid));
    assert_eq!(lab.sw.create_vlan(4093), Ok(()));
    assert_eq!(lab.sw.create_vlan(4093), Err(ConfigError::Exists));
    lab.sw.create_explicit_port(2).unwrap();
    assert_eq!(lab.sw.remove_vlan(0), Err(ConfigError::InUse), "inactive members count");
    lab.sw.add_tagged(4093, 2).unwrap();
    assert_eq!(lab.sw.remove_vlan(4093), Err(ConfigError::InUse));
    assert_eq!(lab.sw.remove_tagged(0, 2), Err(ConfigError::InUse), "untagged VLAN");
    lab.sw.remove_tagged(4093, 2).unwrap();
    lab.sw.remove_tagged(4093, 2).unwrap();
    assert_eq!(lab.sw.remove_vlan(4093), Ok(()));
    assert_eq!(lab.sw.remove_vlan(4093), Err(ConfigError::Missing));
}

#[test]
fn port_configuration_rules() {
    let mut lab = Lab::new();
    let a = lab.plug(PortRequest::Port(1));
    assert_eq!(lab.sw.remove_port(1), Err(ConfigError::InUse));
    assert_eq!(lab.sw.remove_port(9), Err(ConfigError::Missing));
    assert_eq!(lab.sw.remove_port(99), Err(ConfigError::Invalid));
    assert_eq!(lab.sw.create_explicit_port(1), Err(ConfigError::Exists));
    assert_eq!(lab.sw.set_numports(1), Err(ConfigError::InUse));
    assert_eq!(lab.sw.set_numports(0), Err(ConfigError::Invalid));
    assert_eq!(lab.sw.set_numports(MAX_PORTS + 1), Err(ConfigError::Invalid));
    assert_eq!(lab.sw.create_auto_port(), Ok(2));
    assert!(!lab.sw.port(2).unwrap().allocatable());
    lab.sw.detach(a);
    assert_eq!(lab.sw.remove_port(1), Ok(()));
    assert_eq!(lab.sw.set_numports(2), Err(ConfigError::InUse));
    lab.sw.remove_port(2).unwrap();
    assert_eq!(lab.sw.set_numports(2), Ok(()));
}

// ----- VLAN combinations ------------------------------------------------------

#[test]
fn untagged_members_of_one_vlan_only_hear_each_other() {
    let mut lab = Lab::new();
    lab.sw.create_vlan(10).unwrap();
    let a = lab.plug(PortRequest::Port(1));
    let b = lab.plug(PortRequest::Port(2));
    let outsider = lab.plug(PortRequest::Port(3));
    lab.sw.set_port_vlan(1, 10).unwrap();
    lab.sw.set_port_vlan(2, 10).unwrap();
    let out = lab.send(a, &frame(Mac::BROADCAST, mac(1), 60));
    assert_eq!(out, vec![Delivery { endpoint: b, edit: Edit::AsIs }]);
    let out = lab.send(b, &frame(mac(1), mac(2), 60));
    assert_eq!(out, vec![Delivery { endpoint: a, edit: Edit::AsIs }], "learned unicast");
    assert!(lab.targets(outsider, &frame(Mac::BROADCAST, mac(3), 60)).is_empty(), "VLAN 0 is empty now");
    assert!(lab.targets(outsider, &frame(mac(1), mac(3), 60)).is_empty(), "stations are per VLAN");
}

#[test]
fn a_trunk_carries_two_vlans_and_keeps_them_apart() {
    let mut lab = Lab::new();
    lab.sw.create_vlan(10).unwrap();
    lab.sw.create_vlan(20).unwrap();
    let ten = lab.plug(PortRequest::Port(1));
    let twenty = lab.plug(PortRequest::Port(2));
    let trunk = lab.plug(PortRequest::Port(3));
    lab.sw.set_port_vlan(1, 10).unwrap();
    lab.sw.set_port_vlan(2, 20).unwrap();
    lab.sw.add_tagged(10, 3).unwrap();
    lab.sw.add_tagged(20, 3).unwrap();
    lab.sw.set_port_vlan(3, VLAN_NONE).unwrap();

    let out = lab.send(trunk, &tagged(Mac::BROADCAST, mac(9), 10, 64));
    assert_eq!(out, vec![Delivery { endpoint: ten, edit: Edit::Untag }]);
    let out = lab.send(trunk, &tagged(Mac::BROADCAST, mac(9), 20, 64));
    assert_eq!(out, vec![Delivery { endpoint: twenty, edit: Edit::Untag }]);
    // The same MAC is a different station in each VLAN.
    let out = lab.send(ten, &frame(mac(9), mac(1), 60));
    assert_eq!(out, vec![Delivery { endpoint: trunk, edit: Edit::Tag(10) }]);
    let out = lab.send(twenty, &frame(mac(9), mac(2), 60));
    assert_eq!(out, vec![Delivery { endpoint: trunk, edit: Edit::Tag(20) }]);
    assert!(lab.targets(trunk, &frame(Mac::BROADCAST, mac(9), 60)).is_empty(), "no untagged VLAN on the trunk");
}

#[test]
fn tagged_members_exchange_frames_unchanged() {
    let mut lab = Lab::new();
    lab.sw.create_vlan(10).unwrap();
    let a = lab.plug(PortRequest::Port(1));
    let b = lab.plug(PortRequest::Port(2));
    let access = lab.plug(PortRequest::Port(3));
    lab.sw.add_tagged(10, 1).unwrap();
    lab.sw.add_tagged(10, 2).unwrap();
    let out = lab.send(a, &tagged(mac(2), mac(1), 10, 64));
    assert_eq!(out, vec![Delivery { endpoint: b, edit: Edit::AsIs }], "unknown unicast floods VLAN 10 only");
    let out = lab.send(b, &tagged(mac(1), mac(2), 10, 64));
    assert_eq!(out, vec![Delivery { endpoint: a, edit: Edit::AsIs }]);
    // Both trunks are still untagged members of VLAN 0.
    assert_eq!(lab.targets(access, &frame(Mac::BROADCAST, mac(3), 60)), vec![a, b]);
}

#[test]
fn non_members_neither_send_nor_receive() {
    let mut lab = Lab::new();
    lab.sw.create_vlan(10).unwrap();
    lab.sw.create_vlan(20).unwrap();
    let member = lab.plug(PortRequest::Port(1));
    let stranger = lab.plug(PortRequest::Port(2));
    let trunk = lab.plug(PortRequest::Port(3));
    lab.sw.set_port_vlan(1, 10).unwrap();
    lab.sw.add_tagged(10, 3).unwrap();
    let mut out = Vec::new();
    let refused = lab.sw.ingress(stranger, &tagged(Mac::BROADCAST, mac(2), 10, 64), 0, &mut out);
    assert_eq!(refused, Err(DropReason::NotMember));
    let refused = lab.sw.ingress(trunk, &tagged(Mac::BROADCAST, mac(3), 20, 64), 0, &mut out);
    assert_eq!(refused, Err(DropReason::NotMember), "VLAN exists but the trunk is not in it");
    assert!(out.is_empty());
    let flooded = lab.targets(member, &frame(mac(77), mac(1), 60));
    assert_eq!(flooded, vec![trunk], "unknown unicast stays in VLAN 10");
}

#[test]
fn removing_a_vlan_forgets_its_stations() {
    let mut lab = Lab::new();
    lab.sw.create_vlan(10).unwrap();
    let access = lab.plug(PortRequest::Port(1));
    let trunk = lab.plug(PortRequest::Port(2));
    lab.sw.set_port_vlan(1, 10).unwrap();
    lab.sw.add_tagged(10, 2).unwrap();
    lab.send(access, &frame(Mac::BROADCAST, mac(1), 60));
    lab.send(trunk, &tagged(Mac::BROADCAST, mac(2), 10, 64));
    assert_eq!(lab.sw.mac_table().len(), 2);
    assert_eq!(lab.sw.remove_vlan(10), Err(ConfigError::InUse));
    lab.sw.remove_tagged(10, 2).unwrap();
    assert!(lab.sw.mac_table().find(mac(2), 10, 0).is_none(), "the trunk's station in VLAN 10 is gone");
    lab.sw.set_port_vlan(1, 0).unwrap();
    assert!(lab.sw.mac_table().is_empty());
    assert_eq!(lab.sw.remove_vlan(10), Ok(()));
    let mut out = Vec::new();
    let late = lab.sw.ingress(trunk, &tagged(Mac::BROADCAST, mac(2), 10, 64), 0, &mut out);
    assert_eq!(late, Err(DropReason::NotMember));
    assert_eq!(lab.targets(access, &frame(Mac::BROADCAST, mac(1), 60)), vec![trunk], "both back in VLAN 0");
}

#[test]
fn vlan_membership_states() {
    let mut lab = Lab::new();
    lab.sw.create_vlan(10).unwrap();
    lab.sw.create_explicit_port(4).unwrap();
    lab.sw.add_tagged(10, 4).unwrap();
    let v = lab.sw.vlan(10).unwrap();
    assert_eq!(v.state(4, false), PortState::Learning, "inactive members show Learning");
    lab.plug(PortRequest::Port(4));
    let active = lab.sw.port(4).unwrap().is_active();
    assert_eq!(lab.sw.vlan(10).unwrap().state(4, active), PortState::Forwarding);
}

#[test]
fn a_new_port_brings_back_a_removed_vlan_0_with_its_spanning_tree() {
    let mut lab = Lab::new();
    lab.sw.set_fstp(true);
    lab.sw.remove_vlan(0).unwrap();
    assert!(lab.sw.vlan(0).is_none());
    lab.sw.create_explicit_port(1).unwrap();
    assert!(lab.sw.vlan(0).is_some_and(|v| v.members().any(|(p, _)| p == 1)));
    assert!(lab.sw.fstp().tree(0).is_some(), "VLAN 0 has a spanning tree again");
}

#[test]
fn a_mirror_port_gets_every_forwarded_frame_as_it_came_in_and_nothing_else() {
    let mut lab = Lab::new();
    let a = lab.plug(PortRequest::Port(1));
    let b = lab.plug(PortRequest::Port(2));
    let m = lab.plug(PortRequest::Port(3));
    lab.sw.create_vlan(5).unwrap();
    lab.sw.add_tagged(5, 1).unwrap();
    // A station learned on the port before it turns mirror is forgotten.
    assert_eq!(lab.targets(m, &frame(mac(1), mac(9), 60)), [a, b]);
    lab.sw.set_mirror(3, true).unwrap();
    assert!(lab.sw.mac_table().stations(0).iter().all(|s| s.port != 3));
    // A flood reaches the mirror once, unmodified, and not as a member.
    let flood = lab.send(a, &frame(Mac([0xff; 6]), mac(1), 60));
    assert_eq!(flood, [Delivery { endpoint: b, edit: Edit::AsIs }, Delivery { endpoint: m, edit: Edit::AsIs }]);
    // Unicast between two ports goes to its destination and the mirror.
    assert_eq!(lab.targets(b, &frame(mac(1), mac(2), 60)), [a, m]);
    let tagged_in = lab.send(a, &tagged(mac(2), mac(1), 5, 64));
    assert_eq!(tagged_in.len(), 1, "port 2 is not in VLAN 5: only the mirror");
    assert_eq!(tagged_in[0], Delivery { endpoint: m, edit: Edit::AsIs });
    // What the mirror port sends is dropped and teaches nothing.
    assert_eq!(lab.sw.ingress(m, &frame(mac(1), mac(7), 60), 0, &mut Vec::new()), Err(DropReason::Mirror));
    assert!(lab.sw.mac_table().stations(0).iter().all(|s| s.mac != mac(7)));
    lab.sw.set_mirror(3, false).unwrap();
    assert_eq!(lab.targets(a, &frame(Mac([0xff; 6]), mac(1), 60)), [b, m]);
    assert_eq!(lab.sw.set_mirror(9, true), Err(ConfigError::Missing));
}

#[test]
fn a_hub_floods_the_mirror_port_only_once() {
    let mut lab = Lab::hub();
    let a = lab.plug(PortRequest::Port(1));
    let b = lab.plug(PortRequest::Port(2));
    let m = lab.plug(PortRequest::Port(3));
    lab.sw.set_mirror(3, true).unwrap();
    assert_eq!(lab.targets(a, &frame(mac(2), mac(1), 60)), [b, m]);
}

#[test]
fn jumbo_frames_pass_up_to_the_mtu_plus_a_tagged_header() {
    let mut lab = Lab::new();
    lab.sw.set_mtu(9000);
    let a = lab.plug(PortRequest::Any);
    lab.plug(PortRequest::Any);
    assert_eq!(lab.send(a, &frame(Mac::BROADCAST, mac(1), 9018)).len(), 1);
    assert!(lab.send(a, &frame(Mac::BROADCAST, mac(1), 9019)).is_empty());
    assert_eq!(lab.sw.port(1).unwrap().counters().drops(DropReason::Oversize), 1);
}

/// Three trunk ports and one plain port: VLAN 100 is not configured.
fn trunk_lab() -> (Lab, [EndpointKey; 4]) {
    let mut lab = Lab::new();
    let plain = lab.plug(PortRequest::Port(4));
    lab.sw.set_trunk_default(true);
    lab.sw.set_trunk(4, false).unwrap();
    let t: Vec<EndpointKey> = (1..=3).map(|p| lab.plug(PortRequest::Port(p))).collect();
    (lab, [t[0], t[1], t[2], plain])
}

#[test]
fn trunks_carry_unconfigured_vlans_tag_untouched_and_learn_per_vid() {
    let (mut lab, [a, b, c, plain]) = trunk_lab();
    let hello = tagged(Mac::BROADCAST, mac(1), 100, 64);
    assert_eq!(lab.targets(a, &hello), vec![b, c], "flooded to the other trunks only");
    assert!(lab.send(a, &hello).iter().all(|d| d.edit == Edit::AsIs));
    let answer = tagged(mac(1), mac(2), 0x2000 | 100, 64);
    assert_eq!(lab.send(b, &answer), vec![Delivery { endpoint: a, edit: Edit::AsIs }], "learned in VID 100");
    assert_eq!(lab.targets(c, &tagged(mac(1), mac(3), 200, 64)), vec![a, b], "VID 200 has its own stations");
    assert!(lab.targets(plain, &tagged(Mac::BROADCAST, mac(4), 100, 64)).is_empty(), "not from a plain port");
    assert_eq!(lab.sw.port(4).unwrap().counters().drops(DropReason::NotMember), 1);
    assert_eq!(lab.targets(a, &frame(Mac::BROADCAST, mac(1), 60)), vec![plain, b, c], "untagged as before");
}

#[test]
fn configured_vlans_keep_their_rules_on_trunks() {
    let (mut lab, [a, b, _, _]) = trunk_lab();
    let learn = tagged(Mac::BROADCAST, mac(2), 100, 64);
    lab.send(b, &learn);
    lab.sw.create_vlan(100).unwrap();
    assert!(lab.sw.mac_table().stations(lab.now).iter().all(|s| s.vlan != 100), "creating the VLAN forgets");
    assert!(lab.targets(a, &tagged(mac(2), mac(1), 100, 64)).is_empty(), "port 1 is no member of VLAN 100");
    lab.sw.add_tagged(100, 1).unwrap();
    lab.sw.add_tagged(100, 2).unwrap();
    assert_eq!(lab.targets(a, &tagged(Mac::BROADCAST, mac(1), 100, 64)), vec![b]);
}

#[test]
fn a_port_leaving_trunk_mode_or_going_away_stops_carrying() {
    let (mut lab, [a, b, c, _]) = trunk_lab();
    lab.send(b, &tagged(Mac::BROADCAST, mac(2), 100, 64));
    lab.sw.set_trunk(2, false).unwrap();
    assert!(lab.sw.mac_table().is_empty(), "its stations in unconfigured VLANs are forgotten");
    assert_eq!(lab.targets(a, &tagged(mac(2), mac(1), 100, 64)), vec![c]);
    lab.sw.detach(c);
    assert!(lab.targets(a, &tagged(Mac::BROADCAST, mac(1), 100, 64)).is_empty());
    assert_eq!(lab.sw.set_trunk(9, true), Err(ConfigError::Missing));
    assert_eq!(lab.sw.set_trunk(40, true), Err(ConfigError::Invalid));
}

#[test]
fn without_trunks_unconfigured_vlans_are_dropped_as_before() {
    let mut lab = Lab::new();
    let a = lab.plug(PortRequest::Any);
    lab.plug(PortRequest::Any);
    assert!(lab.send(a, &tagged(Mac::BROADCAST, mac(1), 100, 64)).is_empty());
    assert_eq!(lab.sw.port(1).unwrap().counters().drops(DropReason::NotMember), 1);
}

#[test]
fn a_mirror_port_gets_frames_of_unconfigured_vlans_and_is_no_trunk_for_them() {
    let (mut lab, [a, b, c, plain]) = trunk_lab();
    lab.sw.set_mirror(3, true).unwrap();
    let hello = tagged(Mac::BROADCAST, mac(1), 100, 64);
    assert_eq!(
        lab.send(a, &hello),
        [Delivery { endpoint: b, edit: Edit::AsIs }, Delivery { endpoint: c, edit: Edit::AsIs }]
    );
    assert!(lab.targets(plain, &hello).is_empty());
    lab.sw.set_mirror(3, false).unwrap();
    assert_eq!(lab.targets(a, &hello), [b, c], "a trunk again");
}
