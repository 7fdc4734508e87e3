//! Debug/event notification categories and their line formats.

use crate::engine::Event;
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

fn info(category: Category) -> &'static CategoryInfo {
    CATEGORIES.iter().find(|c| c.category == category).expect("every category is listed")
}

fn hash_line(mac: &Mac, vlan: u16, port: u32) -> String {
    let [hi, lo] = vlan.to_be_bytes();
    format!("{mac} VLAN {lo:02x}:{hi:02x} Port {port}")
}

/// The category and notification line (with trailing newline) for an
/// event, or `None` for events that are logged rather than notified.
pub fn format_event(event: &Event) -> Option<(Category, String)> {
    let (category, message) = match event {
        Event::HashAdd { mac, vlan, port } => (Category::HashAdd, hash_line(mac, *vlan, *port)),
        Event::HashDel { mac, vlan, port } => (Category::HashDel, hash_line(mac, *vlan, *port)),
        Event::PortAdd(p) => (Category::PortAdd, format!("{p:02}")),
        Event::PortDel(p) => (Category::PortDel, format!("{p:02}")),
        Event::PortDescr { port, id, description } => {
            (Category::PortDescr, format!("Port {port:02} FD {id:2} -> \"{description}\""))
        }
        Event::EndpointAdd { port, id } => (Category::EndpointAdd, format!("Port {port:02} FD {id:2}")),
        Event::EndpointDel { port, id } => (Category::EndpointDel, format!("Port {port:02} FD {id:2}")),
        Event::MacMoved { .. } => return None,
    };
    let i = info(category);
    Some((category, format!("3{:03o} {} {}\n", i.tag, i.path, message)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_match_reference() {
        let mac = Mac([2, 0, 0, 0, 1, 0x2c]);
        let (_, line) = format_event(&Event::HashAdd { mac, vlan: 300, port: 25 }).unwrap();
        assert_eq!(line, "3011 hash/+ 02:00:00:00:01:2c VLAN 2c:01 Port 25\n");
        let (_, line) = format_event(&Event::PortAdd(7)).unwrap();
        assert_eq!(line, "3021 port/+ 07\n");
        let (_, line) = format_event(&Event::EndpointAdd { port: 1, id: 7 }).unwrap();
        assert_eq!(line, "3031 port/ep/+ Port 01 FD  7\n");
        let descr = Event::PortDescr { port: 1, id: 7, description: "clientA".into() };
        assert_eq!(format_event(&descr).unwrap().1, "3023 port/descr Port 01 FD  7 -> \"clientA\"\n");
    }
}
