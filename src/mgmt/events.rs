//! Debug/event notification categories and their line formats.

use crate::engine::{Event, PortState};
use crate::wire::Mac;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    HashAdd,
    HashDel,
    FstpStatus,
    FstpRoot,
    FstpAdd,
    FstpDel,
    PortAdd,
    PortDel,
    PortDescr,
    EndpointAdd,
    EndpointDel,
}

/// A category as `debug/list` shows it, in the reference's listing order.
#[derive(Debug)]
pub struct CategoryInfo {
    pub category: Category,
    pub path: &'static str,
    pub tag: u32,
    pub help: &'static str,
}

const fn cat(category: Category, path: &'static str, tag: u32, help: &'static str) -> CategoryInfo {
    CategoryInfo { category, path, tag, help }
}

pub const CATEGORIES: [CategoryInfo; 11] = [
    cat(Category::HashAdd, "hash/+", 0o11, "hash: new element"),
    cat(Category::HashDel, "hash/-", 0o12, "hash: discarded element"),
    cat(Category::FstpStatus, "fstp/status", 0o44, "fstp: status change"),
    cat(Category::FstpRoot, "fstp/root", 0o45, "fstp: rootswitch/port change"),
    cat(Category::FstpAdd, "fstp/+", 0o41, "fstp: port becomes active"),
    cat(Category::FstpDel, "fstp/-", 0o42, "fstp: port becomes inactive"),
    cat(Category::PortAdd, "port/+", 0o21, "new port"),
    cat(Category::PortDel, "port/-", 0o22, "closed port"),
    cat(Category::PortDescr, "port/descr", 0o23, "set port description"),
    cat(Category::EndpointAdd, "port/ep/+", 0o31, "new endpoint"),
    cat(Category::EndpointDel, "port/ep/-", 0o32, "closed endpoint"),
];

/// Categories the reference registers without help text. `debug/add` and
/// `debug/list` skip them, but `debug/del` still matches them, so a prefix
/// naming only these answers "none of them was on" rather than "no such
/// category".
pub const HIDDEN_CATEGORIES: [&str; 5] = ["mgmt/+", "mgmt/-", "sig/hup", "packet/in", "packet/out"];

fn info(category: Category) -> &'static CategoryInfo {
    CATEGORIES.iter().find(|c| c.category == category).expect("every category is listed")
}

/// The FSTP events name the VLAN high byte first, unlike the hash events.
fn fstp_port(port: u32, vlan: u16) -> String {
    let [hi, lo] = vlan.to_be_bytes();
    format!("Port {port:04} VLAN {hi:02x}:{lo:02x}")
}

fn fstp_state(state: PortState) -> &'static str {
    match state {
        PortState::Discarding => "discarding",
        PortState::Learning => "learning",
        // The reference's state names are bit patterns: forwarding
        // implies learning.
        PortState::Forwarding => "learning+forwarding",
    }
}

fn hash_line(mac: &Mac, vlan: u16, port: u32) -> String {
    let [hi, lo] = vlan.to_be_bytes();
    format!("{mac} VLAN {lo:02x}:{hi:02x} Port {port}")
}

/// The category and notification line (with trailing newline) for an
/// event, or `None` for events that are logged rather than notified.
pub fn format_event(event: &Event) -> Option<(Category, Vec<u8>)> {
    let (category, message) = match event {
        Event::HashAdd { mac, vlan, port } => (Category::HashAdd, hash_line(mac, *vlan, *port)),
        Event::HashDel { mac, vlan, port } => (Category::HashDel, hash_line(mac, *vlan, *port)),
        Event::PortAdd(p) => (Category::PortAdd, format!("{p:02}")),
        Event::PortDel(p) => (Category::PortDel, format!("{p:02}")),
        Event::PortDescr { port, id, description } => {
            // The description's bytes go out as the client sent them.
            let i = info(Category::PortDescr);
            let mut line = format!("3{:03o} {} Port {port:02} FD {id:2} -> \"", i.tag, i.path).into_bytes();
            line.extend_from_slice(description);
            line.extend_from_slice(b"\"\n");
            return Some((Category::PortDescr, line));
        }
        Event::EndpointAdd { port, id } => (Category::EndpointAdd, format!("Port {port:02} FD {id:2}")),
        Event::EndpointDel { port, id } => (Category::EndpointDel, format!("Port {port:02} FD {id:2}")),
        Event::FstpStatus { port, vlan, state } => {
            (Category::FstpStatus, format!("{} {}", fstp_port(*port, *vlan), fstp_state(*state)))
        }
        Event::FstpRoot { port, vlan, root } => (Category::FstpRoot, format!("{} -> {root}", fstp_port(*port, *vlan))),
        Event::FstpPortActive { port, vlan } => (Category::FstpAdd, fstp_port(*port, *vlan)),
        Event::FstpPortInactive { port, vlan } => (Category::FstpDel, fstp_port(*port, *vlan)),
        Event::MacMoved { .. } => return None,
    };
    let i = info(category);
    Some((category, format!("3{:03o} {} {}\n", i.tag, i.path, message).into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_match_reference() {
        let mac = Mac([2, 0, 0, 0, 1, 0x2c]);
        let (_, line) = format_event(&Event::HashAdd { mac, vlan: 300, port: 25 }).unwrap();
        assert_eq!(line, b"3011 hash/+ 02:00:00:00:01:2c VLAN 2c:01 Port 25\n");
        let (_, line) = format_event(&Event::PortAdd(7)).unwrap();
        assert_eq!(line, b"3021 port/+ 07\n");
        let (_, line) = format_event(&Event::EndpointAdd { port: 1, id: 7 }).unwrap();
        assert_eq!(line, b"3031 port/ep/+ Port 01 FD  7\n");
        let descr = Event::PortDescr { port: 1, id: 7, description: b"caf\xe9".to_vec() };
        assert_eq!(format_event(&descr).unwrap().1, b"3023 port/descr Port 01 FD  7 -> \"caf\xe9\"\n");
    }

    /// Lines captured from vde_switch 2.3.2 with `debug/add fstp`.
    #[test]
    fn fstp_formats_match_reference() {
        use crate::wire::BridgeId;
        let line = |e: Event| format_event(&e).unwrap().1;
        assert_eq!(line(Event::FstpPortActive { port: 3, vlan: 0 }), b"3041 fstp/+ Port 0003 VLAN 00:00\n");
        assert_eq!(line(Event::FstpPortInactive { port: 2, vlan: 10 }), b"3042 fstp/- Port 0002 VLAN 00:0a\n");
        let root = BridgeId([0x00, 0x01, 0x02, 0, 0, 0, 0, 0x99]);
        assert_eq!(
            line(Event::FstpRoot { port: 3, vlan: 0, root }),
            b"3045 fstp/root Port 0003 VLAN 00:00 -> 00:01:02:00:00:00:00:99\n"
        );
        let forwarding = Event::FstpStatus { port: 3, vlan: 0, state: PortState::Forwarding };
        assert_eq!(line(forwarding), b"3044 fstp/status Port 0003 VLAN 00:00 learning+forwarding\n");
        let blocked = Event::FstpStatus { port: 2, vlan: 0x10a, state: PortState::Discarding };
        assert_eq!(line(blocked), b"3044 fstp/status Port 0002 VLAN 01:0a discarding\n");
    }
}
