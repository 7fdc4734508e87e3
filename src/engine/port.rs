use std::collections::BTreeSet;

use super::{EndpointKey, PortId, VLAN_NONE, VlanId};

/// Why a frame was not delivered. Doubles as the index of the per-port drop
/// counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than an Ethernet header.
    Runt,
    /// Longer than the largest frame the switch carries.
    Oversize,
    /// Tagged for a VLAN the ingress port is not a member of.
    NotMember,
    /// Untagged on a port that has no untagged VLAN.
    NoUntaggedVlan,
    /// Learned destination is the ingress port itself.
    SamePort,
    /// The spanning tree blocks the ingress (or egress) port in the VLAN.
    Discarding,
    /// The destination's socket buffer was full.
    SocketFull,
    /// Sending failed for another reason (peer gone, …).
    SendFailed,
    /// Came from a mirror port, which only watches.
    Mirror,
}

impl DropReason {
    pub const ALL: [DropReason; 9] = [
        DropReason::Runt,
        DropReason::Oversize,
        DropReason::NotMember,
        DropReason::NoUntaggedVlan,
        DropReason::SamePort,
        DropReason::Discarding,
        DropReason::SocketFull,
        DropReason::SendFailed,
        DropReason::Mirror,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::Runt => "runt",
            DropReason::Oversize => "oversize",
            DropReason::NotMember => "vlan-not-member",
            DropReason::NoUntaggedVlan => "no-untagged-vlan",
            DropReason::SamePort => "same-port",
            DropReason::Discarding => "fstp-discarding",
            DropReason::SocketFull => "socket-full",
            DropReason::SendFailed => "send-failed",
            DropReason::Mirror => "mirror-port",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub in_pkts: u64,
    pub in_bytes: u64,
    pub out_pkts: u64,
    pub out_bytes: u64,
    pub drops: [u64; DropReason::ALL.len()],
}

impl Counters {
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }
}

/// Who may attach to a port (`port/setuser`, `port/setgroup`); `None`
/// means unrestricted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Acl {
    pub user: Option<u32>,
    pub group: Option<u32>,
}

/// The credentials of a connecting process, as the kernel reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    /// Primary and supplementary groups.
    pub gids: Vec<u32>,
}

impl Acl {
    pub fn admits(&self, who: &Credentials) -> bool {
        if self.user.is_none() && self.group.is_none() {
            return true;
        }
        who.uid == 0 || self.user == Some(who.uid) || self.group.is_some_and(|g| who.gids.contains(&g))
    }
}

#[derive(Debug, Clone)]
pub struct Port {
    /// Attached endpoints, oldest first.
    pub(super) endpoints: Vec<EndpointKey>,
    pub(super) untagged_vlan: VlanId,
    pub(super) tagged_vlans: BTreeSet<VlanId>,
    /// Whether automatic allocation may hand this port out.
    pub(super) allocatable: bool,
    pub(super) acl: Acl,
    /// The user owning the port while it has endpoints.
    pub(super) current_user: Option<u32>,
    /// The kernel's uid of the processes attached while active.
    pub(super) peer_uid: u32,
    pub(super) counters: Counters,
    /// Receives a copy of every forwarded frame and takes no other part in
    /// switching (`port/setmirror`).
    pub(super) mirror: bool,
    /// A transparent trunk: tagged frames of VLANs the switch has not
    /// configured cross it with their tag (`--trunk`, `port/settrunk`).
    pub(super) trunk: bool,
}

impl Port {
    pub(super) fn new(allocatable: bool, trunk: bool) -> Self {
        Port {
            endpoints: Vec::new(),
            untagged_vlan: 0,
            tagged_vlans: BTreeSet::new(),
            allocatable,
            acl: Acl::default(),
            current_user: None,
            peer_uid: 0,
            counters: Counters::default(),
            mirror: false,
            trunk,
        }
    }

    pub fn is_active(&self) -> bool {
        !self.endpoints.is_empty()
    }

    /// Whether the port takes part in floods: a mirror port gets its
    /// copies another way.
    pub(super) fn forwards(&self) -> bool {
        self.is_active() && !self.mirror
    }

    /// Endpoints newest first, the order listings use.
    pub fn endpoints(&self) -> impl Iterator<Item = EndpointKey> + '_ {
        self.endpoints.iter().rev().copied()
    }

    pub fn untagged_vlan(&self) -> Option<VlanId> {
        (self.untagged_vlan != VLAN_NONE).then_some(self.untagged_vlan)
    }

    pub fn tagged_vlans(&self) -> &BTreeSet<VlanId> {
        &self.tagged_vlans
    }

    pub fn is_member(&self, vlan: VlanId) -> bool {
        self.untagged_vlan == vlan || self.tagged_vlans.contains(&vlan)
    }

    pub fn allocatable(&self) -> bool {
        self.allocatable
    }

    pub fn acl(&self) -> Acl {
        self.acl
    }

    pub fn current_user(&self) -> Option<u32> {
        self.current_user
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn is_mirror(&self) -> bool {
        self.mirror
    }

    pub fn is_trunk(&self) -> bool {
        self.trunk
    }
}

/// Ports per page of the port table.
const PAGE: usize = 64;

type Page = Box<[Option<Port>; PAGE]>;

/// The ports that exist, by number. Memory follows the ports created, not
/// `-n`: a page of slots is allocated when its first port is created and
/// freed with its last, so a switch started with `-n 65535` costs what one
/// with `-n 32` does until clients spread over the range.
#[derive(Debug, Default)]
pub(super) struct PortTable {
    /// Valid port numbers are `0..numports`.
    numports: u32,
    pages: Vec<Option<Page>>,
    /// The numbers of existing ports, for walks that must not visit every
    /// slot (hub flooding, listings).
    existing: BTreeSet<PortId>,
}

impl PortTable {
    pub(super) fn new(numports: u32) -> Self {
        PortTable { numports, ..PortTable::default() }
    }

    pub(super) fn numports(&self) -> u32 {
        self.numports
    }

    /// Whether `p` is a valid port number (existing or not).
    pub(super) fn in_range(&self, p: PortId) -> bool {
        p < self.numports
    }

    /// Changes the number of ports; refused while a port beyond the new
    /// count exists.
    pub(super) fn set_numports(&mut self, n: u32) -> bool {
        if self.existing.range(n..).next().is_some() {
            return false;
        }
        self.numports = n;
        true
    }

    pub(super) fn get(&self, p: PortId) -> Option<&Port> {
        let page = self.pages.get(p as usize / PAGE)?.as_ref()?;
        page[p as usize % PAGE].as_ref()
    }

    pub(super) fn get_mut(&mut self, p: PortId) -> Option<&mut Port> {
        let page = self.pages.get_mut(p as usize / PAGE)?.as_mut()?;
        page[p as usize % PAGE].as_mut()
    }

    /// Creates port `p`, which must be in range and not exist.
    pub(super) fn insert(&mut self, p: PortId, port: Port) -> &mut Port {
        debug_assert!(self.in_range(p) && self.get(p).is_none());
        let index = p as usize / PAGE;
        if self.pages.len() <= index {
            self.pages.resize_with(index + 1, || None);
        }
        let page = self.pages[index].get_or_insert_with(|| Box::new(std::array::from_fn(|_| None)));
        self.existing.insert(p);
        page[p as usize % PAGE].insert(port)
    }

    pub(super) fn remove(&mut self, p: PortId) -> Option<Port> {
        let index = p as usize / PAGE;
        let page = self.pages.get_mut(index)?.as_mut()?;
        let port = page[p as usize % PAGE].take()?;
        self.existing.remove(&p);
        if page.iter().all(Option::is_none) {
            self.pages[index] = None;
            while self.pages.last().is_some_and(Option::is_none) {
                self.pages.pop();
            }
        }
        Some(port)
    }

    /// Existing ports, ascending.
    pub(super) fn iter(&self) -> impl Iterator<Item = (PortId, &Port)> {
        self.existing.iter().filter_map(|&p| Some((p, self.get(p)?)))
    }

    /// Calls `f` on every existing port numbered `from` or more, ascending.
    pub(super) fn each_mut_from(&mut self, from: PortId, mut f: impl FnMut(PortId, &mut Port)) {
        for &p in self.existing.range(from..) {
            if let Some(port) = self.pages[p as usize / PAGE].as_mut().and_then(|page| page[p as usize % PAGE].as_mut())
            {
                f(p, port);
            }
        }
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Port> {
        self.pages.iter_mut().flatten().flat_map(|page| page.iter_mut().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_rules() {
        let user = Credentials { uid: 1000, gids: vec![1000, 27] };
        let root = Credentials { uid: 0, gids: vec![0] };
        assert!(Acl::default().admits(&user));
        let by_user = Acl { user: Some(1001), group: None };
        assert!(!by_user.admits(&user));
        assert!(by_user.admits(&root));
        let by_group = Acl { user: Some(1001), group: Some(27) };
        assert!(by_group.admits(&user));
    }

    #[test]
    fn port_table_allocates_pages_only_for_existing_ports() {
        let mut t = PortTable::new(65535);
        assert!(t.pages.is_empty(), "no page before the first port");
        t.insert(60000, Port::new(true, false));
        t.insert(1, Port::new(true, false));
        assert_eq!(t.pages.iter().flatten().count(), 2);
        assert!(t.get(60000).is_some() && t.get(60001).is_none() && t.get(65535).is_none());
        assert_eq!(t.iter().map(|(p, _)| p).collect::<Vec<_>>(), [1, 60000]);
        assert!(!t.set_numports(60000), "port 60000 still exists");
        assert!(t.remove(60000).is_some());
        assert_eq!(t.pages.len(), 1, "trailing empty pages are given back");
        assert!(t.set_numports(2) && !t.in_range(2));
        assert!(t.remove(1).is_some() && t.pages.is_empty());
    }
}
