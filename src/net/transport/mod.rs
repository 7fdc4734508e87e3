//! Transports: how an endpoint's frames move. Each file here is one kind
//! (a VDE client's datagram socket, a tap interface, …) and owns its
//! descriptors and per-endpoint state; the data plane asks every kind the
//! same few questions through [`Transport`] and keeps flow control,
//! grouping by destination, counters and drop reasons for itself.
//!
//! Descriptors and endpoints are separate things. Each descriptor a
//! transport wants watched is registered in the data plane's
//! [`Registry`] under a tag of the transport's choosing; a frame read from
//! it is tagged with the endpoint it came from, whatever descriptor
//! carried it. So one socket may feed many endpoints (a shared datagram
//! socket) and one endpoint may have several descriptors.

pub mod dgram;
pub mod stream;
pub mod tap;
pub mod vde;
pub mod vhost_user;
pub mod vxlan;
mod vxlan_spec;

use std::io;
use std::os::fd::BorrowedFd;

use nix::sys::epoll::{Epoll, EpollFlags};
use slab::Slab;

use super::sys::RecvBatch;
use super::{Token, interest};
use crate::engine::{Credentials, EndpointKey};
use crate::wire::{VLAN_TAG_LEN, VXLAN_HEADER_LEN};

/// Least receive buffer size: larger than any frame the switch carries at
/// the default MTU, so an oversized datagram shows as too long instead of
/// being cut to size.
pub const BUF: usize = 2048;

/// The receive buffer size for frames of up to `max_frame` bytes (`--mtu`):
/// the frame behind the longest header a transport leaves in front of it
/// (VXLAN's; a stream record's tag room is shorter), and a byte more, so
/// that an oversized frame shows as too long on every transport.
pub fn buffer_size(max_frame: usize) -> usize {
    BUF.max(max_frame + VXLAN_HEADER_LEN.max(VLAN_TAG_LEN) + 1)
}

/// The batch every transport receives into.
pub type Batch = RecvBatch;

/// Index of a transport in the data plane.
pub type TransportId = usize;

/// The transports every switch has, at fixed places.
pub const VDE: TransportId = 0;
pub const TAP: TransportId = 1;
pub const VXLAN: TransportId = 2;

/// Index of a registered descriptor.
pub type DescId = usize;

/// The outcome of a send.
pub struct Sent {
    /// Whole frames that went.
    pub frames: usize,
    /// Progress into the next frame, in the transport's own units (bytes
    /// of a stream record); handed back with the next send of that frame.
    pub offset: usize,
    /// Why the rest did not go: `WouldBlock` when the endpoint is full.
    pub error: Option<io::Error>,
}

impl Sent {
    pub fn from_batch((frames, error): (usize, Option<io::Error>)) -> Sent {
        Sent { frames, offset: 0, error }
    }
}

/// What to do about a descriptor that reported an error or failed a read.
pub enum Verdict {
    /// Nothing: the next read meets whatever is wrong again, or it passed.
    Keep,
    /// Log the error (once per failure) and keep going.
    Log,
    /// Log the error and stop reading the descriptor until the next tick:
    /// a listener out of descriptors stays readable, and a level-triggered
    /// wait would spin on it.
    Pause,
    /// The endpoint can no longer move frames: detach and close it, logging
    /// `Closing {what} {description}: {reason}` if there is a reason worth
    /// a line (an ordinary hang-up is not).
    Close { endpoint: EndpointKey, what: &'static str, reason: Option<String> },
}

/// An endpoint that appeared on its own (an accepted connection, the
/// first datagram from a new address) and needs a port.
pub struct Arrival {
    pub local: u32,
    /// The number `port/print` shows as its endpoint ID.
    pub id: u32,
    pub module: &'static str,
    pub description: Vec<u8>,
    /// The identity that owns the port while attached, if known.
    pub user: Option<u32>,
    pub credentials: Credentials,
    pub input: DescId,
    pub output: DescId,
}

/// Tags frames from an endpoint that has no key yet: until the data plane
/// admits it, its frames carry this mark and the transport's number for it.
pub const PENDING: u32 = 0x8000_0000;

/// One kind of endpoint. `tag` names one of the transport's registered
/// descriptors, `endpoint` one of its endpoints (both its own numbering).
pub trait Transport: std::any::Any {
    /// Receives what descriptor `tag` has ready, at most `max` frames, into
    /// `rx` from its first slot, tagging each with its source endpoint.
    /// `Ok(0)` when nothing was waiting.
    fn recv(&mut self, tag: u32, rx: &mut Batch, max: usize) -> io::Result<usize>;

    /// Sends `frames` (at most [`super::sys::BATCH`]) to `endpoint` without
    /// blocking, the first of them from progress `offset` of an earlier
    /// partial send.
    fn send(&mut self, endpoint: u32, frames: &[&[u8]], offset: usize) -> Sent;

    /// Descriptor `tag`, to change what it is watched for.
    fn fd(&self, tag: u32) -> BorrowedFd<'_>;

    /// Descriptor `tag` reported an error condition (`failed` is `None`) or
    /// a read from it failed.
    fn failure(&mut self, tag: u32, failed: Option<&io::Error>) -> Verdict;

    /// vde_switch's name for this kind's way of sending, for log lines.
    fn send_call(&self) -> &'static str;

    /// The control connection whose end ends `endpoint`, if any.
    fn lifeline(&self, _endpoint: u32) -> Option<usize> {
        None
    }

    /// Closes `endpoint`, unregistering descriptors only it used and
    /// removing any file it had.
    fn close(&mut self, endpoint: u32, registry: &mut Registry, epoll: &Epoll);

    /// Endpoints that appeared since the last call, their descriptors
    /// registered; frames of theirs already received are tagged
    /// `PENDING | local`.
    fn arrivals(&mut self, _registry: &mut Registry, _epoll: &Epoll) -> Vec<Arrival> {
        Vec::new()
    }

    /// Arrival `local` got endpoint `key`, or no port (`None`: close it).
    fn admit(&mut self, _local: u32, _key: Option<EndpointKey>, _registry: &mut Registry, _epoll: &Epoll) {}

    /// Whether descriptor `tag` holds frames already read from the kernel
    /// (a stream's reassembly buffer): its readiness will not say so.
    fn buffered(&self, _tag: u32) -> bool {
        false
    }

    /// Whether a send to `endpoint` that failed with `error` means the
    /// endpoint is gone for good (its address no longer accepts frames).
    fn gone(&self, _endpoint: u32, _error: &io::Error) -> bool {
        false
    }

    /// Once a second, with seconds since start: endpoints to close (silent
    /// for too long).
    fn expired(&mut self, _now: u64) -> Vec<EndpointKey> {
        Vec::new()
    }

    /// At exit, after every endpoint is closed: remove listening sockets.
    fn shutdown(&mut self) {}
}

/// A registered descriptor: which transport reads it, under which tag,
/// and the flow-control facts that decide what it is watched for.
pub struct Desc {
    pub transport: TransportId,
    pub tag: u32,
    /// Read for frames (or connections); an output-only descriptor is
    /// watched for writability alone.
    pub reads: bool,
    /// Distinguishes this registration from earlier ones in the same slot,
    /// so an event queued for a closed descriptor is not taken for a new
    /// one within the same wake-up.
    pub generation: u32,
    /// Endpoints whose frames arrive on this descriptor.
    pub feeders: Vec<EndpointKey>,
    /// How many of those are held back by a full destination.
    pub held: u32,
    /// Not read for now (see [`Desc::wanted`]); kept by the data plane.
    pub paused: bool,
    /// Endpoints with frames queued that wait for this descriptor to be
    /// writable.
    pub waiting: Vec<EndpointKey>,
    pub registered: EpollFlags,
    /// The wake-up in which frames last came from this descriptor.
    pub last_busy: u64,
    /// How the descriptor is watched (see [`Watch`]).
    pub watch: Watch,
    /// Whether a descriptor is in the epoll set: one that comes later (a
    /// vhost-user kick the frontend has not sent yet) keeps its place and
    /// its flow-control facts meanwhile.
    pub watched: bool,
}

/// What kind of readiness a descriptor reports.
#[derive(Clone, Copy)]
pub struct Watch {
    /// Reported once per change (`EPOLLET`): for a descriptor whose
    /// readiness a read does not always clear, such as a socket holding
    /// half a control message.
    pub edge: bool,
    /// What says the endpoint takes frames again: `EPOLLOUT` for a socket,
    /// `EPOLLIN` for an eventfd the peer signals (always writable itself).
    pub room: EpollFlags,
}

impl Watch {
    pub const LEVEL: Watch = Watch { edge: false, room: EpollFlags::EPOLLOUT };
}

impl Desc {
    /// A descriptor is read unless it is paused: every endpoint it feeds
    /// that has sent lately is held back (the data plane decides). So a
    /// socket of one endpoint is not read while that endpoint is held,
    /// which makes the kernel push back on the sender. A shared socket is
    /// still read while any of its active senders is not held: holding one
    /// must not stall the others, and a datagram socket has no per-sender
    /// pushback to give. Frames of a held endpoint read meanwhile take the
    /// ordinary path: at a destination still full they queue up to its
    /// limit and the rest are counted as `socket-full` on it, as for a
    /// congested destination. Endpoints silent since the wake-up before do
    /// not keep a shared socket read: when the only busy sender is held, it
    /// is paced like a socket of its own. A descriptor that feeds nobody yet (a
    /// listener, a socket before its first sender) is always read.
    pub fn wanted(&self) -> EpollFlags {
        let mut flags = EpollFlags::empty();
        if self.reads && !self.paused {
            flags |= EpollFlags::EPOLLIN;
        }
        if !self.waiting.is_empty() {
            flags |= self.watch.room;
        }
        if self.watch.edge {
            flags |= EpollFlags::EPOLLET;
        }
        flags
    }

    pub fn all_held(&self) -> bool {
        self.paused
    }
}

/// The descriptors the event loop watches for the data plane.
pub struct Registry {
    pub descs: Slab<Desc>,
    generation: u32,
}

impl Default for Registry {
    fn default() -> Self {
        Registry { descs: Slab::new(), generation: 0 }
    }
}

/// Generations wrap within the bits a token has for them.
pub const GENERATION_MASK: u32 = 0x00ff_ffff;

impl Registry {
    /// Watches `fd` for input on behalf of `transport`, which will know it
    /// as `tag`.
    pub fn add(&mut self, epoll: &Epoll, fd: BorrowedFd, transport: TransportId, tag: u32) -> io::Result<DescId> {
        self.register(epoll, fd, transport, tag, true, Watch::LEVEL)
    }

    /// Watches `fd` for input, reported once per change (see [`Watch`]).
    pub fn add_edge(&mut self, epoll: &Epoll, fd: BorrowedFd, transport: TransportId, tag: u32) -> io::Result<DescId> {
        self.register(epoll, fd, transport, tag, true, Watch { edge: true, ..Watch::LEVEL })
    }

    /// A descriptor whose file comes later ([`Registry::watch`]); `reads`
    /// and `watch` as for the other registrations.
    pub fn add_unwatched(&mut self, transport: TransportId, tag: u32, reads: bool, watch: Watch) -> DescId {
        self.insert(transport, tag, reads, watch)
    }

    /// Registers `fd` only to learn when it is writable again.
    pub fn add_output(
        &mut self,
        epoll: &Epoll,
        fd: BorrowedFd,
        transport: TransportId,
        tag: u32,
    ) -> io::Result<DescId> {
        self.register(epoll, fd, transport, tag, false, Watch::LEVEL)
    }

    fn register(
        &mut self,
        epoll: &Epoll,
        fd: BorrowedFd,
        transport: TransportId,
        tag: u32,
        reads: bool,
        watch: Watch,
    ) -> io::Result<DescId> {
        let id = self.insert(transport, tag, reads, watch);
        if let Err(e) = self.watch(epoll, id, fd) {
            self.descs.remove(id);
            return Err(e);
        }
        Ok(id)
    }

    fn insert(&mut self, transport: TransportId, tag: u32, reads: bool, watch: Watch) -> DescId {
        self.generation = self.generation.wrapping_add(1) & GENERATION_MASK;
        let mut desc = Desc {
            transport,
            tag,
            reads,
            generation: self.generation,
            feeders: Vec::new(),
            held: 0,
            paused: false,
            waiting: Vec::new(),
            registered: EpollFlags::empty(),
            last_busy: 0,
            watch,
            watched: false,
        };
        desc.registered = desc.wanted();
        self.descs.insert(desc)
    }

    /// Puts `fd` in the epoll set as descriptor `id`, watched for what the
    /// descriptor is wanted for now.
    pub fn watch(&mut self, epoll: &Epoll, id: DescId, fd: BorrowedFd) -> io::Result<()> {
        let Some(desc) = self.descs.get_mut(id) else { return Ok(()) };
        desc.registered = desc.wanted();
        epoll
            .add(fd, interest(Token::Data(id as u32, desc.generation), desc.registered))
            .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
        desc.watched = true;
        Ok(())
    }

    /// Takes descriptor `id`'s file, `fd`, out of the epoll set, keeping
    /// the descriptor's place (for [`Registry::watch`] with another file).
    pub fn unwatch(&mut self, epoll: &Epoll, id: DescId, fd: BorrowedFd) {
        if let Some(desc) = self.descs.get_mut(id)
            && std::mem::take(&mut desc.watched)
        {
            let _ = epoll.delete(fd);
        }
    }

    /// Stops watching descriptor `id` (still open: its owner closes it).
    pub fn remove(&mut self, epoll: &Epoll, id: DescId, fd: BorrowedFd) {
        if self.descs.try_remove(id).is_some_and(|desc| desc.watched) {
            let _ = epoll.delete(fd);
        }
    }
}

/// Creates a Unix socket of `kind` bound at `path` with exactly `mode`
/// (set before the name exists, whatever the umask) and group `group`, as
/// `ctl` is. A socket file left by a process that no longer serves it is
/// replaced; a live one, or anything else at the path, is an error.
pub fn bind_unix(
    path: &std::path::Path,
    kind: nix::sys::socket::SockType,
    mode: u32,
    group: Option<nix::unistd::Gid>,
) -> io::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{AddressFamily, SockFlag, UnixAddr, bind, connect, socket};
    use nix::sys::stat::{Mode, fchmod, umask};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileTypeExt;
    let os = |e: nix::errno::Errno| io::Error::from_raw_os_error(e as i32);
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let addr = UnixAddr::new(path).map_err(os)?;
    let try_bind = || -> io::Result<std::os::fd::OwnedFd> {
        let fd = socket(AddressFamily::Unix, kind, flags, None).map_err(os)?;
        fchmod(&fd, Mode::from_bits_truncate(mode)).map_err(os)?;
        let saved = umask(Mode::empty());
        let bound = bind(fd.as_raw_fd(), &addr);
        umask(saved);
        bound.map_err(os)?;
        Ok(fd)
    };
    let fd = match try_bind() {
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
            let probe = socket(AddressFamily::Unix, kind, SockFlag::SOCK_CLOEXEC, None).map_err(os)?;
            if connect(probe.as_raw_fd(), &addr).is_ok() {
                return Err(io::Error::new(io::ErrorKind::AddrInUse, "another process serves this socket"));
            }
            if !std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                return Err(e);
            }
            std::fs::remove_file(path)?;
            try_bind()?
        }
        other => other?,
    };
    if let Some(g) = group {
        std::os::unix::fs::chown(path, None, Some(g.as_raw()))?;
    }
    Ok(fd)
}

/// The listening socket of a transport whose every connection is an
/// endpoint (`--stream`, `--vhost-user`): bound with `ctl`'s mode and
/// group, registered under the transport's listener tag, and removed at
/// exit.
pub struct StreamListener {
    listener: std::os::unix::net::UnixListener,
    pub path: std::path::PathBuf,
}

/// Connections accepted per readiness report, so a flood of connections
/// does not starve the frames.
const ACCEPTS_PER_WAKEUP: usize = 16;

impl StreamListener {
    pub fn open(
        path: &std::path::Path,
        mode: u32,
        group: Option<nix::unistd::Gid>,
        (registry, epoll): (&mut Registry, &Epoll),
        (transport, tag): (TransportId, u32),
    ) -> io::Result<StreamListener> {
        use nix::sys::socket::{Backlog, SockType, listen};
        let fd = bind_unix(path, SockType::Stream, mode, group)?;
        let listening = listen(&fd, Backlog::new(128).unwrap_or(Backlog::MAXCONN))
            .map_err(|e| io::Error::from_raw_os_error(e as i32))
            .and_then(|()| registry.add(epoll, std::os::fd::AsFd::as_fd(&fd), transport, tag));
        if let Err(e) = listening {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        Ok(StreamListener { listener: fd.into(), path: path.to_path_buf() })
    }

    /// Hands each waiting connection, made non-blocking, to `each`: a
    /// bounded batch per readiness report.
    pub fn accept(&self, mut each: impl FnMut(std::os::unix::net::UnixStream)) -> io::Result<usize> {
        for _ in 0..ACCEPTS_PER_WAKEUP {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        each(stream);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(0)
    }

    /// What to do about the listener's failure: out of descriptors or
    /// memory it stays readable, so it is not read until the next tick.
    pub fn verdict(failed: Option<&io::Error>) -> Verdict {
        match failed {
            Some(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) => {
                Verdict::Pause
            }
            Some(_) => Verdict::Log,
            None => Verdict::Keep,
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.listener)
    }

    /// Removes the socket file (at exit).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The peer's kernel credentials, and the description `port/print` shows:
/// the listening path, the peer's user and pid.
pub fn describe_peer(path: &std::path::Path, stream: BorrowedFd) -> (Credentials, Vec<u8>, Option<u32>) {
    // The path as the file system has it, UTF-8 or not.
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    use std::os::unix::ffi::OsStrExt;
    let described = |rest: String| [path.as_os_str().as_bytes(), rest.as_bytes()].concat();
    let Ok(cred) = getsockopt(&stream, PeerCredentials) else {
        // Unknown peers get an identity that owns nothing.
        let nobody = Credentials { uid: u32::MAX - 1, gids: Vec::new() };
        return (nobody, described(" user=? pid=?".to_string()), None);
    };
    let mut gids = super::sys::peer_groups(stream).unwrap_or_default();
    gids.push(cred.gid());
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(cred.uid()))
        .ok()
        .flatten()
        .map_or_else(|| cred.uid().to_string(), |u| u.name);
    let description = described(format!(" user={user} pid={}", cred.pid()));
    (Credentials { uid: cred.uid(), gids }, description, Some(cred.uid()))
}

#[cfg(test)]
mod tests {
    use nix::sys::epoll::{EpollCreateFlags, EpollEvent, EpollTimeout};
    use std::os::fd::AsFd;

    use nix::sys::eventfd::{EfdFlags, EventFd};

    use super::*;

    fn ready(epoll: &Epoll) -> Vec<EpollEvent> {
        let mut events = [EpollEvent::empty(); 4];
        let n = epoll.wait(&mut events, EpollTimeout::ZERO).unwrap();
        events[..n].to_vec()
    }

    /// A descriptor registered before its file exists keeps its place and
    /// what it is wanted for; watched, it reports as wanted; unwatched, it
    /// no longer reports, and another file can take its place.
    #[test]
    fn a_descriptor_whose_file_comes_later() {
        let epoll = Epoll::new(EpollCreateFlags::empty()).unwrap();
        let mut registry = Registry::default();
        let room = Watch { room: EpollFlags::EPOLLIN, ..Watch::LEVEL };
        let id = registry.add_unwatched(0, 7, false, room);
        assert!(!registry.descs[id].watched);
        registry.descs[id].waiting.push(EndpointKey(1));
        let signalled = EventFd::from_value_and_flags(1, EfdFlags::EFD_NONBLOCK).unwrap();
        registry.watch(&epoll, id, signalled.as_fd()).unwrap();
        // An eventfd is always writable: waiting for room means readable.
        assert_eq!(registry.descs[id].registered, EpollFlags::EPOLLIN);
        assert_eq!(ready(&epoll).len(), 1);
        registry.unwatch(&epoll, id, signalled.as_fd());
        assert!(ready(&epoll).is_empty());
        let other = EventFd::from_value_and_flags(1, EfdFlags::EFD_NONBLOCK).unwrap();
        registry.watch(&epoll, id, other.as_fd()).unwrap();
        assert_eq!(ready(&epoll).len(), 1);
        registry.remove(&epoll, id, other.as_fd());
        assert!(ready(&epoll).is_empty());
    }

    /// An edge-triggered descriptor reports a change once, however much is
    /// left unread.
    #[test]
    fn an_edge_triggered_descriptor_reports_once() {
        let epoll = Epoll::new(EpollCreateFlags::empty()).unwrap();
        let mut registry = Registry::default();
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let id = registry.add_edge(&epoll, b.as_fd(), 0, 1).unwrap();
        assert_eq!(registry.descs[id].wanted(), EpollFlags::EPOLLIN | EpollFlags::EPOLLET);
        std::io::Write::write_all(&mut &a, b"half").unwrap();
        assert_eq!(ready(&epoll).len(), 1);
        assert!(ready(&epoll).is_empty());
        std::io::Write::write_all(&mut &a, b" more").unwrap();
        assert_eq!(ready(&epoll).len(), 1);
    }
}
