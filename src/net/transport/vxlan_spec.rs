//! The SPEC of a VXLAN port (`--vxlan SPEC`, `vxlan/add SPEC`): the words
//! of `ip link add … type vxlan`, comma-separated.

use std::fmt;
use std::net::IpAddr;

use crate::wire::{VNI_MAX, VXLAN_PORT};

/// Most `remote=` endpoints one port replicates floods to.
pub const REMOTES_MAX: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub vni: u32,
    pub local: Option<IpAddr>,
    /// Endpoints every flood is replicated to (head-end replication).
    pub remotes: Vec<IpAddr>,
    /// Multicast group floods go to, and whose members are learned.
    pub group: Option<IpAddr>,
    /// Interface the group is joined on and multicast leaves by.
    pub dev: Option<String>,
    pub dstport: u16,
    pub ttl: Option<u32>,
}

fn addr(key: &str, value: &str) -> Result<IpAddr, String> {
    value.parse().map_err(|_| format!("vxlan: {key}={value} is not an IPv4 or IPv6 address"))
}

impl std::str::FromStr for Spec {
    type Err = String;

    fn from_str(text: &str) -> Result<Spec, String> {
        let mut vni = None;
        let mut spec =
            Spec { vni: 0, local: None, remotes: Vec::new(), group: None, dev: None, dstport: VXLAN_PORT, ttl: None };
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let Some((key, value)) = word.split_once('=') else {
                return Err(format!("vxlan: '{word}' is not KEY=VALUE"));
            };
            let once = |set: bool| if set { Err(format!("vxlan: {key}= given twice")) } else { Ok(()) };
            match key {
                "id" => {
                    once(vni.is_some())?;
                    vni = Some(
                        value
                            .parse::<u32>()
                            .ok()
                            .filter(|v| *v <= VNI_MAX)
                            .ok_or_else(|| format!("vxlan: id={value} is not a VNI (0 to {VNI_MAX})"))?,
                    );
                }
                "local" => {
                    once(spec.local.is_some())?;
                    spec.local = Some(addr(key, value)?);
                }
                "remote" => {
                    let a = addr(key, value)?;
                    if a.is_multicast() || a.is_unspecified() {
                        return Err(format!("vxlan: remote={value} must be a unicast address (use group=)"));
                    }
                    if !spec.remotes.contains(&a) {
                        if spec.remotes.len() >= REMOTES_MAX {
                            return Err(format!("vxlan: at most {REMOTES_MAX} remote= endpoints"));
                        }
                        spec.remotes.push(a);
                    }
                }
                "group" => {
                    once(spec.group.is_some())?;
                    let a = addr(key, value)?;
                    if !a.is_multicast() {
                        return Err(format!("vxlan: group={value} is not a multicast address"));
                    }
                    spec.group = Some(a);
                }
                "dev" => {
                    once(spec.dev.is_some())?;
                    if value.is_empty() || value.len() >= libc::IFNAMSIZ || value.contains(['/', '\0']) {
                        return Err(format!("vxlan: dev={value} is not an interface name"));
                    }
                    spec.dev = Some(value.to_string());
                }
                "dstport" => {
                    spec.dstport = value
                        .parse()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| format!("vxlan: dstport={value} is not a UDP port (1 to 65535)"))?;
                }
                "ttl" => {
                    spec.ttl = Some(
                        value
                            .parse()
                            .ok()
                            .filter(|t| (1..=255).contains(t))
                            .ok_or_else(|| format!("vxlan: ttl={value} is not 1 to 255"))?,
                    );
                }
                _ => return Err(format!("vxlan: unknown word {key}= (id, local, remote, group, dev, dstport, ttl)")),
            }
        }
        spec.vni = vni.ok_or("vxlan: id=VNI is required")?;
        if spec.remotes.is_empty() && spec.group.is_none() {
            return Err("vxlan: give remote=ADDR or group=MCAST".into());
        }
        let family = spec.group.or(spec.remotes.first().copied()).map(|a| a.is_ipv6());
        let mixed = spec.remotes.iter().chain(&spec.group).chain(&spec.local).any(|a| Some(a.is_ipv6()) != family);
        if mixed {
            return Err("vxlan: local, remote and group must all be IPv4 or all IPv6".into());
        }
        Ok(spec)
    }
}

impl fmt::Display for Spec {
    /// The canonical SPEC, as `port/print` and `vxlan/print` show it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "id={}", self.vni)?;
        if let Some(a) = self.local {
            write!(f, ",local={a}")?;
        }
        for a in &self.remotes {
            write!(f, ",remote={a}")?;
        }
        if let Some(a) = self.group {
            write!(f, ",group={a}")?;
        }
        if let Some(d) = &self.dev {
            write!(f, ",dev={d}")?;
        }
        if self.dstport != VXLAN_PORT {
            write!(f, ",dstport={}", self.dstport)?;
        }
        if let Some(t) = self.ttl {
            write!(f, ",ttl={t}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Spec, String> {
        s.parse()
    }

    #[test]
    fn unicast_and_multicast() {
        let s = p("id=42,remote=169.254.0.1,remote=169.254.0.2,ttl=4").unwrap();
        assert_eq!(s.vni, 42);
        assert_eq!(s.remotes.len(), 2);
        assert_eq!(s.dstport, 4789);
        assert_eq!(s.ttl, Some(4));
        assert_eq!(s.to_string(), "id=42,remote=169.254.0.1,remote=169.254.0.2,ttl=4");
        let s = p("id=7,group=239.1.1.1,dev=veth0,dstport=8472,local=169.254.0.9").unwrap();
        assert_eq!(s.group, Some("239.1.1.1".parse().unwrap()));
        assert_eq!(s.to_string(), "id=7,local=169.254.0.9,group=239.1.1.1,dev=veth0,dstport=8472");
        let s = p("id=1,group=ff05::42,dev=v,remote=fd00::2").unwrap();
        assert_eq!(p(&s.to_string()).unwrap(), s);
    }

    #[test]
    fn clear_one_line_errors() {
        let many_remotes: String = std::iter::once("id=1".to_string())
            .chain((0..=REMOTES_MAX).map(|i| format!(",remote=fd00::{:x}", i + 1)))
            .collect();
        for (spec, word) in [
            ("remote=169.254.0.1", "id=VNI is required"),
            ("id=16777216,remote=169.254.0.1", "is not a VNI"),
            ("id=1", "remote=ADDR or group=MCAST"),
            ("id=1,remote=239.1.1.1", "must be a unicast"),
            ("id=1,group=169.254.0.1", "not a multicast"),
            ("id=1,remote=fd00::1,local=169.254.0.1", "all be IPv4 or all IPv6"),
            ("id=1,remote=x", "not an IPv4 or IPv6"),
            ("id=1,id=2,remote=169.254.0.1", "given twice"),
            ("id=1,remote=169.254.0.1,dstport=0", "not a UDP port"),
            ("id=1,remote=169.254.0.1,ttl=300", "not 1 to 255"),
            ("id=1,remote=169.254.0.1,foo=1", "unknown word foo="),
            ("id=1,remote", "not KEY=VALUE"),
            (&many_remotes, "at most 256 remote="),
            ("id=1,group=239.1.1.1,dev=aaaaaaaaaaaaaaaaaaaa", "not an interface name"),
        ] {
            let e = p(spec).unwrap_err();
            assert!(e.contains(word) && !e.contains('\n'), "{spec}: {e}");
        }
    }
}
