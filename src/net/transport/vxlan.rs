//! VXLAN ports (RFC 7348): one engine port per VNI whose frames travel in
//! UDP datagrams to remote endpoints, interoperable with the Linux kernel's
//! `vxlan` device and vdeplug4's `vxlan://`.
//!
//! The engine sees one port; behind it, this transport learns which remote
//! endpoint each station sits behind, so a known unicast frame goes to that
//! endpoint only while floods (broadcast, multicast, unknown or aged
//! destinations) go to every `remote=` and to the `group=`. A station not
//! heard from for [`AGEING`] is flooded again, as the kernel's default
//! ageing does; the table holds at most [`STATIONS_MAX`] stations, beyond
//! which new ones are flooded rather than learned.
//!
//! Datagrams are received on one socket per local address and UDP port,
//! shared by the VXLAN ports (VNIs) bound there and demultiplexed by VNI, as
//! the kernel shares one socket among its vxlan devices. They are sent from [`SENDERS`] sockets bound to ports the kernel picks from its
//! ephemeral range (32768..60999 by default, the kernel vxlan's own source
//! port range), chosen by a hash of the inner flow: like the kernel's, one
//! flow keeps one source port and an ECMP underlay spreads flows.
//!
//! Frames are sent with don't-fragment: one larger than the underlay's path
//! MTU (with 50 bytes of outer headers on IPv4, 70 on IPv6) is dropped and
//! counted as `too-large` on the remote it was going to.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::epoll::Epoll;
use nix::sys::socket::SockaddrStorage;
use slab::Slab;
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};

pub use super::vxlan_spec::Spec;
use super::{Batch, DescId, Registry, Sent, Transport, TransportId, Verdict};
use crate::engine::EndpointKey;
use crate::mgmt::Out;
use crate::net::log;
use crate::net::sys::{self, BATCH};
use crate::wire::{MIN_FRAME, Mac, VXLAN_HEADER_LEN, emit_vxlan};

/// The module name `port/print` shows.
pub const MODULE: &str = "vxlan";
/// Sockets sending, hence UDP source ports flows are spread over.
const SENDERS: usize = 8;
/// How long a learned station is trusted: the kernel vxlan's default.
pub const AGEING: Duration = Duration::from_secs(300);
/// Stations learned behind one VXLAN port at most.
pub const STATIONS_MAX: usize = 4096;
/// Endpoints learned from received traffic (beyond those configured) at
/// most; datagrams from further ones are dropped and counted.
pub const LEARNED_REMOTES_MAX: usize = 256;
/// Tags a received datagram that carries no frame for the engine: no
/// endpoint has this key, so the engine ignores it.
const NOBODY: u32 = u32::MAX;

/// Counters of one remote endpoint, as `vxlan/print` shows them.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    in_frames: u64,
    in_bytes: u64,
    out_frames: u64,
    out_bytes: u64,
    /// Frames that could not be sent (socket full, no route, …).
    drops: u64,
    /// Frames too large for the underlay's path MTU.
    too_large: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Configured with `remote=`: gets every flood.
    Remote,
    /// The `group=`: gets every flood, never sends.
    Group,
    /// Heard from: gets what is known to be behind it.
    Learned,
}

struct Remote {
    ip: IpAddr,
    to: SockaddrStorage,
    kind: Kind,
    counters: Counters,
}

struct Port {
    spec: Spec,
    key: EndpointKey,
    header: [u8; VXLAN_HEADER_LEN],
    /// The receiver it shares.
    receiver: usize,
    senders: Vec<OwnedFd>,
    remotes: Vec<Remote>,
    by_ip: HashMap<IpAddr, usize>,
    /// Indices of the remotes floods go to.
    flood: Vec<usize>,
    stations: HashMap<Mac, (usize, Instant)>,
    /// Datagrams from an endpoint beyond [`LEARNED_REMOTES_MAX`].
    unknown: u64,
}

/// A receiving socket and the ports (VNIs) it feeds.
struct Receiver {
    socket: OwnedFd,
    bound: SocketAddr,
    desc: DescId,
    ports: Vec<usize>,
    /// Datagrams for a VNI no port here has.
    wrong_vni: u64,
    malformed: u64,
}

/// One datagram to send: frame, remote, sender socket.
#[derive(Clone, Copy)]
struct Planned {
    frame: u16,
    remote: u16,
    sender: u8,
}

pub struct Vxlan {
    id: TransportId,
    ports: Slab<Port>,
    receivers: Slab<Receiver>,
    plan: Vec<Planned>,
}

fn to_storage(ip: IpAddr, port: u16, scope: u32) -> SockaddrStorage {
    let addr = match ip {
        IpAddr::V4(a) => SocketAddr::new(IpAddr::V4(a), port),
        IpAddr::V6(a) => SocketAddr::V6(std::net::SocketAddrV6::new(a, port, 0, scope)),
    };
    SockaddrStorage::from(addr)
}

/// The sender's address of a received datagram, from its raw `sockaddr`.
fn sender_ip(name: &[u8]) -> Option<IpAddr> {
    let family = i32::from(u16::from_ne_bytes(name.get(0..2)?.try_into().ok()?));
    match family {
        libc::AF_INET => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(name.get(4..8)?).ok()?))),
        libc::AF_INET6 => {
            let ip = Ipv6Addr::from(<[u8; 16]>::try_from(name.get(8..24)?).ok()?);
            Some(ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4))
        }
        _ => None,
    }
}

/// A hash of the inner flow: addresses and ports of IPv4/IPv6 TCP and UDP,
/// else the Ethernet addresses, so that one flow keeps one source port.
pub fn flow_hash(frame: &[u8]) -> u32 {
    const FNV_OFFSET: u32 = 0x811c_9dc5;
    const FNV_PRIME: u32 = 0x0100_0193;
    let mut h = FNV_OFFSET;
    let mut mix = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ u32::from(b)).wrapping_mul(FNV_PRIME);
        }
    };
    let mut at = 12;
    let mut ethertype = frame.get(12..14).map_or(0, |t| u16::from_be_bytes([t[0], t[1]]));
    if ethertype == crate::wire::ETHERTYPE_VLAN {
        at += 4;
        ethertype = frame.get(16..18).map_or(0, |t| u16::from_be_bytes([t[0], t[1]]));
    }
    let l3 = frame.get(at + 2..).unwrap_or_default();
    let (addrs, proto, l4) = match ethertype {
        0x0800 if l3.len() >= 20 => {
            let ihl = usize::from(l3[0] & 0x0f) * 4;
            (&l3[12..20], l3[9], l3.get(ihl..).unwrap_or_default())
        }
        0x86dd if l3.len() >= 40 => (&l3[8..40], l3[6], &l3[40..]),
        _ => (&[][..], 0, &[][..]),
    };
    if addrs.is_empty() {
        mix(frame.get(..12).unwrap_or(frame));
    } else {
        mix(addrs);
        mix(&[proto]);
        if matches!(proto, 6 | 17)
            && let Some(ports) = l4.get(..4)
        {
            mix(ports);
        }
    }
    h
}

fn udp_socket(ipv6: bool) -> io::Result<Socket> {
    let domain = if ipv6 { Domain::IPV6 } else { Domain::IPV4 };
    let socket = Socket::new(domain, Type::DGRAM.nonblocking().cloexec(), Some(Protocol::UDP))?;
    if ipv6 {
        socket.set_only_v6(true)?;
    }
    Ok(socket)
}

fn failure(what: &str, e: io::Error) -> String {
    format!("vxlan: {what}: {}", log::error_text(&e))
}

fn is_ipv6(spec: &Spec) -> bool {
    spec.group.or(spec.remotes.first().copied()).is_some_and(|a| a.is_ipv6())
}

fn unspecified(ipv6: bool) -> IpAddr {
    if ipv6 { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) }
}

/// Where `spec`'s datagrams are received. A socket bound to a unicast
/// address would not get the group's datagrams: with a group, receive on
/// any address, as the kernel does.
fn receive_address(spec: &Spec) -> SocketAddr {
    let any = unspecified(is_ipv6(spec));
    SocketAddr::new(if spec.group.is_some() { any } else { spec.local.unwrap_or(any) }, spec.dstport)
}

fn bind_receiver(bound: SocketAddr) -> Result<OwnedFd, String> {
    let rx = udp_socket(bound.is_ipv6()).map_err(|e| failure("socket", e))?;
    rx.set_reuse_address(true).map_err(|e| failure("SO_REUSEADDR", e))?;
    rx.bind(&bound.into()).map_err(|e| failure(&format!("bind {bound}"), e))?;
    let socket: OwnedFd = rx.into();
    Ok(socket)
}

/// Joins `group` on `socket`, on interface `ifindex` (0: the kernel's
/// choice); joining a group already joined is not an error.
fn join(socket: &OwnedFd, group: IpAddr, ifindex: u32) -> Result<(), String> {
    let socket = socket2::SockRef::from(socket);
    let joined = match group {
        IpAddr::V4(g) => socket
            .set_multicast_all_v4(false)
            .and_then(|()| socket.join_multicast_v4_n(&g, &InterfaceIndexOrAddress::Index(ifindex))),
        IpAddr::V6(g) => socket.set_multicast_all_v6(false).and_then(|()| socket.join_multicast_v6(&g, ifindex)),
    };
    match joined {
        Err(e) if e.raw_os_error() != Some(libc::EADDRINUSE) => Err(failure(&format!("join {group}"), e)),
        _ => Ok(()),
    }
}

/// Opens the sending sockets for `spec`.
fn open_senders(spec: &Spec, ifindex: u32) -> Result<Vec<OwnedFd>, String> {
    let ipv6 = is_ipv6(spec);
    let fail = failure;
    let mut senders = Vec::with_capacity(SENDERS);
    for _ in 0..SENDERS {
        let s = udp_socket(ipv6).map_err(|e| fail("socket", e))?;
        s.bind(&SocketAddr::new(spec.local.unwrap_or(unspecified(ipv6)), 0).into()).map_err(|e| fail("bind", e))?;
        if let Some(dev) = &spec.dev {
            s.bind_device(Some(dev.as_bytes())).map_err(|e| fail(&format!("SO_BINDTODEVICE {dev}"), e))?;
        }
        if ipv6 {
            s.set_multicast_loop_v6(false).map_err(|e| fail("IPV6_MULTICAST_LOOP", e))?;
            if ifindex != 0 {
                s.set_multicast_if_v6(ifindex).map_err(|e| fail("IPV6_MULTICAST_IF", e))?;
            }
            if let Some(ttl) = spec.ttl {
                s.set_unicast_hops_v6(ttl).map_err(|e| fail("IPV6_UNICAST_HOPS", e))?;
                s.set_multicast_hops_v6(ttl).map_err(|e| fail("IPV6_MULTICAST_HOPS", e))?;
            }
        } else {
            s.set_multicast_loop_v4(false).map_err(|e| fail("IP_MULTICAST_LOOP", e))?;
            if let Some(ttl) = spec.ttl {
                s.set_ttl_v4(ttl).map_err(|e| fail("IP_TTL", e))?;
                s.set_multicast_ttl_v4(ttl).map_err(|e| fail("IP_MULTICAST_TTL", e))?;
            }
        }
        let s: OwnedFd = s.into();
        sys::set_dont_fragment(s.as_fd(), ipv6).map_err(|e| fail("IP_MTU_DISCOVER", e))?;
        senders.push(s);
    }
    Ok(senders)
}

/// The receiving socket of a port being opened: one already there, or a
/// new one.
enum Rx {
    Shared(usize),
    New(OwnedFd, SocketAddr),
}

impl Vxlan {
    pub fn new(id: TransportId) -> Vxlan {
        Vxlan { id, ports: Slab::new(), receivers: Slab::new(), plan: Vec::with_capacity(BATCH * 4) }
    }

    /// Opens the sockets of `spec`, sharing the receiving socket of ports
    /// on the same address and UDP port: a failure here leaves nothing
    /// behind but a group joined on a shared socket.
    pub fn open(&self, spec: &Spec) -> Result<Opened, String> {
        let ifindex = match &spec.dev {
            Some(dev) => {
                nix::net::if_::if_nametoindex(dev.as_str()).map_err(|_| format!("vxlan: no interface {dev}"))?
            }
            None => 0,
        };
        let bound = receive_address(spec);
        let shared = self.receivers.iter().find(|(_, r)| r.bound == bound);
        let rx = match shared {
            Some((index, r)) => {
                if r.ports.iter().any(|&p| self.ports[p].spec.vni == spec.vni) {
                    return Err(format!("vxlan: VNI {} already has a port receiving on {bound}", spec.vni));
                }
                Rx::Shared(index)
            }
            None => Rx::New(bind_receiver(bound)?, bound),
        };
        let socket = match &rx {
            Rx::Shared(index) => &self.receivers[*index].socket,
            Rx::New(socket, _) => socket,
        };
        if let Some(group) = spec.group {
            join(socket, group, ifindex)?;
        }
        let id = socket.as_raw_fd() as u32;
        let senders = open_senders(spec, ifindex)?;
        Ok(Opened { spec: spec.clone(), rx, senders, ifindex, id })
    }

    /// Makes `opened` endpoint `key`; returns its number here and its
    /// descriptor.
    pub fn add(
        &mut self,
        registry: &mut Registry,
        epoll: &Epoll,
        key: EndpointKey,
        opened: Opened,
    ) -> io::Result<(u32, DescId)> {
        let Opened { spec, rx, senders, ifindex, .. } = opened;
        let receiver = match rx {
            Rx::Shared(index) => index,
            Rx::New(socket, bound) => {
                let entry = self.receivers.vacant_entry();
                let index = entry.key();
                let desc = registry.add(epoll, socket.as_fd(), self.id, index as u32)?;
                entry.insert(Receiver { socket, bound, desc, ports: Vec::new(), wrong_vni: 0, malformed: 0 });
                index
            }
        };
        let desc = self.receivers[receiver].desc;
        let entry = self.ports.vacant_entry();
        let local = entry.key() as u32;
        self.receivers[receiver].ports.push(local as usize);
        let mut port = Port {
            header: emit_vxlan(spec.vni),
            key,
            receiver,
            senders,
            remotes: Vec::new(),
            by_ip: HashMap::new(),
            flood: Vec::new(),
            stations: HashMap::new(),
            unknown: 0,
            spec,
        };
        for ip in port.spec.remotes.clone() {
            port.add_remote(ip, Kind::Remote, ifindex);
        }
        if let Some(g) = port.spec.group {
            port.add_remote(g, Kind::Group, ifindex);
        }
        entry.insert(port);
        Ok((local, desc))
    }

    /// The endpoints of the VXLAN ports, with their numbers here.
    pub fn endpoints(&self) -> impl Iterator<Item = (u32, EndpointKey)> + '_ {
        self.ports.iter().map(|(local, p)| (local as u32, p.key))
    }

    /// Writes `vxlan/print`'s lines for endpoint `local` on engine port
    /// `port`.
    pub fn print(&self, local: u32, port: u32, out: &mut Out) {
        let Some(p) = self.ports.get(local as usize) else { return };
        let r = &self.receivers[p.receiver];
        // Datagrams of no port's VNI, and malformed ones, are counted on
        // the socket: every port sharing it shows the same figures.
        let _ = writeln!(
            out,
            "Port {port:04} vxlan {} stations={} wrong-vni={} malformed={} unknown-sender={}",
            p.spec,
            p.stations.len(),
            r.wrong_vni,
            r.malformed,
            p.unknown
        );
        let now = Instant::now();
        for (index, r) in p.remotes.iter().enumerate() {
            let stations =
                p.stations.values().filter(|(at, seen)| *at == index && now.duration_since(*seen) < AGEING).count();
            let kind = match r.kind {
                Kind::Remote => "remote",
                Kind::Group => "group",
                Kind::Learned => "learned",
            };
            let c = r.counters;
            let _ = writeln!(
                out,
                " -- {kind} {} stations={stations} in={}/{} out={}/{} drops={} too-large={}",
                r.ip, c.in_frames, c.in_bytes, c.out_frames, c.out_bytes, c.drops, c.too_large
            );
        }
    }
}

/// The sockets of a VXLAN port, opened before it gets an engine port.
pub struct Opened {
    spec: Spec,
    rx: Rx,
    senders: Vec<OwnedFd>,
    ifindex: u32,
    /// The receiving socket's descriptor, shown as the endpoint ID.
    pub id: u32,
}

impl Port {
    fn add_remote(&mut self, ip: IpAddr, kind: Kind, scope: u32) -> usize {
        let index = self.remotes.len();
        let scope = match ip {
            IpAddr::V6(a) if a.is_unicast_link_local() || a.is_multicast() => scope,
            _ => 0,
        };
        self.remotes.push(Remote {
            ip,
            to: to_storage(ip, self.spec.dstport, scope),
            kind,
            counters: Counters::default(),
        });
        self.by_ip.insert(ip, index);
        if kind != Kind::Learned {
            self.flood.push(index);
        }
        index
    }

    /// The remote a datagram from `ip` came from, learned if new.
    fn remote_of(&mut self, ip: IpAddr) -> Option<usize> {
        if let Some(&r) = self.by_ip.get(&ip) {
            return Some(r);
        }
        let learned = self.remotes.iter().filter(|r| r.kind == Kind::Learned).count();
        (learned < LEARNED_REMOTES_MAX).then(|| self.add_remote(ip, Kind::Learned, 0))
    }

    fn learn(&mut self, mac: Mac, remote: usize, now: Instant) {
        if mac.is_multicast() {
            return;
        }
        if self.stations.len() >= STATIONS_MAX && !self.stations.contains_key(&mac) {
            self.stations.retain(|_, (_, seen)| now.duration_since(*seen) < AGEING);
            if self.stations.len() >= STATIONS_MAX {
                return;
            }
        }
        self.stations.insert(mac, (remote, now));
    }
}

impl Transport for Vxlan {
    fn recv(&mut self, tag: u32, rx: &mut Batch, max: usize) -> io::Result<usize> {
        let Some(receiver) = self.receivers.get_mut(tag as usize) else { return Ok(0) };
        let n = rx.recv_from(receiver.socket.as_fd(), max)?;
        let now = Instant::now();
        for i in 0..n {
            let accepted = {
                let bytes = rx.frame(i);
                match Vxlan::check(bytes) {
                    None => {
                        receiver.malformed += 1;
                        None
                    }
                    Some((vni, src)) => match receiver.ports.iter().find(|&&p| self.ports[p].spec.vni == vni) {
                        None => {
                            receiver.wrong_vni += 1;
                            None
                        }
                        Some(&p) => {
                            let port = &mut self.ports[p];
                            match sender_ip(rx.name(i)).and_then(|ip| port.remote_of(ip)) {
                                Some(r) => Some((p, r, src, bytes.len() - VXLAN_HEADER_LEN)),
                                None => {
                                    port.unknown += 1;
                                    None
                                }
                            }
                        }
                    },
                }
            };
            match accepted {
                Some((p, r, src, len)) => {
                    let port = &mut self.ports[p];
                    port.learn(src, r, now);
                    let c = &mut port.remotes[r].counters;
                    c.in_frames += 1;
                    c.in_bytes += len as u64;
                    rx.set_frame(i, VXLAN_HEADER_LEN, len);
                    rx.set_sources(i..i + 1, port.key.0);
                }
                None => rx.set_sources(i..i + 1, NOBODY),
            }
        }
        Ok(n)
    }

    fn send(&mut self, endpoint: u32, frames: &[&[u8]], _offset: usize) -> Sent {
        let Some(port) = self.ports.get_mut(endpoint as usize) else {
            return Sent { frames: frames.len(), offset: 0, error: None };
        };
        let now = Instant::now();
        self.plan.clear();
        for (i, frame) in frames.iter().enumerate() {
            let Some(dst) = frame.get(..6) else { continue };
            let dst = Mac(dst.try_into().expect("six bytes"));
            let sender = (flow_hash(frame) as usize % SENDERS) as u8;
            let known = port.stations.get(&dst).filter(|(_, seen)| now.duration_since(*seen) < AGEING);
            match known {
                Some(&(r, _)) => self.plan.push(Planned { frame: i as u16, remote: r as u16, sender }),
                None => {
                    let floods = port.flood.iter().map(|&r| Planned { frame: i as u16, remote: r as u16, sender });
                    self.plan.extend(floods);
                }
            }
        }
        for sender in 0..SENDERS as u8 {
            let mut planned = self.plan.iter().filter(|p| p.sender == sender).peekable();
            while planned.peek().is_some() {
                let mut bytes: [&[u8]; BATCH] = [&[]; BATCH];
                let mut to: [&SockaddrStorage; BATCH] = [&port.remotes[0].to; BATCH];
                let mut remotes = [0u16; BATCH];
                let mut count = 0;
                for p in planned.by_ref().take(BATCH) {
                    bytes[count] = frames[p.frame as usize];
                    to[count] = &port.remotes[p.remote as usize].to;
                    remotes[count] = p.remote;
                    count += 1;
                }
                let outcomes = send_all(&port.senders[sender as usize], &port.header, &bytes[..count], &to[..count]);
                for ((outcome, &r), frame) in outcomes.iter().zip(&remotes[..count]).zip(&bytes) {
                    let c = &mut port.remotes[r as usize].counters;
                    match outcome {
                        Outcome::Sent => {
                            c.out_frames += 1;
                            c.out_bytes += frame.len() as u64;
                        }
                        Outcome::TooLarge => c.too_large += 1,
                        Outcome::Dropped => c.drops += 1,
                    }
                }
            }
        }
        Sent { frames: frames.len(), offset: 0, error: None }
    }

    fn fd(&self, tag: u32) -> BorrowedFd<'_> {
        self.receivers[tag as usize].socket.as_fd()
    }

    fn failure(&mut self, tag: u32, failed: Option<&io::Error>) -> Verdict {
        // ICMP errors about earlier datagrams surface as a pending socket
        // error: consume it; the underlay may come back.
        if let Some(r) = self.receivers.get(tag as usize) {
            let _ = nix::sys::socket::getsockopt(&r.socket, nix::sys::socket::sockopt::SocketError);
        }
        if failed.is_some() { Verdict::Log } else { Verdict::Keep }
    }

    fn send_call(&self) -> &'static str {
        "send_vxlan"
    }

    fn close(&mut self, endpoint: u32, registry: &mut Registry, epoll: &Epoll) {
        let Some(p) = self.ports.try_remove(endpoint as usize) else { return };
        let Some(r) = self.receivers.get_mut(p.receiver) else { return };
        r.ports.retain(|&q| q != endpoint as usize);
        if r.ports.is_empty() {
            let r = self.receivers.remove(p.receiver);
            registry.remove(epoll, r.desc, r.socket.as_fd());
        } else if let Some(group) = p.spec.group
            && !r.ports.iter().any(|&q| self.ports[q].spec.group == Some(group))
        {
            let socket = socket2::SockRef::from(&r.socket);
            let ifindex = p.spec.dev.as_deref().and_then(|d| nix::net::if_::if_nametoindex(d).ok()).unwrap_or(0);
            let _ = match group {
                IpAddr::V4(g) => socket.leave_multicast_v4_n(&g, &InterfaceIndexOrAddress::Index(ifindex)),
                IpAddr::V6(g) => socket.leave_multicast_v6(&g, ifindex),
            };
        }
    }
}

#[derive(Clone, Copy)]
enum Outcome {
    Sent,
    TooLarge,
    Dropped,
}

/// Sends datagrams (at most [`BATCH`]) on `socket`; one the kernel refuses
/// is dropped and the rest still go. Returns what became of each.
fn send_all(socket: &OwnedFd, header: &[u8], frames: &[&[u8]], to: &[&SockaddrStorage]) -> [Outcome; BATCH] {
    let mut outcomes = [Outcome::Sent; BATCH];
    let mut at = 0;
    while at < frames.len() {
        let (sent, error) = sys::send_to_batch(socket.as_fd(), header, &frames[at..], &to[at..]);
        at += sent;
        let Some(error) = error else { break };
        if let Some(o) = outcomes.get_mut(at) {
            *o = if error.raw_os_error() == Some(libc::EMSGSIZE) { Outcome::TooLarge } else { Outcome::Dropped };
        }
        at += 1;
    }
    outcomes
}

impl Vxlan {
    /// Checks a received datagram; returns its VNI and the inner frame's
    /// source, or `None` if it is malformed.
    fn check(bytes: &[u8]) -> Option<(u32, Mac)> {
        let v = crate::wire::Vxlan::new_checked(bytes).ok()?;
        let inner = v.payload();
        let src = inner.get(6..12)?;
        if inner.len() < MIN_FRAME {
            return None;
        }
        Some((v.vni(), Mac(src.try_into().expect("six bytes"))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_hash_follows_the_flow() {
        let mut a = vec![0u8; 14 + 20 + 8];
        a[12..14].copy_from_slice(&[0x08, 0x00]);
        a[14] = 0x45;
        a[14 + 9] = 17;
        a[14 + 12..14 + 20].copy_from_slice(&[169, 254, 0, 1, 169, 254, 0, 2]);
        a[34..38].copy_from_slice(&[0x30, 0x39, 0x00, 0x35]);
        let mut other_port = a.clone();
        other_port[35] = 0x3a;
        let mut other_mac = a.clone();
        other_mac[0] = 2;
        assert_eq!(flow_hash(&a), flow_hash(&other_mac), "an IP flow hashes by its addresses and ports");
        assert_ne!(flow_hash(&a), flow_hash(&other_port));
        assert_eq!(flow_hash(&[]), flow_hash(&[]), "never panics on short frames");
        let _ = flow_hash(&a[..20]);
    }

    #[test]
    fn sender_addresses() {
        let mut v4 = vec![0u8; 16];
        v4[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&4789u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[169, 254, 0, 7]);
        assert_eq!(sender_ip(&v4), Some("169.254.0.7".parse().unwrap()));
        let mut v6 = vec![0u8; 28];
        v6[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        v6[8..24].copy_from_slice(&"fd00::9".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(sender_ip(&v6), Some("fd00::9".parse().unwrap()));
        v6[8..24].copy_from_slice(&"::ffff:169.254.0.8".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(sender_ip(&v6), Some("169.254.0.8".parse().unwrap()), "mapped addresses read as IPv4");
        assert_eq!(sender_ip(&v4[..6]), None, "cut short");
        assert_eq!(sender_ip(&[]), None);
        assert_eq!(sender_ip(&[1, 0]), None);
    }

    #[test]
    fn check_reads_the_vni_and_drops_runts() {
        let mut d = emit_vxlan(5).to_vec();
        d.extend_from_slice(&[0; 14]);
        d[8 + 6] = 0x02;
        assert!(matches!(Vxlan::check(&d), Some((5, m)) if m.0[0] == 2));
        assert_eq!(Vxlan::check(&d[..20]), None, "inner frame too short");
        assert_eq!(Vxlan::check(&[0; 30]), None, "no VNI flag");
    }
}
