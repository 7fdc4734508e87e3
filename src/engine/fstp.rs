//! vde_switch's fast spanning tree protocol (FSTP), run per VLAN.
//!
//! It is a small RSTP look-alike spoken only between VDE switches. Each
//! VLAN has its own tree: the switch with the lowest bridge id (priority,
//! MAC) becomes the root, every other switch keeps the port with the best
//! path to it as its root port, and a port that hears a worse offer for the
//! same root from a non-root port of its neighbour is blocked
//! ("Alternate/Backup", Discarding). Both ends of a redundant link end up
//! blocked, which is what vde_switch does too.
//!
//! The decisions below follow vde_switch 2.3.2 step by step, because a
//! mixed network of vswitch and vde_switch only converges if both sides
//! react to the same BPDU in the same way. The quirks kept on purpose are
//! marked where they happen.
//!
//! No clock and no I/O: the switch passes the time in seconds and carries
//! out the effects through [`Host`].

use std::collections::{BTreeMap, BTreeSet};

use super::{
    ConfigError, Event, MacTable, Outgoing, Port, PortId, PortState, PortTable, Switch, VLAN_NONE, Vlan, VlanId,
};
use crate::wire::{Bpdu, BpduFlags, BridgeId, HELLO_TIME, MAX_AGE, Mac, port_id};

/// Path cost of every port (vde_switch's "1 Mbit line").
pub const PORT_COST: u32 = 20_000_000;
pub const DEFAULT_PRIORITY: u16 = 0x8000;
const HELLO_INTERVAL: u64 = HELLO_TIME as u64;
/// Root information not confirmed for longer than this is given up.
const ROOT_TIMEOUT: u64 = 3 * HELLO_INTERVAL;
/// A port counts as speaking FSTP while it sent a BPDU within the current
/// or the previous window of this many hellos.
const HELLOS_PER_WINDOW: u64 = 4;

/// What the spanning tree needs from the switch around it.
pub(super) trait Host {
    /// Seconds since the switch started.
    fn now(&self) -> u64;
    fn is_discarding(&self, vlan: VlanId, port: PortId) -> bool;
    fn set_discarding(&mut self, vlan: VlanId, port: PortId, discarding: bool);
    /// Forgets every station learned in `vlan`.
    fn flush_vlan(&mut self, vlan: VlanId);
    /// Sends `frame` to every endpoint of `port`.
    fn send(&mut self, port: PortId, frame: Vec<u8>);
    fn event(&mut self, event: Event);
}

/// A port's role as `fstp/print` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Root,
    Designated,
    AlternateBackup,
    Edge,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Root => "Root",
            Role::Designated => "Designated",
            Role::AlternateBackup => "Alternate/Backup",
            Role::Edge => "Edge",
        }
    }
}

/// An active member port of one VLAN's tree.
#[derive(Debug, Clone, Copy, Default)]
struct Member {
    tagged: bool,
    /// Blocked by the protocol (the reference's "backup" set).
    backup: bool,
    /// Declared to lead to end stations only: no BPDUs in or out.
    edge: bool,
    /// A BPDU arrived in the current/previous window (indexed like
    /// [`Fstp::window`]).
    heard: [bool; 2],
}

impl Member {
    fn speaks_fstp(&self) -> bool {
        self.heard[0] || self.heard[1]
    }
}

/// The spanning tree of one VLAN.
#[derive(Debug, Clone)]
pub struct Tree {
    root: BridgeId,
    root_cost: u32,
    /// The neighbour we reach the root through, and its port id.
    designated: BridgeId,
    designated_port: [u8; 2],
    /// 0 while this switch considers itself the root.
    root_port: PortId,
    /// When the root information was last set or confirmed.
    root_since: u64,
    bonus_port: PortId,
    bonus_cost: u32,
    members: BTreeMap<PortId, Member>,
    /// When the VLAN last relearned for a topology change.
    last_change: Option<u64>,
    /// Ports whose BPDUs announced or caused a topology change after
    /// `last_change` in the same second: the change is carried out once,
    /// at the next tick.
    deferred_changes: BTreeSet<PortId>,
}

impl Tree {
    fn new(me: BridgeId) -> Self {
        Tree {
            root: me,
            root_cost: 0,
            designated: BridgeId::NONE,
            designated_port: [0; 2],
            root_port: 0,
            root_since: 0,
            bonus_port: 0,
            bonus_cost: 0,
            members: BTreeMap::new(),
            last_change: None,
            deferred_changes: BTreeSet::new(),
        }
    }

    pub fn root(&self) -> BridgeId {
        self.root
    }

    pub fn root_cost(&self) -> u32 {
        self.root_cost
    }

    pub fn designated(&self) -> BridgeId {
        self.designated
    }

    pub fn root_port(&self) -> PortId {
        self.root_port
    }

    pub fn root_since(&self) -> u64 {
        self.root_since
    }

    pub fn bonus(&self) -> (PortId, u32) {
        (self.bonus_port, self.bonus_cost)
    }

    /// Member ports as the reference lists them: untagged ones ascending,
    /// then tagged ones ascending, with whether each is tagged and its role.
    pub fn ports(&self) -> impl Iterator<Item = (PortId, bool, Role)> + '_ {
        self.ordered().map(|(p, m)| (p, m.tagged, self.role(p, m)))
    }

    fn role(&self, port: PortId, m: &Member) -> Role {
        if m.edge {
            Role::Edge
        } else if port == self.root_port {
            Role::Root
        } else if m.backup {
            Role::AlternateBackup
        } else {
            Role::Designated
        }
    }

    fn ordered(&self) -> impl Iterator<Item = (PortId, &Member)> + '_ {
        let untagged = self.members.iter().filter(|(_, m)| !m.tagged);
        let tagged = self.members.iter().filter(|(_, m)| m.tagged);
        untagged.chain(tagged).map(|(&p, m)| (p, m))
    }

    /// Ports that a protocol step may act on: active in FSTP, neither
    /// blocked nor edge, and not `except`.
    fn live_ports(&self, except: PortId) -> Vec<PortId> {
        self.ordered()
            .filter(|&(p, m)| p != except && !m.backup && !m.edge && m.speaks_fstp())
            .map(|(p, _)| p)
            .collect()
    }
}

/// The protocol state of the whole switch.
#[derive(Debug, Clone)]
pub struct Fstp {
    enabled: bool,
    me: BridgeId,
    mac: Mac,
    next_hello: u64,
    hellos: u64,
    /// Which of the two "heard" windows is current.
    window: usize,
    trees: BTreeMap<VlanId, Tree>,
}

impl Fstp {
    /// The protocol, off, with the tree of VLAN 0 (which always exists).
    pub(super) fn new(mac: Mac, priority: u16) -> Self {
        let me = BridgeId::new(priority, mac);
        Fstp {
            enabled: false,
            me,
            mac,
            next_hello: 0,
            hellos: 0,
            window: 0,
            trees: BTreeMap::from([(0, Tree::new(me))]),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn bridge_id(&self) -> BridgeId {
        self.me
    }

    pub fn tree(&self, vlan: VlanId) -> Option<&Tree> {
        self.trees.get(&vlan)
    }

    /// Sets the identity; only meaningful before any tree has formed.
    pub(super) fn set_identity(&mut self, mac: Mac, priority: u16) {
        self.me = BridgeId::new(priority, mac);
        self.mac = mac;
        for tree in self.trees.values_mut() {
            tree.root = self.me;
        }
    }

    /// Turns the protocol on; the first hello goes out a full interval later.
    pub(super) fn start(&mut self, now: u64) {
        if !self.enabled {
            self.enabled = true;
            self.next_hello = now + HELLO_INTERVAL;
        }
    }

    /// Turns the protocol off: every tree forgets its root and unblocks.
    pub(super) fn stop(&mut self, host: &mut impl Host) {
        if self.enabled {
            self.enabled = false;
            let vlans: Vec<VlanId> = self.trees.keys().copied().collect();
            for vlan in vlans {
                self.reset(host, vlan);
            }
        }
    }

    /// A VLAN was created: this switch is the root of its new tree.
    pub(super) fn add_vlan(&mut self, host: &mut impl Host, vlan: VlanId) {
        self.trees.insert(vlan, Tree::new(self.me));
        host.event(Event::FstpRoot { port: 0, vlan, root: self.me });
    }

    pub(super) fn remove_vlan(&mut self, vlan: VlanId) {
        self.trees.remove(&vlan);
    }

    /// This switch becomes the root of `vlan` again and unblocks its ports.
    fn reset(&mut self, host: &mut impl Host, vlan: VlanId) {
        let me = self.me;
        let Some(tree) = self.trees.get_mut(&vlan) else { return };
        tree.root = me;
        tree.root_cost = 0;
        tree.designated = BridgeId::NONE;
        tree.designated_port = [0; 2];
        tree.root_port = 0;
        tree.root_since = 0;
        host.event(Event::FstpRoot { port: 0, vlan, root: me });
        let blocked: Vec<PortId> = tree.members.iter().filter(|(_, m)| m.backup).map(|(&p, _)| p).collect();
        for port in blocked {
            tree.members.get_mut(&port).expect("listed above").backup = false;
            set_state(host, vlan, port, PortState::Forwarding);
        }
    }

    /// An active port joined `vlan` (port activation, `vlan/addport`,
    /// `port/setvlan`): it announces itself and the VLAN relearns.
    pub(super) fn add_port(&mut self, host: &mut impl Host, vlan: VlanId, port: PortId, tagged: bool) {
        let Some(tree) = self.trees.get_mut(&vlan) else { return };
        tree.members.insert(port, Member { tagged, ..Member::default() });
        // vde_switch leaves a port that was blocked before in a tagged VLAN
        // blocked for good; a (re)joining port starts forwarding instead.
        host.set_discarding(vlan, port, false);
        self.send_bpdu(host, vlan, port, false, false);
        if self.enabled {
            self.topology_change(host, vlan, port);
        }
    }

    /// An active port left `vlan` (deactivation, `vlan/delport`,
    /// `port/setvlan`). Losing the root port makes this switch the root.
    /// `port` leaves the tree of `vlan`. Quirk kept: like vde_switch, an
    /// active port that was no member (`vlan/delport` of a stranger) still
    /// makes the VLAN announce a topology change.
    pub(super) fn remove_port(&mut self, host: &mut impl Host, vlan: VlanId, port: PortId) {
        let Some(tree) = self.trees.get_mut(&vlan) else { return };
        if let Some(member) = tree.members.remove(&port) {
            if member.speaks_fstp() {
                host.event(Event::FstpPortInactive { port, vlan });
            }
            if port == tree.root_port {
                self.reset(host, vlan);
            }
        }
        if self.enabled {
            self.topology_change(host, vlan, port);
        }
    }

    /// `fstp/setedge`. A port that is not an active member keeps no mark
    /// (vde_switch clears it when the port joins). Only untagged members
    /// are unblocked by it: the reference tests the untagged set twice
    /// instead of both sets.
    pub(super) fn set_edge(&mut self, host: &mut impl Host, vlan: VlanId, port: PortId, edge: bool) {
        let Some(m) = self.trees.get_mut(&vlan).and_then(|t| t.members.get_mut(&port)) else { return };
        m.edge = edge;
        if !edge {
            m.backup = false;
        } else if !m.tagged {
            set_state(host, vlan, port, PortState::Forwarding);
        }
    }

    /// `fstp/bonus`: BPDUs received on `port` count `cost` less.
    pub(super) fn set_bonus(&mut self, vlan: VlanId, port: PortId, cost: u32) {
        if let Some(tree) = self.trees.get_mut(&vlan) {
            tree.bonus_port = port;
            tree.bonus_cost = cost;
        }
    }

    /// Called every second. A clock that jumped ahead (the switch was
    /// stopped) gets one hello, not one per missed interval.
    pub(super) fn tick(&mut self, host: &mut impl Host, now: u64) {
        self.deferred_topology_changes(host, now);
        if self.enabled && now >= self.next_hello {
            let next = self.next_hello + HELLO_INTERVAL;
            self.next_hello = if next > now { next } else { now + HELLO_INTERVAL };
            self.hello(host, now);
        }
    }

    /// Carries out the topology changes BPDUs asked for while the VLAN had
    /// already relearned within the second: once per VLAN, not telling the
    /// ports the changes came from.
    fn deferred_topology_changes(&mut self, host: &mut impl Host, now: u64) {
        let due: Vec<VlanId> =
            self.trees.iter().filter(|(_, t)| !t.deferred_changes.is_empty()).map(|(&v, _)| v).collect();
        for vlan in due {
            let tree = self.trees.get_mut(&vlan).expect("listed above");
            let origins = std::mem::take(&mut tree.deferred_changes);
            tree.last_change = Some(now);
            host.flush_vlan(vlan);
            for port in tree.live_ports(PortId::MAX).into_iter().filter(|p| !origins.contains(p)) {
                self.send_bpdu(host, vlan, port, false, true);
            }
        }
    }

    fn hello(&mut self, host: &mut impl Host, now: u64) {
        self.hellos += 1;
        let vlans: Vec<VlanId> = self.trees.keys().copied().collect();
        for &vlan in &vlans {
            let tree = &self.trees[&vlan];
            if tree.root_port != 0 && now.saturating_sub(tree.root_since) > ROOT_TIMEOUT {
                self.reset(host, vlan);
            }
            let tree = &self.trees[&vlan];
            let ports: Vec<PortId> = tree.ordered().filter(|(_, m)| !m.edge).map(|(p, _)| p).collect();
            for port in ports {
                self.send_bpdu(host, vlan, port, true, false);
            }
        }
        if self.hellos.is_multiple_of(HELLOS_PER_WINDOW) {
            self.window = 1 - self.window;
            for vlan in vlans {
                self.expire_window(host, vlan);
            }
        }
    }

    /// Starts a new "heard" window, reusing the oldest one. A blocked port
    /// whose neighbour fell silent for both windows no longer speaks FSTP:
    /// it forwards again. Ports heard only in the oldest window are
    /// reported as gone.
    fn expire_window(&mut self, host: &mut impl Host, vlan: VlanId) {
        let (oldest, previous) = (self.window, 1 - self.window);
        let Some(tree) = self.trees.get_mut(&vlan) else { return };
        let silent: Vec<PortId> =
            tree.members.iter().filter(|(_, m)| m.backup && !m.speaks_fstp()).map(|(&p, _)| p).collect();
        for port in silent {
            tree.members.get_mut(&port).expect("listed above").backup = false;
            set_state(host, vlan, port, PortState::Forwarding);
        }
        let gone: Vec<PortId> =
            tree.ordered().filter(|(_, m)| m.heard[oldest] && !m.heard[previous]).map(|(p, _)| p).collect();
        for port in gone {
            host.event(Event::FstpPortInactive { port, vlan });
        }
        for m in tree.members.values_mut() {
            m.heard[oldest] = false;
        }
    }

    /// Sends this switch's view of `vlan` to `port`, if the protocol is on.
    fn send_bpdu(&self, host: &mut impl Host, vlan: VlanId, port: PortId, agreement: bool, topology_change: bool) {
        if !self.enabled {
            return;
        }
        let Some(tree) = self.trees.get(&vlan) else { return };
        let Some(m) = tree.members.get(&port) else { return };
        let now = host.now();
        // The root advertises its information as fresh.
        let reference = if tree.root_port == 0 { 0 } else { now as i64 };
        let age = (reference - tree.root_since as i64).min(0xffff) as u16;
        let state = if host.is_discarding(vlan, port) { 0 } else { 3 };
        let bpdu = Bpdu {
            flags: BpduFlags::for_port(m.backup, tree.root_port == port, state, agreement, topology_change),
            root: tree.root,
            root_cost: tree.root_cost,
            bridge: self.me,
            port: port_id(port),
            age,
            max_age: MAX_AGE,
            hello: HELLO_TIME,
        };
        host.send(port, bpdu.encode(self.mac, m.tagged.then_some(vlan)));
    }

    /// The VLAN relearns its stations; the other live ports are told.
    fn topology_change(&mut self, host: &mut impl Host, vlan: VlanId, origin: PortId) {
        let Some(tree) = self.trees.get_mut(&vlan) else { return host.flush_vlan(vlan) };
        tree.last_change = Some(host.now());
        host.flush_vlan(vlan);
        for port in tree.live_ports(origin) {
            self.send_bpdu(host, vlan, port, false, true);
        }
    }

    /// A topology change that a received BPDU announced or caused. Any
    /// neighbour can send those as fast as it likes, and each one flushes
    /// the VLAN's stations and is passed on to every other port, so a VLAN
    /// relearns for them at most once a second; vde_switch has no such
    /// limit (it records the time of the last change, unused), and a
    /// change postponed here still happens at the next tick.
    fn heard_topology_change(&mut self, host: &mut impl Host, vlan: VlanId, origin: PortId) {
        let now = host.now();
        match self.trees.get_mut(&vlan) {
            Some(tree) if tree.last_change == Some(now) => {
                tree.deferred_changes.insert(origin);
            }
            _ => self.topology_change(host, vlan, origin),
        }
    }

    /// A new root port was chosen: block every other live port, then
    /// open the root port and agree with the neighbour behind it.
    fn adopt_root_port(&mut self, host: &mut impl Host, vlan: VlanId, root_port: PortId) {
        let Some(others) = self.trees.get(&vlan).map(|t| t.live_ports(root_port)) else { return };
        for port in others {
            set_state(host, vlan, port, PortState::Discarding);
            self.trees.get_mut(&vlan).and_then(|t| t.members.get_mut(&port)).expect("live member").backup = true;
            self.send_bpdu(host, vlan, port, false, false);
        }
        if let Some(m) = self.trees.get_mut(&vlan).and_then(|t| t.members.get_mut(&root_port)) {
            m.backup = false;
        }
        set_state(host, vlan, root_port, PortState::Forwarding);
        self.send_bpdu(host, vlan, root_port, true, false);
    }

    /// Handles a frame to the BPDU address received on `port` in `vlan`;
    /// `tagged` says whether it arrived with an 802.1Q tag.
    pub(super) fn receive(&mut self, host: &mut impl Host, vlan: VlanId, port: PortId, frame: &[u8], tagged: bool) {
        let window = self.window;
        let Some(m) = self.trees.get_mut(&vlan).and_then(|t| t.members.get_mut(&port)) else { return };
        if m.edge {
            return;
        }
        if !m.speaks_fstp() {
            host.event(Event::FstpPortActive { port, vlan });
        }
        // Any frame to the BPDU address counts as a sign of life, even one
        // too short to parse, as in the reference.
        m.heard[window] = true;
        let Ok(bpdu) = Bpdu::parse(frame, tagged) else { return };
        if bpdu.flags.topology_change() {
            self.heard_topology_change(host, vlan, port);
        }
        let tree = &self.trees[&vlan];
        let bonus = if port == tree.bonus_port { tree.bonus_cost } else { 0 };
        let cost = bpdu.root_cost.wrapping_add(PORT_COST.wrapping_sub(bonus));
        let ours = (tree.root, tree.root_cost, tree.designated, tree.designated_port);
        let offered = (bpdu.root, cost, bpdu.bridge, bpdu.port);
        let from_root_port = port == tree.root_port;
        let same_root = tree.root == bpdu.root;
        let now = host.now();
        if ours == offered {
            self.trees.get_mut(&vlan).expect("exists").root_since = now;
        } else if ours > offered || from_root_port {
            // A better offer, or worse news from where the root used to be.
            self.adopt_root(host, vlan, port, &bpdu, cost);
        } else if same_root {
            // Same root, and our path is better: whether the link stays
            // open depends on the neighbour's use of it. If it is its root
            // port we are the designated end; otherwise the link is
            // redundant and this end blocks.
            let block = !bpdu.flags.from_root_port();
            let Some(m) = self.trees.get_mut(&vlan).and_then(|t| t.members.get_mut(&port)) else { return };
            if m.backup != block {
                m.backup = block;
                let state = if block { PortState::Discarding } else { PortState::Forwarding };
                set_state(host, vlan, port, state);
                self.heard_topology_change(host, vlan, port);
            }
        } else {
            // The neighbour believes in a worse root: tell it about ours.
            self.send_bpdu(host, vlan, port, false, false);
        }
    }

    /// Takes the root information of `bpdu`, received on `port` with the
    /// path cost `cost`, and makes `port` the root port.
    fn adopt_root(&mut self, host: &mut impl Host, vlan: VlanId, port: PortId, bpdu: &Bpdu, cost: u32) {
        // The reference compares the current root with the 8 bytes at its
        // BPDU template's source MAC (the MAC and the length field) and
        // resets the tree first when the root is not greater. That only
        // happens with low priorities, but it changes which ports get
        // BPDUs next, so it is kept.
        let mut template_bytes = [0u8; 8];
        template_bytes[..6].copy_from_slice(&self.mac.0);
        template_bytes[6..].copy_from_slice(&[0x00, 0x27]);
        if self.trees[&vlan].root.0 <= template_bytes {
            self.reset(host, vlan);
        }
        let now = host.now();
        let tree = self.trees.get_mut(&vlan).expect("exists");
        tree.root = bpdu.root;
        tree.root_cost = cost;
        tree.designated = bpdu.bridge;
        tree.designated_port = bpdu.port;
        tree.root_port = port;
        tree.root_since = now;
        host.event(Event::FstpRoot { port, vlan, root: bpdu.root });
        self.adopt_root_port(host, vlan, port);
        self.heard_topology_change(host, vlan, port);
    }
}

/// Changes a port's forwarding state and reports it.
fn set_state(host: &mut impl Host, vlan: VlanId, port: PortId, state: PortState) {
    host.set_discarding(vlan, port, state == PortState::Discarding);
    host.event(Event::FstpStatus { port, vlan, state });
}

/// The switch as the spanning tree sees it: its parts, borrowed apart from
/// the protocol state.
struct Plant<'a> {
    ports: &'a mut PortTable,
    vlans: &'a mut BTreeMap<VlanId, Vlan>,
    macs: &'a mut MacTable,
    events: &'a mut Vec<Event>,
    outbox: &'a mut Vec<Outgoing>,
    now: u64,
}

impl Host for Plant<'_> {
    fn now(&self) -> u64 {
        self.now
    }

    fn is_discarding(&self, vlan: VlanId, port: PortId) -> bool {
        self.vlans.get(&vlan).is_some_and(|v| v.is_discarding(port))
    }

    fn set_discarding(&mut self, vlan: VlanId, port: PortId, discarding: bool) {
        let ports = &*self.ports;
        if let Some(v) = self.vlans.get_mut(&vlan) {
            v.set_discarding(port, discarding);
            v.refresh(|p| ports.get(p).is_some_and(Port::forwards));
        }
    }

    fn flush_vlan(&mut self, vlan: VlanId) {
        self.macs.retain(|s| s.vlan != vlan, self.events);
    }

    /// Counted once for the port, like every frame the switch sends.
    fn send(&mut self, port: PortId, frame: Vec<u8>) {
        let Some(p) = self.ports.get_mut(port) else { return };
        p.counters.out_pkts += 1;
        p.counters.out_bytes += frame.len() as u64;
        for &endpoint in &p.endpoints {
            self.outbox.push(Outgoing { endpoint, frame: frame.clone() });
        }
    }

    fn event(&mut self, event: Event) {
        self.events.push(event);
    }
}

/// The switch's side of the spanning tree: hooks called where ports and
/// VLANs change, and the console's controls.
impl Switch {
    fn plant(&mut self) -> (&mut Fstp, Plant<'_>) {
        let plant = Plant {
            ports: &mut self.ports,
            vlans: &mut self.vlans,
            macs: &mut self.macs,
            events: &mut self.events,
            outbox: &mut self.outbox,
            now: self.now,
        };
        (&mut self.fstp, plant)
    }

    fn is_active(&self, p: PortId) -> bool {
        self.port(p).is_some_and(Port::is_active)
    }

    /// The VLANs `p` belongs to, ascending, with whether it is tagged there.
    fn memberships(&self, p: PortId) -> Vec<(VlanId, bool)> {
        let Some(port) = self.port(p) else { return Vec::new() };
        let mut all: Vec<(VlanId, bool)> = port.tagged_vlans.iter().map(|&v| (v, true)).collect();
        if port.untagged_vlan != VLAN_NONE {
            all.push((port.untagged_vlan, false));
        }
        all.sort_unstable();
        all
    }

    pub(super) fn is_discarding(&self, vlan: VlanId, p: PortId) -> bool {
        self.vlans.get(&vlan).is_some_and(|v| v.is_discarding(p))
    }

    /// `p` got its first endpoint: it joins the trees of all its VLANs.
    pub(super) fn fstp_activated(&mut self, p: PortId) {
        for (vlan, tagged) in self.memberships(p) {
            let (fstp, mut plant) = self.plant();
            fstp.add_port(&mut plant, vlan, p, tagged);
        }
    }

    /// `p` lost its last endpoint: it leaves the trees of all its VLANs.
    pub(super) fn fstp_deactivated(&mut self, p: PortId) {
        for (vlan, _) in self.memberships(p) {
            let (fstp, mut plant) = self.plant();
            fstp.remove_port(&mut plant, vlan, p);
        }
    }

    /// Membership of `p` in `vlan` was (re)configured; only active ports
    /// take part in the tree.
    pub(super) fn fstp_joined(&mut self, vlan: VlanId, p: PortId, tagged: bool) {
        if self.is_active(p) {
            let (fstp, mut plant) = self.plant();
            fstp.add_port(&mut plant, vlan, p, tagged);
        }
    }

    pub(super) fn fstp_left(&mut self, vlan: VlanId, p: PortId) {
        if self.is_active(p) {
            let (fstp, mut plant) = self.plant();
            fstp.remove_port(&mut plant, vlan, p);
        }
    }

    pub(super) fn fstp_vlan_created(&mut self, vlan: VlanId) {
        let (fstp, mut plant) = self.plant();
        fstp.add_vlan(&mut plant, vlan);
    }

    pub(super) fn fstp_receive(&mut self, vlan: VlanId, p: PortId, frame: &[u8], tagged: bool) {
        let (fstp, mut plant) = self.plant();
        fstp.receive(&mut plant, vlan, p, frame, tagged);
    }

    pub(super) fn fstp_tick(&mut self, now: u64) {
        let (fstp, mut plant) = self.plant();
        fstp.tick(&mut plant, now);
    }

    pub fn fstp(&self) -> &Fstp {
        &self.fstp
    }

    /// The bridge id is the priority and the switch MAC.
    pub fn set_bridge_id(&mut self, mac: Mac, priority: u16) {
        self.fstp.set_identity(mac, priority);
    }

    /// Turns the spanning tree on or off. Returns false, changing nothing,
    /// when asked to turn it on in hub mode.
    pub fn set_fstp(&mut self, on: bool) -> bool {
        if on && self.hub {
            return false;
        }
        let now = self.now;
        let (fstp, mut plant) = self.plant();
        if on {
            fstp.start(now);
        } else {
            fstp.stop(&mut plant);
        }
        true
    }

    /// Checks the arguments of `fstp/setedge` and `fstp/bonus`. As in
    /// vde_switch, the port only has to be in range, not to exist.
    fn check_fstp_args(&self, vlan: VlanId, p: PortId) -> Result<(), ConfigError> {
        if vlan >= VLAN_NONE || p >= self.numports() {
            return Err(ConfigError::Invalid);
        }
        if self.fstp.tree(vlan).is_none() {
            return Err(ConfigError::Missing);
        }
        Ok(())
    }

    /// Declares `p` an edge port of `vlan` (or not). The mark lasts while
    /// the port stays an active member.
    pub fn set_fstp_edge(&mut self, vlan: VlanId, p: PortId, edge: bool) -> Result<(), ConfigError> {
        self.check_fstp_args(vlan, p)?;
        let (fstp, mut plant) = self.plant();
        fstp.set_edge(&mut plant, vlan, p, edge);
        Ok(())
    }

    /// Makes BPDUs received on `p` in `vlan` count `cost` less.
    pub fn set_fstp_bonus(&mut self, vlan: VlanId, p: PortId, cost: u32) -> Result<(), ConfigError> {
        self.check_fstp_args(vlan, p)?;
        self.fstp.set_bonus(vlan, p, cost);
        Ok(())
    }

    /// Takes the frames the switch originated since the last call.
    pub fn take_outbox(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.outbox)
    }
}

#[cfg(test)]
mod tests;
