//! The switching engine: ports, endpoints, VLANs, the MAC table and the
//! forwarding decision. It performs no I/O and reads no clock; callers pass
//! the current time (whole seconds since start) and move the bytes.

mod fstp;
mod mactable;
mod port;
mod vlan;

use std::collections::BTreeMap;

pub use fstp::{DEFAULT_PRIORITY, Fstp, PORT_COST, Role, Tree};
pub use mactable::{DEFAULT_BUCKETS, DEFAULT_CAPACITY, MAX_BUCKETS, MacTable, Station, bucket_count};
use port::PortTable;
pub use port::{Acl, Counters, Credentials, DropReason, Port};
pub use vlan::{PortState, Vlan};

use crate::wire::{BPDU_DST, BridgeId, Frame, FrameError, MAX_FRAME, Mac};

pub type PortId = u32;
pub type VlanId = u16;

/// The untagged VLAN of a port that accepts no untagged frames.
pub const VLAN_NONE: VlanId = 4095;
/// Highest VLAN id that can be created.
pub const VLAN_MAX: VlanId = 4093;
pub const DEFAULT_NUMPORTS: u32 = 32;
/// Payload bytes of a frame by default, and the most `--mtu` allows.
pub const DEFAULT_MTU: u32 = 1500;
pub const MAX_MTU: u32 = 65500;
/// Frame bytes beyond the payload: addresses, an 802.1Q tag, the EtherType.
pub const FRAME_OVERHEAD: u32 = 18;
/// Most ports a switch may have (port numbers must fit the 16 bits of an
/// FSTP port id and the console's listings).
pub const MAX_PORTS: u32 = 1 << 16;

/// Handle of an attached endpoint; stable while it stays attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey(pub u32);

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub port: PortId,
    /// The number shown as `endpoint ID` and used by `port/epclose`.
    pub id: u32,
    /// How the endpoint moves bytes, as named in port listings; the
    /// engine knows nothing else about it.
    pub module: &'static str,
    /// As the client sent it (not necessarily UTF-8).
    pub description: Vec<u8>,
}

/// Which port a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRequest {
    Any,
    Port(PortId),
    /// The management port 0.
    Zero,
}

#[derive(Debug, Clone)]
pub struct Attach {
    pub request: PortRequest,
    pub id: u32,
    /// How the endpoint moves bytes, as named in port listings; the
    /// engine knows nothing else about it.
    pub module: &'static str,
    pub description: Vec<u8>,
    /// The identity that owns a port while attached (the owner of the
    /// client's socket file, `None` for abstract addresses).
    pub user: Option<u32>,
    /// The peer's kernel credentials, checked against port ACLs.
    pub credentials: Credentials,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    #[error("port {0} out of range")]
    OutOfRange(PortId),
    #[error("no free port")]
    NoFreePort,
    #[error("port {0} access denied")]
    AccessDenied(PortId),
    #[error("port {0} is in use by another user")]
    InUseByOtherUser(PortId),
}

/// What the console and the logs are told about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    HashAdd { mac: Mac, vlan: VlanId, port: PortId },
    HashDel { mac: Mac, vlan: VlanId, port: PortId },
    PortAdd(PortId),
    PortDel(PortId),
    PortDescr { port: PortId, id: u32, description: Vec<u8> },
    EndpointAdd { port: PortId, id: u32 },
    EndpointDel { port: PortId, id: u32 },
    MacMoved { mac: Mac, from: PortId, to: PortId },
    // Spanning tree: a port's state changed; a VLAN's root changed (`port`
    // is the new root port, 0 when this switch became the root); a port
    // started receiving BPDUs; a port stopped receiving them or left.
    FstpStatus { port: PortId, vlan: VlanId, state: PortState },
    FstpRoot { port: PortId, vlan: VlanId, root: BridgeId },
    FstpPortActive { port: PortId, vlan: VlanId },
    FstpPortInactive { port: PortId, vlan: VlanId },
}

/// How a frame must be rewritten for one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    AsIs,
    /// Remove the 802.1Q tag.
    Untag,
    /// Insert an 802.1Q tag with this TCI.
    Tag(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub endpoint: EndpointKey,
    pub edit: Edit,
}

/// A frame the switch itself sends (a BPDU), for the I/O layer to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub endpoint: EndpointKey,
    pub frame: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid argument")]
    Invalid,
    #[error("no such port or VLAN")]
    Missing,
    #[error("already exists")]
    Exists,
    #[error("in use")]
    InUse,
    #[error("no space left")]
    Full,
}

pub struct Switch {
    ports: PortTable,
    endpoints: Vec<Option<Endpoint>>,
    free_keys: Vec<u32>,
    vlans: BTreeMap<VlanId, Vlan>,
    macs: MacTable,
    hub: bool,
    events: Vec<Event>,
    fstp: Fstp,
    /// Frames originated by the switch, waiting for the I/O layer.
    outbox: Vec<Outgoing>,
    /// The time last passed in, for what happens between ticks.
    now: u64,
    /// Mirror ports, each sent a copy of every forwarded frame.
    mirrors: Vec<PortId>,
    /// Longest frame carried; longer ones are dropped as oversize.
    max_frame: usize,
    /// Whether new ports start as transparent trunks (`--trunk`).
    trunk_default: bool,
    /// Active trunk ports, ascending: where frames of unconfigured VLANs
    /// are flooded.
    active_trunks: Vec<PortId>,
}

impl Switch {
    pub fn new(numports: u32, hub: bool, buckets: u32) -> Self {
        let mut vlans = BTreeMap::new();
        vlans.insert(0, Vlan::default());
        Switch {
            ports: PortTable::new(numports),
            endpoints: Vec::new(),
            free_keys: Vec::new(),
            vlans,
            macs: MacTable::new(buckets, DEFAULT_CAPACITY),
            hub,
            events: Vec::new(),
            fstp: Fstp::new(Mac::default(), DEFAULT_PRIORITY),
            outbox: Vec::new(),
            now: 0,
            mirrors: Vec::new(),
            max_frame: MAX_FRAME,
            trunk_default: false,
            active_trunks: Vec::new(),
        }
    }

    /// Makes every port, existing and future, a transparent trunk or not.
    pub fn set_trunk_default(&mut self, trunk: bool) {
        self.trunk_default = trunk;
        let numbers: Vec<PortId> = self.ports.iter().map(|(p, _)| p).collect();
        for p in numbers {
            let _ = self.set_trunk(p, trunk);
        }
    }

    /// Makes `p` a transparent trunk or not. A port leaving trunk mode
    /// forgets the stations it carried in unconfigured VLANs.
    pub fn set_trunk(&mut self, p: PortId, trunk: bool) -> Result<(), ConfigError> {
        let port = self.existing_port_mut(p)?;
        if std::mem::replace(&mut port.trunk, trunk) && !trunk {
            let vlans = &self.vlans;
            self.macs.retain(|s| s.port != p || vlans.contains_key(&s.vlan), &mut self.events);
        }
        self.refresh_trunk(p);
        Ok(())
    }

    /// Puts `p` in the active trunk list or takes it out, as it now is.
    fn refresh_trunk(&mut self, p: PortId) {
        let carries = self.ports.get(p).is_some_and(|port| port.trunk && port.forwards());
        match (self.active_trunks.binary_search(&p), carries) {
            (Err(at), true) => self.active_trunks.insert(at, p),
            (Ok(at), false) => {
                self.active_trunks.remove(at);
            }
            _ => {}
        }
    }

    /// Carries frames with up to `mtu` payload bytes, tagged (`--mtu`).
    pub fn set_mtu(&mut self, mtu: u32) {
        self.max_frame = (mtu + FRAME_OVERHEAD) as usize;
    }

    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    // ----- endpoints -------------------------------------------------------

    fn pick_port(&self, request: PortRequest) -> Result<PortId, AttachError> {
        match request {
            PortRequest::Zero => Ok(0),
            PortRequest::Port(p) if self.ports.in_range(p) => Ok(p),
            PortRequest::Port(p) => Err(AttachError::OutOfRange(p)),
            PortRequest::Any => self.free_port().ok_or(AttachError::NoFreePort),
        }
    }

    /// The lowest port ≥ 1 that automatic allocation may hand out.
    fn free_port(&self) -> Option<PortId> {
        (1..self.ports.numports()).find(|&i| self.ports.get(i).is_none_or(|p| !p.is_active() && p.allocatable))
    }

    /// Creates port `p` as a fresh untagged member of VLAN 0.
    fn create_port(&mut self, p: PortId, allocatable: bool) -> &mut Port {
        // New ports join VLAN 0, which `vlan/remove 0` may have removed
        // (vde_switch crashes then): bring it back whole, spanning tree too.
        if let std::collections::btree_map::Entry::Vacant(vlan_0) = self.vlans.entry(0) {
            vlan_0.insert(Vlan::default());
            self.fstp_vlan_created(0);
        }
        self.vlans.get_mut(&0).expect("ensured above").set_member(p, false);
        self.events.push(Event::PortAdd(p));
        self.ports.insert(p, Port::new(allocatable, self.trunk_default))
    }

    /// Attaches a new endpoint, creating its port if needed.
    pub fn attach(&mut self, a: Attach) -> Result<(EndpointKey, PortId), AttachError> {
        let p = self.pick_port(a.request)?;
        if let Some(port) = self.ports.get(p) {
            if !port.is_active() && !port.acl.admits(&a.credentials) {
                return Err(AttachError::AccessDenied(p));
            }
            // Sharing a port means seeing its traffic: only the same user,
            // both as vde_switch sees it and as the kernel does.
            let same_user = port.current_user == a.user && port.peer_uid == a.credentials.uid;
            if port.is_active() && !same_user {
                return Err(AttachError::InUseByOtherUser(p));
            }
        }
        let key = match self.free_keys.pop() {
            Some(k) => k,
            None => {
                self.endpoints.push(None);
                (self.endpoints.len() - 1) as u32
            }
        };
        let key = EndpointKey(key);
        if self.ports.get(p).is_none() {
            self.create_port(p, true);
        }
        let port = self.ports.get_mut(p).expect("created above");
        let activated = !port.is_active();
        port.current_user = a.user;
        port.peer_uid = a.credentials.uid;
        port.endpoints.push(key);
        self.endpoints[key.0 as usize] =
            Some(Endpoint { port: p, id: a.id, module: a.module, description: a.description.clone() });
        self.events.push(Event::EndpointAdd { port: p, id: a.id });
        self.events.push(Event::PortDescr { port: p, id: a.id, description: a.description });
        if activated {
            self.refresh_vlans_of(p);
            self.fstp_activated(p);
        }
        Ok((key, p))
    }

    /// Detaches an endpoint. A port losing its last endpoint turns inactive
    /// and forgets the stations learned on it; other ports' stations stay
    /// (unless the spanning tree, when on, announces a topology change).
    pub fn detach(&mut self, key: EndpointKey) -> Option<Endpoint> {
        let ep = self.endpoints.get_mut(key.0 as usize)?.take()?;
        self.free_keys.push(key.0);
        let port = self.ports.get_mut(ep.port).expect("endpoint's port exists");
        port.endpoints.retain(|&k| k != key);
        self.events.push(Event::EndpointDel { port: ep.port, id: ep.id });
        if !port.is_active() {
            port.current_user = None;
            self.events.push(Event::PortDel(ep.port));
            let gone = ep.port;
            self.macs.retain(|s| s.port != gone, &mut self.events);
            self.refresh_vlans_of(gone);
            self.fstp_deactivated(gone);
        }
        Some(ep)
    }

    pub fn endpoint(&self, key: EndpointKey) -> Option<&Endpoint> {
        self.endpoints.get(key.0 as usize)?.as_ref()
    }

    /// The endpoint of `port` shown with `id`.
    pub fn find_endpoint(&self, port: PortId, id: u32) -> Option<EndpointKey> {
        self.port(port)?.endpoints().find(|&k| self.endpoint(k).is_some_and(|e| e.id == id))
    }

    // ----- forwarding ------------------------------------------------------

    fn count_drops(&mut self, port: PortId, reason: DropReason, frames: u64) {
        if let Some(p) = self.ports.get_mut(port) {
            p.counters.drops[reason as usize] += frames;
        }
    }

    fn count_drop(&mut self, port: PortId, reason: DropReason) {
        self.count_drops(port, reason, 1);
    }

    /// Counts frames the I/O layer could not hand to `key`.
    pub fn count_egress_drops(&mut self, key: EndpointKey, reason: DropReason, frames: u64) {
        if let Some(port) = self.endpoint(key).map(|e| e.port) {
            self.count_drops(port, reason, frames);
        }
    }

    /// Decides where a frame received from `from` goes, appending one
    /// [`Delivery`] per destination endpoint to `out`. The source endpoint's
    /// port never receives its own frame.
    pub fn ingress(
        &mut self,
        from: EndpointKey,
        bytes: &[u8],
        now: u64,
        out: &mut Vec<Delivery>,
    ) -> Result<(), DropReason> {
        if self.mirrors.is_empty() {
            self.forward::<false>(from, bytes, now, out)
        } else {
            self.forward_mirrored(from, bytes, now, out)
        }
    }

    /// Forwarding while mirror ports exist, out of line so that without
    /// them forwarding is the same code as ever, plus one test.
    #[cold]
    #[inline(never)]
    fn forward_mirrored(
        &mut self,
        from: EndpointKey,
        bytes: &[u8],
        now: u64,
        out: &mut Vec<Delivery>,
    ) -> Result<(), DropReason> {
        self.forward::<true>(from, bytes, now, out)
    }

    /// [`Switch::ingress`]; `MIRRORS`: some port is a mirror port.
    #[inline(always)]
    fn forward<const MIRRORS: bool>(
        &mut self,
        from: EndpointKey,
        bytes: &[u8],
        now: u64,
        out: &mut Vec<Delivery>,
    ) -> Result<(), DropReason> {
        let Some(src) = self.endpoint(from).map(|e| e.port) else {
            return Ok(());
        };
        self.now = now;
        let frame = match Frame::new_checked_up_to(bytes, self.max_frame) {
            Ok(f) => f,
            Err(e) => {
                let reason = match e {
                    FrameError::Runt => DropReason::Runt,
                    FrameError::Oversize => DropReason::Oversize,
                };
                self.count_drop(src, reason);
                return Err(reason);
            }
        };
        let len = frame.len() as u64;
        let port = self.ports.get_mut(src).expect("endpoint's port exists");
        port.counters.in_pkts += 1;
        port.counters.in_bytes += len;
        if MIRRORS && port.mirror {
            self.count_drop(src, DropReason::Mirror);
            return Err(DropReason::Mirror);
        }
        if self.hub {
            self.flood_hub::<MIRRORS>(src, len, out);
            if MIRRORS {
                self.mirror(src, len, out);
            }
            return Ok(());
        }
        let tci = frame.tci();
        if let Some(tci) = tci {
            let vid = tci & 0x0fff;
            if port.trunk && vid < VLAN_NONE && !self.vlans.contains_key(&vid) {
                let switched = self.switch_transparent(src, &frame, vid, len, now, out);
                if MIRRORS && switched.is_ok() {
                    self.mirror(src, len, out);
                }
                return switched;
            }
        }
        let vlan = match tci {
            Some(tci) => tci & 0x0fff,
            None => port.untagged_vlan,
        };
        let admitted = match tci {
            Some(_) => port.is_member(vlan) && self.vlans.contains_key(&vlan),
            None => vlan != VLAN_NONE,
        };
        if !admitted {
            let reason = if tci.is_some() { DropReason::NotMember } else { DropReason::NoUntaggedVlan };
            self.count_drop(src, reason);
            return Err(reason);
        }
        if self.fstp.enabled() && frame.dst() == BPDU_DST {
            self.fstp_receive(vlan, src, bytes, tci.is_some());
            return Ok(());
        }
        if self.is_discarding(vlan, src) {
            self.count_drop(src, DropReason::Discarding);
            return Err(DropReason::Discarding);
        }
        match self.learn_and_look_up(src, &frame, vlan, now) {
            Some(dst) if dst == src => {
                self.count_drop(src, DropReason::SamePort);
                Err(DropReason::SamePort)
            }
            // Stations are forgotten when a port gets blocked, so this only
            // guards against delivering through a blocked port.
            Some(dst) if self.is_discarding(vlan, dst) => {
                self.count_drop(src, DropReason::Discarding);
                Err(DropReason::Discarding)
            }
            Some(dst) => {
                let untagged_there = self.ports.get(dst).is_some_and(|p| p.untagged_vlan == vlan);
                let edit = match (tci.is_some(), untagged_there) {
                    (true, true) => Edit::Untag,
                    (false, false) => Edit::Tag(vlan),
                    _ => Edit::AsIs,
                };
                self.deliver(dst, edit, len, out);
                if MIRRORS {
                    self.mirror(src, len, out);
                }
                Ok(())
            }
            None => {
                self.flood_vlan(src, vlan, tci.is_some(), len, out);
                if MIRRORS {
                    self.mirror(src, len, out);
                }
                Ok(())
            }
        }
    }

    fn flood_vlan(&mut self, src: PortId, vlan: VlanId, tagged_input: bool, len: u64, out: &mut Vec<Delivery>) {
        let Some(v) = self.vlans.get(&vlan) else { return };
        // Split borrows: the member lists are read while ports are counted.
        let (same, other, other_edit) = if tagged_input {
            (&v.active_tagged, &v.active_untagged, Edit::Untag)
        } else {
            (&v.active_untagged, &v.active_tagged, Edit::Tag(vlan))
        };
        let batches = [(same.as_slice(), Edit::AsIs), (other.as_slice(), other_edit)];
        for (ports, edit) in batches {
            for &p in ports.iter().filter(|&&p| p != src) {
                Self::deliver_to(&mut self.ports, p, edit, len, out);
            }
        }
    }

    /// A tagged frame of a VLAN the switch has not configured, from a
    /// trunk port: learned and looked up per (MAC, VID) like any other, but
    /// carried among the trunk ports only, tag untouched.
    fn switch_transparent(
        &mut self,
        src: PortId,
        frame: &Frame,
        vid: VlanId,
        len: u64,
        now: u64,
        out: &mut Vec<Delivery>,
    ) -> Result<(), DropReason> {
        match self.learn_and_look_up(src, frame, vid, now) {
            Some(dst) if dst == src => {
                self.count_drop(src, DropReason::SamePort);
                Err(DropReason::SamePort)
            }
            Some(dst) if self.active_trunks.binary_search(&dst).is_ok() => {
                self.deliver(dst, Edit::AsIs, len, out);
                Ok(())
            }
            _ => {
                for &p in self.active_trunks.iter().filter(|&&p| p != src) {
                    Self::deliver_to(&mut self.ports, p, Edit::AsIs, len, out);
                }
                Ok(())
            }
        }
    }

    /// Learns the frame's source behind `src` in `vlan` (a multicast source
    /// is never learned) and looks up where its destination is (a multicast
    /// destination is never known). Inlined like `forward`, which it serves.
    #[inline(always)]
    fn learn_and_look_up(&mut self, src: PortId, frame: &Frame, vlan: VlanId, now: u64) -> Option<PortId> {
        self.macs.learn_and_look_up(frame.src(), frame.dst(), vlan, src, now, &mut self.events)
    }

    fn flood_hub<const MIRRORS: bool>(&mut self, src: PortId, len: u64, out: &mut Vec<Delivery>) {
        self.ports.each_mut_from(1, |p, port| {
            if p != src && !(MIRRORS && port.mirror) {
                Self::deliver_to_port(port, Edit::AsIs, len, out);
            }
        });
    }

    /// Copies a forwarded frame, as it came in, to every mirror port but
    /// the one it came from.
    fn mirror(&mut self, src: PortId, len: u64, out: &mut Vec<Delivery>) {
        for &m in &self.mirrors {
            if m != src && self.ports.get(m).is_some_and(Port::is_active) {
                Self::deliver_to(&mut self.ports, m, Edit::AsIs, len, out);
            }
        }
    }

    fn deliver(&mut self, port: PortId, edit: Edit, len: u64, out: &mut Vec<Delivery>) {
        Self::deliver_to(&mut self.ports, port, edit, len, out);
    }

    /// Sends to every endpoint of `port`, counted once for the port.
    fn deliver_to(ports: &mut PortTable, port: PortId, edit: Edit, len: u64, out: &mut Vec<Delivery>) {
        if let Some(p) = ports.get_mut(port) {
            Self::deliver_to_port(p, edit, len, out);
        }
    }

    fn deliver_to_port(p: &mut Port, edit: Edit, len: u64, out: &mut Vec<Delivery>) {
        let sent = match edit {
            Edit::AsIs => len,
            Edit::Untag => len.saturating_sub(4),
            Edit::Tag(_) => len + 4,
        };
        p.counters.out_pkts += 1;
        p.counters.out_bytes += sent;
        out.extend(p.endpoints.iter().map(|&endpoint| Delivery { endpoint, edit }));
    }

    /// Advances the clock by one tick (called once a second).
    pub fn tick(&mut self, now: u64) {
        self.now = now;
        self.macs.tick(now);
        self.fstp_tick(now);
    }

    /// Takes the events produced since the last call (without allocating
    /// when there are none, which is nearly always).
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    // ----- VLAN bookkeeping ------------------------------------------------

    /// Brings the forwarding lists of `p`'s VLANs (and the trunks) up to
    /// date after `p` became active or inactive.
    fn refresh_vlans_of(&mut self, p: PortId) {
        self.refresh_trunk(p);
        let Some(port) = self.ports.get(p) else { return };
        let mut ids: Vec<VlanId> = port.tagged_vlans.iter().copied().collect();
        ids.push(port.untagged_vlan);
        for id in ids {
            self.refresh_vlan(id);
        }
    }

    fn refresh_vlan(&mut self, id: VlanId) {
        let ports = &self.ports;
        if let Some(v) = self.vlans.get_mut(&id) {
            v.refresh(|p| ports.get(p).is_some_and(Port::forwards));
        }
    }

    // ----- queries and configuration (the console's view) ---------------------

    pub fn numports(&self) -> u32 {
        self.ports.numports()
    }

    pub fn is_hub(&self) -> bool {
        self.hub
    }

    pub fn port(&self, p: PortId) -> Option<&Port> {
        self.ports.get(p)
    }

    /// Existing ports in ascending order.
    pub fn ports(&self) -> impl Iterator<Item = (PortId, &Port)> {
        self.ports.iter()
    }

    pub fn vlan(&self, id: VlanId) -> Option<&Vlan> {
        self.vlans.get(&id)
    }

    pub fn vlans(&self) -> impl Iterator<Item = (VlanId, &Vlan)> {
        self.vlans.iter().map(|(&id, v)| (id, v))
    }

    pub fn mac_table(&self) -> &MacTable {
        &self.macs
    }

    pub fn mac_table_mut(&mut self) -> &mut MacTable {
        &mut self.macs
    }

    /// Changes the MAC table's bucket count, forgetting every station.
    pub fn resize_mac_table(&mut self, buckets: u32) {
        self.macs.resize(buckets, &mut self.events);
    }

    fn existing_port_mut(&mut self, p: PortId) -> Result<&mut Port, ConfigError> {
        if !self.ports.in_range(p) {
            return Err(ConfigError::Invalid);
        }
        self.ports.get_mut(p).ok_or(ConfigError::Missing)
    }

    pub fn set_numports(&mut self, n: u32) -> Result<(), ConfigError> {
        if n == 0 || n > MAX_PORTS {
            return Err(ConfigError::Invalid);
        }
        if self.ports.set_numports(n) { Ok(()) } else { Err(ConfigError::InUse) }
    }

    /// Hub mode; entering it stops the spanning tree.
    pub fn set_hub(&mut self, hub: bool) {
        if hub {
            self.set_fstp(false);
        }
        self.hub = hub;
    }

    pub fn create_explicit_port(&mut self, p: PortId) -> Result<(), ConfigError> {
        if !self.ports.in_range(p) {
            return Err(ConfigError::Invalid);
        }
        match self.ports.get(p) {
            Some(_) => Err(ConfigError::Exists),
            None => {
                self.create_port(p, false);
                Ok(())
            }
        }
    }

    /// Reserves the lowest allocatable port (creating it if needed) and
    /// marks it not allocatable.
    pub fn create_auto_port(&mut self) -> Result<PortId, ConfigError> {
        let p = self.free_port().ok_or(ConfigError::Full)?;
        match self.ports.get_mut(p) {
            Some(port) => port.allocatable = false,
            None => {
                self.create_port(p, false);
            }
        }
        Ok(p)
    }

    pub fn remove_port(&mut self, p: PortId) -> Result<(), ConfigError> {
        let port = self.existing_port_mut(p)?;
        if port.is_active() {
            return Err(ConfigError::InUse);
        }
        let port = self.ports.remove(p).expect("exists");
        self.mirrors.retain(|&m| m != p);
        for id in port.tagged_vlans.iter().chain([&port.untagged_vlan]) {
            if let Some(v) = self.vlans.get_mut(id) {
                v.remove_member(p);
            }
        }
        Ok(())
    }

    /// Makes `p` a mirror port, or a normal one again. A mirror port is
    /// taken out of floods and its stations are forgotten: it only
    /// watches, so nothing is ever learned on it.
    pub fn set_mirror(&mut self, p: PortId, on: bool) -> Result<(), ConfigError> {
        let port = self.existing_port_mut(p)?;
        if port.mirror == on {
            return Ok(());
        }
        port.mirror = on;
        if on {
            self.mirrors.push(p);
            self.macs.retain(|s| s.port != p, &mut self.events);
        } else {
            self.mirrors.retain(|&m| m != p);
        }
        self.refresh_vlans_of(p);
        Ok(())
    }

    pub fn set_allocatable(&mut self, p: PortId, allocatable: bool) -> Result<(), ConfigError> {
        self.existing_port_mut(p)?.allocatable = allocatable;
        Ok(())
    }

    pub fn set_acl_user(&mut self, p: PortId, user: Option<u32>) -> Result<(), ConfigError> {
        self.existing_port_mut(p)?.acl.user = user;
        Ok(())
    }

    pub fn set_acl_group(&mut self, p: PortId, group: Option<u32>) -> Result<(), ConfigError> {
        self.existing_port_mut(p)?.acl.group = group;
        Ok(())
    }

    /// Zeroes the counters of `p`, or of every port.
    pub fn reset_counters(&mut self, p: Option<PortId>) -> Result<(), ConfigError> {
        match p {
            Some(p) if !self.ports.in_range(p) => Err(ConfigError::Invalid),
            Some(p) => {
                if let Some(port) = self.ports.get_mut(p) {
                    port.counters = Counters::default();
                }
                Ok(())
            }
            None => {
                self.ports.iter_mut().for_each(|port| port.counters = Counters::default());
                Ok(())
            }
        }
    }

    /// Makes `vlan` the untagged VLAN of `p` (`VLAN_NONE` for none).
    pub fn set_port_vlan(&mut self, p: PortId, vlan: VlanId) -> Result<(), ConfigError> {
        if !self.ports.in_range(p) || vlan > VLAN_NONE {
            return Err(ConfigError::Invalid);
        }
        if vlan != VLAN_NONE && !self.vlans.contains_key(&vlan) {
            return Err(ConfigError::Missing);
        }
        let port = self.existing_port_mut(p)?;
        let old = std::mem::replace(&mut port.untagged_vlan, vlan);
        port.tagged_vlans.remove(&vlan);
        if let Some(v) = self.vlans.get_mut(&old) {
            v.remove_member(p);
        }
        if let Some(v) = self.vlans.get_mut(&vlan) {
            v.set_member(p, false);
        }
        self.macs.retain(|s| s.port != p, &mut self.events);
        self.refresh_vlan(old);
        self.refresh_vlan(vlan);
        if old != VLAN_NONE {
            self.fstp_left(old, p);
        }
        if vlan != VLAN_NONE {
            self.fstp_joined(vlan, p, false);
        }
        Ok(())
    }

    pub fn create_vlan(&mut self, id: VlanId) -> Result<(), ConfigError> {
        if !(1..=VLAN_MAX).contains(&id) {
            return Err(ConfigError::Invalid);
        }
        if self.vlans.contains_key(&id) {
            return Err(ConfigError::Exists);
        }
        self.vlans.insert(id, Vlan::default());
        // Stations trunks carried in the VLAN while it was unconfigured
        // may sit on ports that are not members now.
        self.macs.retain(|s| s.vlan != id, &mut self.events);
        self.fstp_vlan_created(id);
        Ok(())
    }

    pub fn remove_vlan(&mut self, id: VlanId) -> Result<(), ConfigError> {
        if id >= VLAN_NONE {
            return Err(ConfigError::Invalid);
        }
        let v = self.vlans.get(&id).ok_or(ConfigError::Missing)?;
        if v.has_members() {
            return Err(ConfigError::InUse);
        }
        self.vlans.remove(&id);
        self.fstp.remove_vlan(id);
        Ok(())
    }

    fn check_vlan_port(&self, id: VlanId, p: PortId) -> Result<(), ConfigError> {
        if id > VLAN_MAX || !self.ports.in_range(p) {
            return Err(ConfigError::Invalid);
        }
        if !self.vlans.contains_key(&id) || self.ports.get(p).is_none() {
            return Err(ConfigError::Missing);
        }
        Ok(())
    }

    /// Adds `p` to VLAN `id` as a tagged member.
    pub fn add_tagged(&mut self, id: VlanId, p: PortId) -> Result<(), ConfigError> {
        self.check_vlan_port(id, p)?;
        let port = self.ports.get_mut(p).expect("checked");
        if port.untagged_vlan != id {
            port.tagged_vlans.insert(id);
            self.vlans.get_mut(&id).expect("checked").set_member(p, true);
            self.refresh_vlan(id);
            self.fstp_joined(id, p, true);
        }
        Ok(())
    }

    pub fn remove_tagged(&mut self, id: VlanId, p: PortId) -> Result<(), ConfigError> {
        self.check_vlan_port(id, p)?;
        let port = self.ports.get_mut(p).expect("checked");
        if port.untagged_vlan == id {
            return Err(ConfigError::InUse);
        }
        if port.tagged_vlans.remove(&id) {
            self.vlans.get_mut(&id).expect("checked").remove_member(p);
            self.macs.retain(|s| !(s.port == p && s.vlan == id), &mut self.events);
            self.refresh_vlan(id);
        }
        self.fstp_left(id, p);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
