//! The spanning tree with a virtual clock: whole switches wired together by
//! simulated cables, every frame they originate or forward carried across
//! in order.

use std::collections::VecDeque;

use crate::engine::*;
use crate::wire::{BPDU_DST, Bpdu, BridgeId, MAX_FRAME, Mac, VLAN_TAG_LEN, pop_tag, push_tag};

/// Frames in flight before a network is declared to be storming.
const STORM: usize = 10_000;

fn mac(n: u8) -> Mac {
    Mac([2, 0, 0, 0, 0, n])
}

fn frame(dst: Mac, src: Mac) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    f
}

fn apply(edit: Edit, bytes: &[u8]) -> Vec<u8> {
    let mut out = [0u8; MAX_FRAME + VLAN_TAG_LEN];
    let n = match edit {
        Edit::AsIs => return bytes.to_vec(),
        Edit::Tag(tci) => push_tag(bytes, tci, &mut out),
        Edit::Untag => pop_tag(bytes, &mut out),
    };
    out[..n].to_vec()
}

/// Where an endpoint's frames go.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Wire {
    /// The other end of a cable: switch index and endpoint.
    Cable(usize, EndpointKey),
    /// A station; frames land in its inbox.
    Host(usize),
}

struct Net {
    switches: Vec<Switch>,
    /// Per switch, endpoint key → what it is connected to.
    wires: Vec<Vec<(EndpointKey, Wire)>>,
    inboxes: Vec<Vec<Vec<u8>>>,
    now: u64,
    next_id: u32,
}

impl Net {
    /// Switches with FSTP on and the given (priority, MAC) bridge ids.
    fn new(ids: &[(u16, u8)]) -> Net {
        let switches = ids
            .iter()
            .map(|&(priority, m)| {
                let mut sw = Switch::new(DEFAULT_NUMPORTS, false, DEFAULT_BUCKETS);
                sw.set_bridge_id(mac(m), priority);
                assert!(sw.set_fstp(true));
                sw
            })
            .collect();
        Net { switches, wires: vec![Vec::new(); ids.len()], inboxes: Vec::new(), now: 0, next_id: 10 }
    }

    fn attach(&mut self, sw: usize, port: PortId, wire: Wire) -> EndpointKey {
        self.next_id += 1;
        let a = Attach {
            request: PortRequest::Port(port),
            id: self.next_id,
            module: "unix prog",
            description: Vec::new(),
            user: Some(0),
            credentials: Credentials::default(),
        };
        let (key, _) = self.switches[sw].attach(a).expect("port available");
        self.wires[sw].push((key, wire));
        key
    }

    /// Plugs a cable between `a`'s port `pa` and `b`'s port `pb`.
    fn cable(&mut self, a: usize, pa: PortId, b: usize, pb: PortId) -> (EndpointKey, EndpointKey) {
        // Both ends exist before either switch's first BPDU travels, like
        // `dpipe vde_plug A = vde_plug B`, which relays only once both are up.
        let ka = self.attach(a, pa, Wire::Host(usize::MAX));
        let kb = self.attach(b, pb, Wire::Cable(a, ka));
        self.rewire(a, ka, Wire::Cable(b, kb));
        self.pump().expect("no storm while plugging");
        (ka, kb)
    }

    fn rewire(&mut self, sw: usize, key: EndpointKey, wire: Wire) {
        self.wires[sw].iter_mut().find(|(k, _)| *k == key).expect("attached").1 = wire;
    }

    fn unplug(&mut self, sw: usize, key: EndpointKey) {
        self.switches[sw].detach(key);
        self.wires[sw].retain(|(k, _)| *k != key);
    }

    fn host(&mut self, sw: usize, port: PortId) -> (EndpointKey, usize) {
        self.inboxes.push(Vec::new());
        let inbox = self.inboxes.len() - 1;
        let key = self.attach(sw, port, Wire::Host(inbox));
        self.pump().expect("no storm while attaching");
        (key, inbox)
    }

    /// Carries frames until the network is quiet. Returns how many frames
    /// crossed cables, or `None` if they never stop.
    fn pump(&mut self) -> Option<usize> {
        let mut queue: VecDeque<(usize, EndpointKey, Vec<u8>)> = VecDeque::new();
        let mut carried = 0;
        loop {
            for (i, sw) in self.switches.iter_mut().enumerate() {
                queue.extend(sw.take_outbox().into_iter().map(|o| (i, o.endpoint, o.frame)));
            }
            let Some((sw, key, bytes)) = queue.pop_front() else { return Some(carried) };
            let wire = self.wires[sw].iter().find(|(k, _)| *k == key).map(|&(_, w)| w);
            match wire {
                Some(Wire::Host(inbox)) if inbox != usize::MAX => self.inboxes[inbox].push(bytes),
                Some(Wire::Cable(peer, peer_key)) => {
                    carried += 1;
                    if carried > STORM {
                        return None;
                    }
                    let mut out = Vec::new();
                    let _ = self.switches[peer].ingress(peer_key, &bytes, self.now, &mut out);
                    queue.extend(out.iter().map(|d| (peer, d.endpoint, apply(d.edit, &bytes))));
                }
                _ => {}
            }
        }
    }

    /// A station sends a frame; returns the frames that crossed cables.
    fn send(&mut self, sw: usize, from: EndpointKey, bytes: &[u8]) -> Option<usize> {
        let mut out = Vec::new();
        let _ = self.switches[sw].ingress(from, bytes, self.now, &mut out);
        for d in out {
            let edited = apply(d.edit, bytes);
            self.switches[sw].outbox.push(Outgoing { endpoint: d.endpoint, frame: edited });
        }
        self.pump()
    }

    fn advance(&mut self, secs: u64) {
        for _ in 0..secs {
            self.now += 1;
            for sw in &mut self.switches {
                sw.tick(self.now);
            }
            self.pump().expect("no storm while idle");
        }
    }

    fn tree(&self, sw: usize, vlan: VlanId) -> &Tree {
        self.switches[sw].fstp().tree(vlan).expect("VLAN exists")
    }

    /// Each member port's role and whether it forwards, as a compact
    /// string like `1:Root/fwd 2:Alternate/Backup/blk`.
    fn roles(&self, sw: usize, vlan: VlanId) -> String {
        let v = self.switches[sw].vlan(vlan).unwrap();
        self.tree(sw, vlan)
            .ports()
            .map(|(p, _, role)| {
                let state = if v.is_discarding(p) { "blk" } else { "fwd" };
                format!("{p}:{}/{state}", role.name())
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Everything station `i` received since the last look.
    fn raw_inbox(&mut self, i: usize) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.inboxes[i])
    }

    /// The data frames station `i` received, BPDUs left out.
    fn inbox(&mut self, i: usize) -> Vec<Vec<u8>> {
        self.raw_inbox(i).into_iter().filter(|f| f[..6] != BPDU_DST.0).collect()
    }
}

#[test]
fn a_joining_port_gets_a_bpdu_and_then_a_hello_every_four_seconds() {
    let mut net = Net::new(&[(0x1234, 0xf1)]);
    let (_, inbox) = net.host(0, 3);
    let first = net.raw_inbox(inbox);
    assert_eq!(first.len(), 1);
    let expected = "0180c20000000200000000f10027424203000002023c12340200000000f1\
                    0000000012340200000000f18003000028000400000000";
    let hex: String = first[0].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, expected, "byte-exact as vde_switch sends it");
    net.advance(3);
    assert!(net.raw_inbox(inbox).is_empty());
    net.advance(1);
    let hello = net.raw_inbox(inbox);
    assert_eq!(hello.len(), 1);
    assert_eq!(hello[0][21], 0x7c, "hellos carry the agreement flag");
    net.advance(8);
    assert_eq!(net.raw_inbox(inbox).len(), 2);
}

#[test]
fn tagged_members_get_tagged_bpdus() {
    let mut net = Net::new(&[(0x8000, 1)]);
    net.switches[0].create_vlan(10).unwrap();
    net.switches[0].create_explicit_port(2).unwrap();
    net.switches[0].add_tagged(10, 2).unwrap();
    let (_, inbox) = net.host(0, 2);
    let sent = net.raw_inbox(inbox);
    let lens: Vec<usize> = sent.iter().map(Vec::len).collect();
    assert_eq!(lens, [53, 57], "VLAN 0 untagged, VLAN 10 tagged");
    assert_eq!(&sent[1][12..16], &[0x81, 0x00, 0x00, 0x0a]);
    assert_eq!(net.switches[0].port(2).unwrap().counters().out_pkts, 2, "BPDUs count as output");
}

#[test]
fn the_lowest_bridge_id_becomes_root() {
    // The priority decides before the MAC.
    let mut net = Net::new(&[(0x8000, 1), (0x7000, 9), (0x8000, 5)]);
    net.cable(0, 1, 1, 1);
    net.cable(1, 2, 2, 1);
    for sw in 0..3 {
        assert_eq!(net.tree(sw, 0).root(), BridgeId::new(0x7000, mac(9)), "switch {sw}");
    }
    assert_eq!(net.tree(1, 0).root_port(), 0, "the root has no root port");
    assert_eq!(net.tree(0, 0).root_port(), 1);
    assert_eq!(net.tree(0, 0).root_cost(), PORT_COST);
    assert_eq!(net.tree(2, 0).root_port(), 1);
    assert_eq!(net.tree(2, 0).designated(), BridgeId::new(0x7000, mac(9)));
}

#[test]
fn a_double_cable_blocks_both_ends_of_the_redundant_link() {
    let mut net = Net::new(&[(0x8000, 0x0a), (0x8000, 0x0b)]);
    net.cable(0, 1, 1, 1);
    net.cable(0, 2, 1, 2);
    // What two vde_switches show in the same set-up.
    assert_eq!(net.roles(0, 0), "1:Designated/fwd 2:Alternate/Backup/blk");
    assert_eq!(net.roles(1, 0), "1:Root/fwd 2:Alternate/Backup/blk");
    let (a, _) = net.host(0, 5);
    let (_, b_inbox) = net.host(1, 5);
    let carried = net.send(0, a, &frame(Mac::BROADCAST, mac(0x55))).expect("no storm");
    assert_eq!(carried, 1, "one copy crosses the open link");
    assert_eq!(net.inbox(b_inbox).len(), 1);
    // And it stays that way as hellos go back and forth.
    net.advance(40);
    assert_eq!(net.roles(0, 0), "1:Designated/fwd 2:Alternate/Backup/blk 5:Designated/fwd");
    assert_eq!(net.roles(1, 0), "1:Root/fwd 2:Alternate/Backup/blk 5:Designated/fwd");
}

#[test]
fn a_ring_of_three_blocks_the_link_farthest_from_the_root() {
    for order in [[0, 1, 2], [1, 2, 0], [2, 1, 0]] {
        let mut net = Net::new(&[(0x8000, 0x0a), (0x8000, 0x0b), (0x8000, 0x0c)]);
        let links = [(0, 1, 1, 1), (1, 2, 2, 1), (2, 2, 0, 2)];
        for i in order {
            let (a, pa, b, pb) = links[i];
            net.cable(a, pa, b, pb);
        }
        // Same as three vde_switches cabled a1-b1, b2-c1, c2-a2.
        assert_eq!(net.roles(0, 0), "1:Designated/fwd 2:Designated/fwd", "order {order:?}");
        assert_eq!(net.roles(1, 0), "1:Root/fwd 2:Alternate/Backup/blk", "order {order:?}");
        assert_eq!(net.roles(2, 0), "1:Alternate/Backup/blk 2:Root/fwd", "order {order:?}");
        let hosts: Vec<(EndpointKey, usize)> = (0..3).map(|sw| net.host(sw, 7)).collect();
        for (sw, &(key, _)) in hosts.iter().enumerate() {
            let carried = net.send(sw, key, &frame(Mac::BROADCAST, mac(0x50 + sw as u8))).expect("no storm");
            assert_eq!(carried, 2, "a broadcast crosses two links once each");
            for (other, &(_, inbox)) in hosts.iter().enumerate() {
                let got = net.inbox(inbox).len();
                assert_eq!(got, usize::from(other != sw), "switch {sw} -> {other}");
            }
        }
    }
}

#[test]
fn without_fstp_the_ring_storms() {
    let mut net = Net::new(&[(0x8000, 0x0a), (0x8000, 0x0b), (0x8000, 0x0c)]);
    for sw in &mut net.switches {
        sw.set_fstp(false);
    }
    net.cable(0, 1, 1, 1);
    net.cable(1, 2, 2, 1);
    net.cable(2, 2, 0, 2);
    let (a, _) = net.host(0, 7);
    assert_eq!(net.send(0, a, &frame(Mac::BROADCAST, mac(0x50))), None);
}

#[test]
fn losing_the_open_link_unblocks_the_redundant_one() {
    let mut net = Net::new(&[(0x8000, 0x0a), (0x8000, 0x0b)]);
    let (a1, b1) = net.cable(0, 1, 1, 1);
    net.cable(0, 2, 1, 2);
    net.unplug(0, a1);
    net.unplug(1, b1);
    net.pump().unwrap();
    assert_eq!(net.roles(0, 0), "2:Designated/fwd");
    assert_eq!(net.roles(1, 0), "2:Root/fwd");
    assert_eq!(net.tree(1, 0).root(), BridgeId::new(0x8000, mac(0x0a)));
    let (a, _) = net.host(0, 5);
    let (_, b_inbox) = net.host(1, 5);
    net.send(0, a, &frame(Mac::BROADCAST, mac(0x55))).unwrap();
    assert_eq!(net.inbox(b_inbox).len(), 1);
}

#[test]
fn a_silent_root_times_out_after_more_than_twelve_seconds() {
    let mut net = Net::new(&[(0x8000, 0x0a), (0x8000, 0x0b)]);
    net.cable(0, 1, 1, 1);
    assert_eq!(net.tree(1, 0).root_port(), 1);
    // The root stops speaking but the link stays up.
    net.switches[0].set_fstp(false);
    drop(net.switches[1].take_events());
    net.advance(12);
    assert_eq!(net.tree(1, 0).root_port(), 1, "12 s are not enough");
    net.advance(4);
    assert_eq!(net.tree(1, 0).root_port(), 0);
    assert_eq!(net.tree(1, 0).root(), BridgeId::new(0x8000, mac(0x0b)));
    let me = BridgeId::new(0x8000, mac(0x0b));
    assert!(net.switches[1].take_events().contains(&Event::FstpRoot { port: 0, vlan: 0, root: me }));
}

#[test]
fn a_blocked_port_drops_data_and_a_topology_change_flushes_the_vlan() {
    let mut net = Net::new(&[(0x8000, 0x0a), (0x8000, 0x0b)]);
    let (_, b1) = net.cable(0, 1, 1, 1);
    let (_, b2) = net.cable(0, 2, 1, 2);
    let (h, _) = net.host(1, 5);
    // The attachments made the VLAN relearn (some of it at the next tick).
    net.advance(2);
    net.send(1, h, &frame(Mac::BROADCAST, mac(0x55))).unwrap();
    assert_eq!(net.switches[1].mac_table().len(), 1);
    let mut out = Vec::new();
    let blocked = net.switches[1].ingress(b2, &frame(Mac::BROADCAST, mac(0x66)), net.now, &mut out);
    assert_eq!(blocked, Err(DropReason::Discarding));
    assert!(out.is_empty());
    assert_eq!(net.switches[1].port(2).unwrap().counters().drops(DropReason::Discarding), 1);
    // A BPDU with the topology-change flag makes the VLAN relearn.
    let root = net.tree(1, 0).root();
    let tc = Bpdu {
        flags: crate::wire::BpduFlags(0x3d),
        root,
        root_cost: 0,
        bridge: root,
        port: crate::wire::port_id(1),
        age: 0,
        max_age: 40,
        hello: 4,
    };
    net.switches[1].ingress(b1, &tc.encode(mac(0x0a), None), net.now, &mut out).unwrap();
    assert!(out.is_empty(), "BPDUs are never forwarded");
    assert!(net.switches[1].mac_table().is_empty());
}

fn topology_change_from(root: BridgeId) -> Vec<u8> {
    let tc = Bpdu {
        flags: crate::wire::BpduFlags(0x3d),
        root,
        root_cost: 0,
        bridge: root,
        port: crate::wire::port_id(1),
        age: 0,
        max_age: 40,
        hello: 4,
    };
    tc.encode(mac(0x0a), None)
}

#[test]
fn topology_changes_heard_within_a_second_relearn_once_then_at_the_next_tick() {
    let mut net = Net::new(&[(0x8000, 0x0a), (0x8000, 0x0b), (0x8000, 0x0c)]);
    let (_, b1) = net.cable(0, 1, 1, 1);
    let (b2, _) = net.cable(1, 2, 2, 1);
    let (h, _) = net.host(1, 5);
    net.advance(2);
    let tc = topology_change_from(net.tree(1, 0).root());
    let mut out = Vec::new();
    let learn = |net: &mut Net| {
        net.send(1, h, &frame(Mac::BROADCAST, mac(0x55))).unwrap();
        assert_eq!(net.switches[1].mac_table().len(), 1);
    };
    // Topology changes switch 1 passes on towards switch 2.
    let passed_on = |net: &mut Net| {
        let outbox = net.switches[1].take_outbox();
        let to_b2 = outbox.iter().filter(|o| o.endpoint == b2);
        to_b2.filter(|o| Bpdu::parse(&o.frame, false).is_ok_and(|b| b.flags.topology_change())).count()
    };
    learn(&mut net);
    net.switches[1].ingress(b1, &tc, net.now, &mut out).unwrap();
    assert!(net.switches[1].mac_table().is_empty(), "the first change relearns at once");
    assert_eq!(passed_on(&mut net), 1, "and is passed on");
    for _ in 0..1000 {
        learn(&mut net);
        net.switches[1].ingress(b1, &tc, net.now, &mut out).unwrap();
    }
    assert_eq!(net.switches[1].mac_table().len(), 1, "a flood of changes in the same second waits");
    assert_eq!(passed_on(&mut net), 0);
    net.now += 1;
    net.switches[1].tick(net.now);
    assert!(net.switches[1].mac_table().is_empty(), "the postponed change happens at the next tick");
    assert_eq!(passed_on(&mut net), 1, "once");
}

#[test]
fn a_clock_jump_sends_one_hello_not_one_per_missed_interval() {
    let mut net = Net::new(&[(0x8000, 0x0a)]);
    let (h, _) = net.host(0, 5);
    net.advance(1);
    net.switches[0].outbox.clear();
    net.now += 3600;
    net.switches[0].tick(net.now);
    let hellos = net.switches[0].outbox.drain(..).filter(|o| o.endpoint == h).count();
    assert_eq!(hellos, 1);
    net.now += 1;
    net.switches[0].tick(net.now);
    assert_eq!(
        net.switches[0].outbox.drain(..).filter(|o| o.endpoint == h).count(),
        0,
        "the next one a hello time later"
    );
}

#[test]
fn a_bonus_makes_a_link_preferred() {
    let mut net = Net::new(&[(0x8000, 0x0a), (0x8000, 0x0b)]);
    net.switches[1].set_fstp_bonus(0, 2, 1000).unwrap();
    net.cable(0, 1, 1, 1);
    net.cable(0, 2, 1, 2);
    assert_eq!(net.tree(1, 0).root_port(), 2);
    assert_eq!(net.tree(1, 0).root_cost(), PORT_COST - 1000);
    assert_eq!(net.tree(1, 0).bonus(), (2, 1000));
}

#[test]
fn edge_ports_neither_send_hellos_nor_listen() {
    let mut net = Net::new(&[(0x8000, 0x0a)]);
    let (h, inbox) = net.host(0, 4);
    net.switches[0].set_fstp_edge(0, 4, true).unwrap();
    net.raw_inbox(inbox);
    net.advance(8);
    assert!(net.raw_inbox(inbox).is_empty(), "no hellos on an edge port");
    let better = Bpdu {
        flags: crate::wire::BpduFlags(0x3c),
        root: BridgeId::new(0, mac(1)),
        root_cost: 0,
        bridge: BridgeId::new(0, mac(1)),
        port: crate::wire::port_id(1),
        age: 0,
        max_age: 40,
        hello: 4,
    };
    net.send(0, h, &better.encode(mac(1), None));
    assert_eq!(net.tree(0, 0).root_port(), 0, "ignored");
    assert_eq!(net.tree(0, 0).ports().next().map(|(_, _, r)| r), Some(Role::Edge));
    // The mark is forgotten when the port leaves and comes back.
    net.unplug(0, h);
    net.host(0, 4);
    assert_eq!(net.tree(0, 0).ports().next().map(|(_, _, r)| r), Some(Role::Designated));
}

#[test]
fn hub_mode_stops_fstp_and_refuses_it() {
    let mut net = Net::new(&[(0x8000, 0x0a)]);
    net.switches[0].set_hub(true);
    assert!(!net.switches[0].fstp().enabled());
    assert!(!net.switches[0].set_fstp(true));
    let (h, _) = net.host(0, 1);
    let (_, other) = net.host(0, 2);
    net.send(0, h, &frame(BPDU_DST, mac(1)));
    assert_eq!(net.raw_inbox(other).len(), 1, "a hub repeats BPDUs");
}

#[test]
fn with_fstp_off_bpdus_are_flooded_like_multicast() {
    let mut net = Net::new(&[(0x8000, 0x0a)]);
    net.switches[0].set_fstp(false);
    let (h, _) = net.host(0, 1);
    let (_, other) = net.host(0, 2);
    net.send(0, h, &frame(BPDU_DST, mac(1)));
    assert_eq!(net.raw_inbox(other).len(), 1);
}

#[test]
fn vlans_have_independent_trees() {
    let mut net = Net::new(&[(0x8000, 0x0a), (0x8000, 0x0b)]);
    for sw in &mut net.switches {
        sw.create_vlan(10).unwrap();
        for p in [1, 2] {
            sw.create_explicit_port(p).unwrap();
            sw.add_tagged(10, p).unwrap();
        }
        // VLAN 0 is carried only by the first cable.
        sw.set_port_vlan(2, VLAN_NONE).unwrap();
    }
    net.cable(0, 1, 1, 1);
    net.cable(0, 2, 1, 2);
    assert_eq!(net.roles(1, 0), "1:Root/fwd");
    assert_eq!(net.roles(1, 10), "1:Root/fwd 2:Alternate/Backup/blk");
    assert_eq!(net.roles(0, 10), "1:Designated/fwd 2:Alternate/Backup/blk");
}

#[test]
fn status_events_tell_what_changed() {
    let mut net = Net::new(&[(0x8000, 0x0a), (0x8000, 0x0b)]);
    net.cable(0, 1, 1, 1);
    let events = net.switches[1].take_events();
    let root = BridgeId::new(0x8000, mac(0x0a));
    let fstp: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::FstpRoot { .. } | Event::FstpStatus { .. } | Event::FstpPortActive { .. }))
        .collect();
    assert_eq!(
        fstp,
        [
            &Event::FstpPortActive { port: 1, vlan: 0 },
            &Event::FstpRoot { port: 1, vlan: 0, root },
            &Event::FstpStatus { port: 1, vlan: 0, state: PortState::Forwarding },
        ]
    );
}

#[test]
fn arbitrary_bytes_to_the_bpdu_address_never_panic() {
    let mut net = Net::new(&[(0x8000, 0x0a)]);
    net.switches[0].create_vlan(10).unwrap();
    net.switches[0].create_explicit_port(1).unwrap();
    net.switches[0].add_tagged(10, 1).unwrap();
    let (h, _) = net.host(0, 1);
    let mut seed = 0x2545_f491_u32;
    for len in 14..=80 {
        for _ in 0..50 {
            let mut f: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as u8
                })
                .collect();
            f[..6].copy_from_slice(&BPDU_DST.0);
            if seed & 1 == 0 && len >= 16 {
                f[12..16].copy_from_slice(&[0x81, 0x00, 0x00, 0x0a]);
            }
            if seed & 2 == 0 && len > 20 {
                f[19] = 2;
                f[20] = 2;
            }
            let mut out = Vec::new();
            let _ = net.switches[0].ingress(h, &f, net.now, &mut out);
            assert!(out.is_empty());
        }
    }
    net.advance(20);
}

#[test]
fn a_port_blocked_by_a_neighbour_that_falls_silent_forwards_again() {
    let mut net = Net::new(&[(0x8000, 0x0a)]);
    let (h, _) = net.host(0, 4);
    let me = BridgeId::new(0x8000, mac(0x0a));
    // A neighbour that agrees on our root but offers a worse path through
    // a port that is not its root port: the link is redundant.
    let redundant = Bpdu {
        flags: crate::wire::BpduFlags(0x3c),
        root: me,
        root_cost: PORT_COST,
        bridge: BridgeId::new(0x8000, mac(0x0b)),
        port: crate::wire::port_id(2),
        age: 0,
        max_age: 40,
        hello: 4,
    };
    drop(net.switches[0].take_events());
    net.send(0, h, &redundant.encode(mac(0x0b), None));
    assert_eq!(net.roles(0, 0), "4:Alternate/Backup/blk");
    let events = net.switches[0].take_events();
    assert!(events.contains(&Event::FstpPortActive { port: 4, vlan: 0 }));
    assert!(events.contains(&Event::FstpStatus { port: 4, vlan: 0, state: PortState::Discarding }));
    // Windows are four hellos (16 s) long. The port is reported gone once
    // a window without BPDUs ends, and unblocked when the window that
    // heard the last BPDU has been reused: 32 to 48 s of silence.
    net.advance(32);
    assert_eq!(net.switches[0].take_events(), [Event::FstpPortInactive { port: 4, vlan: 0 }]);
    assert_eq!(net.roles(0, 0), "4:Alternate/Backup/blk");
    net.advance(16);
    assert_eq!(net.roles(0, 0), "4:Designated/fwd");
    let events = net.switches[0].take_events();
    assert_eq!(events, [Event::FstpStatus { port: 4, vlan: 0, state: PortState::Forwarding }]);
}
