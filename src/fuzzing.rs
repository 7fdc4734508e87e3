//! Fuzzing entry points, shared by the cargo-fuzz targets in `fuzz/` and by
//! the regression test that replays every saved crasher. Each takes raw
//! bytes and panics only if an invariant breaks.

use crate::engine::{Attach, Credentials, Delivery, Edit, EndpointKey, PortRequest, Switch, VLAN_NONE};
use crate::mgmt::{self, Context, Session, SessionKind, SwitchInfo};
use crate::wire::{Frame, Mac, Request};

pub mod frontend;

/// The handshake parser accepts or rejects any bytes without panicking, and
/// what it accepts is consistent.
pub fn handshake(data: &[u8]) {
    if let Ok(req) = Request::parse(data) {
        assert!(!req.description.contains(&0));
        assert!(req.description.len() <= data.len());
        if let Some(path) = req.addr.path() {
            assert!(!path.contains(&0) && path.len() <= 108);
        }
    }
}

/// A VXLAN datagram view and a VXLAN SPEC accept or reject any bytes
/// without panicking; a SPEC that parses prints as one that parses the
/// same.
pub fn vxlan(data: &[u8]) {
    if let Ok(v) = crate::wire::Vxlan::new_checked(data) {
        assert!(v.vni() <= crate::wire::VNI_MAX);
        assert_eq!(v.payload().len(), data.len() - crate::wire::VXLAN_HEADER_LEN);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(spec) = text.parse::<crate::net::VxlanSpec>()
    {
        let again: crate::net::VxlanSpec = spec.to_string().parse().expect("a printed SPEC parses");
        assert_eq!(again, spec);
    }
}

/// Reads little values off the front of the fuzzer's bytes.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

fn small_mac(n: u8) -> Mac {
    // A handful of stations, unicast and multicast, so learning matters.
    Mac([(n >> 3) & 1 | 2, 0, 0, 0, 0, n & 7])
}

/// Drives the engine with attach/detach, frames, VLAN, trunk and time changes,
/// checking after each frame that nothing goes back to its source port and
/// nothing leaves the frame's VLAN (or, for a VLAN carried transparently,
/// the trunk ports).
pub fn engine(data: &[u8]) {
    let mut input = Bytes(data);
    let mut sw = Switch::new(8, false, 16);
    let mut live: Vec<EndpointKey> = Vec::new();
    let mut now = 0u64;
    let mut out: Vec<Delivery> = Vec::new();
    while let Some(op) = input.u8() {
        let arg = input.u8().unwrap_or(0);
        match op % 10 {
            0 | 1 => {
                let request = match arg % 3 {
                    0 => PortRequest::Any,
                    1 => PortRequest::Zero,
                    _ => PortRequest::Port(u32::from(arg >> 2) % 10),
                };
                let a = Attach {
                    request,
                    id: u32::from(arg),
                    module: "unix prog",
                    description: Vec::new(),
                    user: Some(0),
                    credentials: Credentials { uid: 0, gids: vec![0] },
                };
                if let Ok((key, _)) = sw.attach(a) {
                    live.push(key);
                }
            }
            2 if !live.is_empty() => {
                let key = live.remove(usize::from(arg) % live.len());
                assert!(sw.detach(key).is_some());
            }
            3 => {
                let _ = sw.create_vlan(u16::from(arg) % 8);
            }
            4 => {
                let _ = sw.set_port_vlan(u32::from(arg % 8), [0, 1, 2, VLAN_NONE][usize::from(arg >> 6)]);
            }
            5 => {
                let _ = sw.add_tagged(u16::from(arg >> 4) % 4, u32::from(arg % 8));
            }
            6 => {
                let _ = sw.remove_tagged(u16::from(arg >> 4) % 4, u32::from(arg % 8));
            }
            7 => {
                now += u64::from(arg % 8);
                sw.tick(now);
            }
            8 => match arg % 6 {
                0 | 1 => sw.set_hub(arg % 6 == 1),
                2 | 3 => {
                    sw.set_fstp(arg % 6 == 3);
                }
                _ => {
                    let _ = sw.set_trunk(u32::from(arg >> 3) % 8, arg % 6 == 5);
                }
            },
            _ if !live.is_empty() => {
                let from = live[usize::from(arg) % live.len()];
                let len = usize::from(input.u8().unwrap_or(60)) * 7;
                let mut frame = vec![0u8; len];
                let head = input.take(16);
                frame.iter_mut().zip(head).for_each(|(b, h)| *b = *h);
                if frame.len() >= 12 {
                    let dst = head.first().copied().unwrap_or(0);
                    // Some frames are spanning-tree BPDUs, the rest small stations.
                    let dst = if dst >= 0xf0 { SPANNING_TREE } else { small_mac(dst) };
                    frame[..6].copy_from_slice(&dst.0);
                    frame[6..12].copy_from_slice(&small_mac(head.get(1).copied().unwrap_or(0)).0);
                }
                out.clear();
                let source_port = sw.endpoint(from).expect("live endpoint").port;
                if sw.ingress(from, &frame, now, &mut out).is_ok() {
                    check_deliveries(&sw, source_port, &frame, &out);
                }
            }
            _ => {}
        }
        drop(sw.take_events());
        let sent: Vec<EndpointKey> = sw.take_outbox().into_iter().map(|o| o.endpoint).collect();
        assert!(sent.iter().all(|&k| sw.endpoint(k).is_some()), "a BPDU went to a detached endpoint");
    }
}

const SPANNING_TREE: Mac = Mac([0x01, 0x80, 0xc2, 0, 0, 0]);

fn check_deliveries(sw: &Switch, source_port: u32, frame: &[u8], out: &[Delivery]) {
    let parsed = Frame::new_checked(frame).expect("accepted frames are well-formed");
    let source = sw.port(source_port).expect("source port exists");
    let vlan = parsed.tci().map_or(source.untagged_vlan().unwrap_or(VLAN_NONE), |t| t & 0x0fff);
    let transparent = parsed.tci().is_some() && source.is_trunk() && vlan < VLAN_NONE && sw.vlan(vlan).is_none();
    for d in out {
        let dest_port = sw.endpoint(d.endpoint).expect("delivered to a live endpoint").port;
        assert_ne!(dest_port, source_port, "a frame went back to its own port");
        let dest = sw.port(dest_port).expect("port");
        if sw.is_hub() {
            continue;
        }
        if transparent {
            assert!(dest.is_trunk() && d.edit == Edit::AsIs, "a frame of an unconfigured VLAN left the trunks");
        } else {
            assert!(dest.is_member(vlan), "a frame left its VLAN");
        }
    }
}

fn session_fixture() -> (Switch, SwitchInfo) {
    let mut sw = Switch::new(8, false, 16);
    for port in [1, 2] {
        let a = Attach {
            request: PortRequest::Port(port),
            id: port,
            module: "unix prog",
            description: format!("fuzz{port}").into_bytes(),
            user: Some(0),
            credentials: Credentials::default(),
        };
        sw.attach(a).expect("fresh ports");
    }
    let info = SwitchInfo {
        pid: 1,
        mac: Mac([2, 0, 0, 0, 0, 1]),
        priority: 0x8000,
        mgmt: None,
        ctl_dir: "/nonexistent".into(),
        ctl_mode: 0o600,
    };
    (sw, info)
}

/// Console lines: any bytes, one line per `\n`, never a panic, and every
/// reply ends like the reference's replies do.
pub fn console(data: &[u8]) {
    let (mut sw, info) = session_fixture();
    let mut session = Session::new(SessionKind::Socket);
    let text = String::from_utf8_lossy(data);
    for line in text.split('\n') {
        // Loading arbitrary paths would make runs depend on the machine.
        if line.trim_start().starts_with("load") {
            continue;
        }
        let mut ctx = Context::new(&mut sw, &info, 0, &mut session);
        let reply = mgmt::execute(&mut ctx, line);
        let reply = reply.as_bytes();
        assert!(reply.is_empty() || reply.ends_with(b"\n") || reply.ends_with(b"END OF SESSION"), "{reply:?}");
    }
}

/// A whole rc file run as at start-up.
pub fn rc_file(data: &[u8]) {
    let (mut sw, info) = session_fixture();
    let mut session = Session::new(SessionKind::RcFile);
    let text = String::from_utf8_lossy(data);
    let mut ctx = Context::new(&mut sw, &info, 0, &mut session);
    let mut out = mgmt::Out::default();
    let _ = mgmt::run_script(&mut ctx, "fuzz.rc", &text, &mut out);
}

/// The vhost-user backend under a frontend that says anything: raw control
/// messages (some carrying the guest-memory memfd), bytes written over its
/// rings, and frames moved both ways, in the order the input says. Whatever
/// happens, nothing panics or blocks, and no frame longer than the largest
/// Ethernet frame comes out; an error means the port would be closed.
pub fn vhost_user(data: &[u8]) {
    use std::os::fd::AsRawFd;

    use crate::net::vhost_user::{BATCH, EachFrame, MAX_FRAME, VhostUserPort};
    use vm_memory::{Bytes as _, GuestAddress};

    let mut input = Bytes(data);
    let Ok((ours, theirs)) = std::os::unix::net::UnixStream::pair() else { return };
    let Ok(mut front) = frontend::Frontend::from_stream(ours) else { return };
    let Ok(mut port) = VhostUserPort::new(theirs) else { return };
    if input.u8().is_some_and(|b| b & 1 == 1) {
        let features = frontend::VERSION_1 | frontend::MRG_RXBUF | frontend::EVENT_IDX | frontend::INDIRECT_DESC;
        if front.set_up(features).is_err() || port.handle_control().is_err() {
            return;
        }
    }
    while let Some(op) = input.u8() {
        let ok = match op % 6 {
            0 => {
                let len = usize::from(input.u8().unwrap_or(0));
                let with_memory = input.u8().is_some_and(|b| b & 1 == 1);
                let msg = input.take(len).to_vec();
                let fds = if with_memory { vec![front.memfd.as_raw_fd()] } else { Vec::new() };
                front.send_raw(&msg, &fds).is_ok() && port.handle_control().is_ok()
            }
            1 => {
                let at = u64::from(u16::from_le_bytes([input.u8().unwrap_or(0), input.u8().unwrap_or(0)]));
                let len = usize::from(input.u8().unwrap_or(0));
                let bytes = input.take(len).to_vec();
                let _ = front.memory.write_slice(&bytes, GuestAddress(at));
                true
            }
            // A frame too long to carry comes out cut a byte past the limit.
            2 => port.receive(BATCH, &mut EachFrame::new(MAX_FRAME, |f| assert!(f.len() <= MAX_FRAME + 1))).is_ok(),
            3 => {
                let n = usize::from(input.u8().unwrap_or(0) % 8);
                let len = 14 + usize::from(input.u8().unwrap_or(0)) * 6;
                let frame = vec![0x5a; len];
                port.send(&vec![frame.as_slice(); n]).is_ok()
            }
            4 => {
                let len = usize::from(input.u8().unwrap_or(0)) * 7;
                front.transmit(&vec![0xa5; len]);
                true
            }
            _ => {
                let n = u16::from(input.u8().unwrap_or(0) % 16);
                let len = u32::from(input.u8().unwrap_or(0)) * 16;
                front.post_receive_buffers(n, len);
                true
            }
        };
        if !ok {
            return;
        }
    }
}
