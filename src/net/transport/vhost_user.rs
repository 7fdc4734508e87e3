//! `--vhost-user PATH`: the switch is the vhost-user-net backend of every
//! frontend that connects to PATH (QEMU's `-netdev vhost-user`, DPDK's
//! `net_virtio_user`, cloud-hypervisor), each an endpoint on a port of its
//! own. The protocol and the rings are [`crate::net::vhost_user`]'s; this
//! file maps them onto the data plane.
//!
//! A frontend has three descriptors: its control connection, watched
//! edge-triggered (half a request leaves it readable, and is finished by
//! the next edge); the transmit queue's kick, which is the endpoint's
//! input; and the receive queue's kick, its output, which says the guest
//! posted buffers again by becoming readable. The kicks arrive in control
//! requests, after the port exists, and a frontend may replace them; the
//! data plane keeps their places (and flow-control facts) meanwhile, and
//! watches a duplicate of each kick, so the registration can be taken out
//! before the file goes, whatever the frontend does with its own copy.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::sys::epoll::{Epoll, EpollFlags};
use nix::unistd::Gid;
use slab::Slab;

use super::{
    Arrival, Batch, DescId, Registry, Sent, StreamListener, Transport, TransportId, Verdict, Watch, describe_peer,
};
use crate::engine::EndpointKey;
use crate::net::log;
use crate::net::vhost_user::{Control, IntoBatch, PortError, VhostUserPort};

pub const MODULE: &str = "vhost-user";

/// The tag of the listening socket; a frontend's descriptors are tagged
/// with its slot and their role.
const LISTENER: u32 = u32::MAX;
const CONTROL: u32 = 0;
/// The transmit queue's kick: frames from the guest.
const FRAMES: u32 = 1;
/// The receive queue's kick: room in the guest for frames.
const ROOM: u32 = 2;
const ROLES: u32 = 4;

fn tag(slot: usize, role: u32) -> u32 {
    slot as u32 * ROLES + role
}

fn split(tag: u32) -> (usize, u32) {
    ((tag / ROLES) as usize, tag % ROLES)
}

/// A kick being watched: the data plane's descriptor, and the duplicate
/// of the frontend's eventfd in its epoll set.
struct Kick {
    desc: DescId,
    watched: Option<OwnedFd>,
}

struct Frontend {
    port: VhostUserPort,
    control: Option<DescId>,
    frames: Kick,
    room: Kick,
    key: Option<EndpointKey>,
    /// The last receive stopped at its limit with frames left in the ring:
    /// no kick will say so.
    more: bool,
}

impl Frontend {
    /// What the epoll set holds for `kick`: its duplicate once watched.
    /// The registry asks only for watched descriptors, and deletes none
    /// that is not, so before that the control connection stands in.
    fn kick_fd<'a>(&'a self, kick: &'a Kick) -> BorrowedFd<'a> {
        kick.watched.as_ref().map_or_else(|| self.port.control_fd(), AsFd::as_fd)
    }
}

pub struct VhostUser {
    id: TransportId,
    listener: StreamListener,
    frontends: Slab<Frontend>,
    /// Frontends accepted, or whose kicks changed, since the data plane
    /// last asked: what `arrivals` has to look at, so a receive costs
    /// nothing per idle frontend.
    unsettled: Vec<usize>,
    /// The longest frame the switch carries (`--mtu`).
    max_frame: usize,
}

impl VhostUser {
    /// Listens at `path` with `ctl`'s mode and group and registers the
    /// listener.
    pub fn open(
        id: TransportId,
        path: &Path,
        (mode, group): (u32, Option<Gid>),
        max_frame: usize,
        registry: &mut Registry,
        epoll: &Epoll,
    ) -> io::Result<VhostUser> {
        let listener = StreamListener::open(path, mode, group, (registry, epoll), (id, LISTENER))?;
        Ok(VhostUser { id, listener, frontends: Slab::new(), unsettled: Vec::new(), max_frame })
    }

    fn accept(&mut self) -> io::Result<usize> {
        let VhostUser { listener, frontends, unsettled, max_frame, .. } = self;
        listener.accept(|stream| match VhostUserPort::new(stream) {
            Ok(mut port) => {
                port.set_max_frame(*max_frame);
                let unwatched = || Kick { desc: DescId::MAX, watched: None };
                let frontend =
                    Frontend { port, control: None, frames: unwatched(), room: unwatched(), key: None, more: false };
                unsettled.push(frontends.insert(frontend));
            }
            Err(e) => log::log(&format!("{MODULE} {}: {}", listener.path.display(), log::error_text(&e))),
        })
    }

    /// Frames the guest transmitted, into `rx`.
    fn receive(&mut self, slot: usize, rx: &mut Batch, max: usize) -> io::Result<usize> {
        let Some(frontend) = self.frontends.get_mut(slot) else { return Ok(0) };
        let Some(key) = frontend.key else { return Ok(0) };
        let mut into = IntoBatch { rx, filled: 0 };
        let received = frontend.port.receive(max, &mut into);
        let n = into.filled;
        rx.set_sources(0..n, key.0);
        match received {
            Ok(received) => {
                frontend.more = received.more;
                Ok(n)
            }
            // Frames already in the batch go first; the ring is met again
            // at once, without waiting for a kick.
            Err(_) if n > 0 => {
                frontend.more = true;
                Ok(n)
            }
            Err(e) => Err(port_error(e)),
        }
    }

    fn control(&mut self, slot: usize) -> io::Result<usize> {
        let Some(frontend) = self.frontends.get_mut(slot) else { return Ok(0) };
        match frontend.port.handle_control() {
            Ok(Control::Unchanged) => Ok(0),
            Ok(Control::KicksChanged) => {
                self.unsettled.push(slot);
                Ok(0)
            }
            Err(e) => Err(port_error(e)),
        }
    }

    /// Watches the kicks frontend `slot` has now, in its descriptors'
    /// places, instead of those it had.
    fn watch_kicks(&mut self, slot: usize, registry: &mut Registry, epoll: &Epoll) {
        let Some(Frontend { port, frames, room, .. }) = self.frontends.get_mut(slot) else { return };
        for (kick, fd) in [(frames, port.tx_kick()), (room, port.rx_kick())] {
            if let Some(old) = kick.watched.take() {
                registry.unwatch(epoll, kick.desc, old.as_fd());
            }
            let Some(fd) = fd else { continue };
            let watched =
                fd.try_clone_to_owned().and_then(|copy| registry.watch(epoll, kick.desc, copy.as_fd()).map(|()| copy));
            match watched {
                Ok(copy) => kick.watched = Some(copy),
                Err(e) => log::log(&format!("{MODULE} kick of frontend {slot}: {}", log::error_text(&e))),
            }
        }
    }
}

/// A port's error as the data plane sees it: a hang-up is an ordinary end;
/// anything else is a frontend that broke the protocol, closed with a line.
fn port_error(e: PortError) -> io::Error {
    match e {
        PortError::HungUp => io::ErrorKind::UnexpectedEof.into(),
        PortError::Io(e) if e.kind() == io::ErrorKind::ConnectionReset => e,
        e => io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
    }
}

impl Transport for VhostUser {
    fn recv(&mut self, tag: u32, rx: &mut Batch, max: usize) -> io::Result<usize> {
        if tag == LISTENER {
            return self.accept();
        }
        match split(tag) {
            (slot, CONTROL) => self.control(slot),
            (slot, FRAMES) => self.receive(slot, rx, max),
            _ => Ok(0),
        }
    }

    fn send(&mut self, endpoint: u32, frames: &[&[u8]], _offset: usize) -> Sent {
        let Some(frontend) = self.frontends.get_mut(endpoint as usize) else {
            return Sent { frames: frames.len(), offset: 0, error: None };
        };
        match frontend.port.send(frames) {
            Ok(sent) => Sent {
                frames: sent.frames,
                offset: 0,
                error: sent.would_block.then(|| io::ErrorKind::WouldBlock.into()),
            },
            Err(e) => {
                log::log(&format!("{MODULE} {}: {e}", self.listener.path.display()));
                Sent { frames: 0, offset: 0, error: Some(port_error(e)) }
            }
        }
    }

    fn fd(&self, tag: u32) -> BorrowedFd<'_> {
        if tag == LISTENER {
            return self.listener.fd();
        }
        let (slot, role) = split(tag);
        let frontend = &self.frontends[slot];
        match role {
            FRAMES => frontend.kick_fd(&frontend.frames),
            ROOM => frontend.kick_fd(&frontend.room),
            _ => frontend.port.control_fd(),
        }
    }

    fn failure(&mut self, tag: u32, failed: Option<&io::Error>) -> Verdict {
        if tag == LISTENER {
            return StreamListener::verdict(failed);
        }
        let Some(key) = self.frontends.get(split(tag).0).and_then(|f| f.key) else { return Verdict::Keep };
        let reason = match failed {
            Some(e) if e.kind() == io::ErrorKind::InvalidData => Some(e.to_string()),
            Some(e) if !matches!(e.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset) => {
                Some(log::error_text(e))
            }
            _ => None,
        };
        Verdict::Close { endpoint: key, what: "vhost-user frontend", reason }
    }

    fn send_call(&self) -> &'static str {
        "send_vhost_user"
    }

    fn close(&mut self, endpoint: u32, registry: &mut Registry, epoll: &Epoll) {
        let Some(frontend) = self.frontends.try_remove(endpoint as usize) else { return };
        if let Some(desc) = frontend.control {
            registry.remove(epoll, desc, frontend.port.control_fd());
        }
        for kick in [&frontend.frames, &frontend.room] {
            registry.remove(epoll, kick.desc, frontend.kick_fd(kick));
        }
    }

    fn arrivals(&mut self, registry: &mut Registry, epoll: &Epoll) -> Vec<Arrival> {
        let mut arrivals = Vec::new();
        for slot in std::mem::take(&mut self.unsettled) {
            // A frontend is unsettled once when accepted, and again each
            // time its kicks change (which only an attached one's can).
            let Some(frontend) = self.frontends.get_mut(slot) else { continue };
            if frontend.control.is_some() {
                self.watch_kicks(slot, registry, epoll);
                continue;
            }
            let control = match registry.add_edge(epoll, frontend.port.control_fd(), self.id, tag(slot, CONTROL)) {
                Ok(desc) => desc,
                Err(e) => {
                    log::log(&format!("{MODULE} {}: {}", self.listener.path.display(), log::error_text(&e)));
                    self.frontends.remove(slot);
                    continue;
                }
            };
            frontend.control = Some(control);
            frontend.frames.desc = registry.add_unwatched(self.id, tag(slot, FRAMES), true, Watch::LEVEL);
            let room = Watch { room: EpollFlags::EPOLLIN, ..Watch::LEVEL };
            frontend.room.desc = registry.add_unwatched(self.id, tag(slot, ROOM), false, room);
            let (credentials, description, user) = describe_peer(&self.listener.path, frontend.port.control_fd());
            arrivals.push(Arrival {
                local: slot as u32,
                id: frontend.port.control_fd().as_raw_fd() as u32,
                module: MODULE,
                description,
                user,
                credentials,
                input: frontend.frames.desc,
                output: frontend.room.desc,
            });
        }
        arrivals
    }

    fn admit(&mut self, local: u32, key: Option<EndpointKey>, registry: &mut Registry, epoll: &Epoll) {
        match key {
            Some(key) => {
                if let Some(frontend) = self.frontends.get_mut(local as usize) {
                    frontend.key = Some(key);
                }
            }
            None => self.close(local, registry, epoll),
        }
    }

    fn buffered(&self, tag: u32) -> bool {
        let (slot, role) = split(tag);
        role == FRAMES && self.frontends.get(slot).is_some_and(|f| f.key.is_some() && f.more)
    }

    fn gone(&self, _endpoint: u32, error: &io::Error) -> bool {
        error.kind() == io::ErrorKind::InvalidData
    }

    fn shutdown(&mut self) {
        self.listener.remove();
    }
}
