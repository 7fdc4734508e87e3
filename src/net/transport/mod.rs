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

pub mod tap;
pub mod vde;
pub mod vxlan;
mod vxlan_spec;

use std::io;
use std::os::fd::BorrowedFd;

use nix::sys::epoll::{Epoll, EpollFlags};
use slab::Slab;

use super::sys::RecvBatch;
use super::{Token, interest};
use crate::engine::EndpointKey;

/// Receive buffer size: larger than any frame the switch carries, so an
/// oversized datagram shows as too long instead of being cut to size.
pub const BUF: usize = 2048;

/// The batch every transport receives into.
pub type Batch = RecvBatch<BUF>;

/// Index of a transport in the data plane.
pub type TransportId = usize;

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
    /// The endpoint can no longer move frames: detach and close it, logging
    /// `Closing {what} {description}: {reason}`.
    Close { endpoint: EndpointKey, what: &'static str, reason: String },
}

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
}

/// A registered descriptor: which transport reads it, under which tag,
/// and the flow-control facts that decide what it is watched for.
pub struct Desc {
    pub transport: TransportId,
    pub tag: u32,
    /// Distinguishes this registration from earlier ones in the same slot,
    /// so an event queued for a closed descriptor is not taken for a new
    /// one within the same wake-up.
    pub generation: u32,
    /// Endpoints whose frames arrive on this descriptor.
    pub feeds: u32,
    /// How many of those are held back by a full destination.
    pub held: u32,
    /// Endpoints with frames queued that wait for this descriptor to be
    /// writable.
    pub waiting: Vec<EndpointKey>,
    pub registered: EpollFlags,
    /// The wake-up in which frames last came from this descriptor.
    pub last_busy: u64,
}

impl Desc {
    /// A descriptor is read unless every endpoint it feeds is held back.
    /// On a shared socket, frames of a held endpoint keep coming while its
    /// neighbours are read: not reading would stall them all for one full
    /// destination, and a datagram socket has no per-sender pushback to
    /// give. Those frames take the ordinary path, so at a destination
    /// still full they queue up to its limit and the rest are counted as
    /// `socket-full` on it, as for a congested destination. A descriptor
    /// that feeds nobody yet (a listener, a socket before its first
    /// sender) is always read.
    pub fn wanted(&self) -> EpollFlags {
        let mut flags = EpollFlags::empty();
        if self.feeds == 0 || self.held < self.feeds {
            flags |= EpollFlags::EPOLLIN;
        }
        if !self.waiting.is_empty() {
            flags |= EpollFlags::EPOLLOUT;
        }
        flags
    }

    pub fn all_held(&self) -> bool {
        self.feeds > 0 && self.held >= self.feeds
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
        self.generation = self.generation.wrapping_add(1) & GENERATION_MASK;
        let generation = self.generation;
        let entry = self.descs.vacant_entry();
        let id = entry.key();
        let flags = EpollFlags::EPOLLIN;
        epoll
            .add(fd, interest(Token::Data(id as u32, generation), flags))
            .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
        entry.insert(Desc {
            transport,
            tag,
            generation,
            feeds: 0,
            held: 0,
            waiting: Vec::new(),
            registered: flags,
            last_busy: 0,
        });
        Ok(id)
    }

    /// Stops watching descriptor `id` (still open: its owner closes it).
    pub fn remove(&mut self, epoll: &Epoll, id: DescId, fd: BorrowedFd) {
        if self.descs.try_remove(id).is_some() {
            let _ = epoll.delete(fd);
        }
    }
}
