use std::collections::BTreeMap;

use super::PortId;

/// One VLAN's membership. The active member lists are kept precomputed so
/// flooding walks only ports that can receive.
#[derive(Debug, Clone, Default)]
pub struct Vlan {
    /// Every member port (active or not), ascending; `true` when tagged.
    members: BTreeMap<PortId, bool>,
    pub(super) active_untagged: Vec<PortId>,
    pub(super) active_tagged: Vec<PortId>,
}

impl Vlan {
    pub(super) fn set_member(&mut self, p: PortId, tagged: bool) {
        self.members.insert(p, tagged);
    }

    pub(super) fn remove_member(&mut self, p: PortId) {
        self.members.remove(&p);
        self.active_untagged.retain(|&x| x != p);
        self.active_tagged.retain(|&x| x != p);
    }

    pub(super) fn refresh(&mut self, is_active: impl Fn(PortId) -> bool) {
        self.active_untagged.clear();
        self.active_tagged.clear();
        for (&p, &tagged) in &self.members {
            if is_active(p) {
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
}
