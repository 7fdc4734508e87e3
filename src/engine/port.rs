use std::collections::BTreeSet;

use super::{EndpointKey, VLAN_NONE, VlanId};

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
}

impl Port {
    pub(super) fn new(allocatable: bool) -> Self {
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
}
