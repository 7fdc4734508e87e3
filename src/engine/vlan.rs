use std::collections::{BTreeMap, BTreeSet};

use super::PortId;

/// A member port's forwarding state in one VLAN, as `vlan/print` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortState {
    /// Blocked by the spanning tree: frames in and out are dropped.
    Discarding,
    /// Not forwarding, not blocked: how inactive members are shown.
    Learning,
    Forwarding,
}

impl PortState {
    /// The word `vlan/print` uses.
    pub fn name(self) -> &'static str {
        match self {
            PortState::Discarding => "Discarding",
            PortState::Learning => "Learning",
            PortState::Forwarding => "Forwarding",
        }
    }
}

/// One VLAN's membership. The active member lists are kept precomputed so
/// flooding walks only ports that can receive.
#[derive(Debug, Clone, Default)]
pub struct Vlan {
    /// Every member port (active or not), ascending; `true` when tagged.
    members: BTreeMap<PortId, bool>,
    /// Members the spanning tree blocks. A port keeps the mark while it is
    /// inactive (vde_switch lists it so) until it joins the VLAN again.
    discarding: BTreeSet<PortId>,
    /// Active, forwarding members: the ports flooding and learning use.
    pub(super) active_untagged: Vec<PortId>,
    pub(super) active_tagged: Vec<PortId>,
}

impl Vlan {
    pub(super) fn set_member(&mut self, p: PortId, tagged: bool) {
        self.members.insert(p, tagged);
    }

    pub(super) fn remove_member(&mut self, p: PortId) {
        self.members.remove(&p);
        self.discarding.remove(&p);
        self.active_untagged.retain(|&x| x != p);
        self.active_tagged.retain(|&x| x != p);
    }

    /// Marks `p` blocked or not; the caller refreshes the active lists.
    pub(super) fn set_discarding(&mut self, p: PortId, discarding: bool) {
        if discarding && self.members.contains_key(&p) {
            self.discarding.insert(p);
        } else {
            self.discarding.remove(&p);
        }
    }

    pub fn is_discarding(&self, p: PortId) -> bool {
        self.discarding.contains(&p)
    }

    pub(super) fn refresh(&mut self, is_active: impl Fn(PortId) -> bool) {
        self.active_untagged.clear();
        self.active_tagged.clear();
        for (&p, &tagged) in &self.members {
            if is_active(p) && !self.discarding.contains(&p) {
                if tagged { &mut self.active_tagged } else { &mut self.active_untagged }.push(p);
            }
        }
    }

    pub fn has_members(&self) -> bool {
        !self.members.is_empty()
    }

    /// Member ports ascending, with whether each is tagged.
    pub fn members(&self) -> impl Iterator<Item = (PortId, bool)> + '_ {
        self.members.iter().map(|(&p, &t)| (p, t))
    }

    /// The state of member `p`, given whether its port is active.
    pub fn state(&self, p: PortId, active: bool) -> PortState {
        if self.discarding.contains(&p) {
            PortState::Discarding
        } else if active {
            PortState::Forwarding
        } else {
            PortState::Learning
        }
    }
}
