//! The data plane: read a batch of frames from one endpoint, let the engine
//! decide each, then send every destination its share in one batched call.
//!
//! A destination whose socket is full does not lose the frames at once:
//! they wait in a short queue while the sources feeding it stop being read,
//! so the kernel pushes back on the senders instead of the switch dropping
//! (a live but momentarily slower receiver paces its senders, losslessly).
//! A destination that stays full past [`STALL_LIMIT`] is marked congested:
//! from then until it drains and a tick passes, frames beyond its queue are
//! dropped and counted without holding anyone back, so a client that never
//! reads costs the others one short stall at most.
//!
//! Endpoints differ only in how bytes move ([`LinkKind`]): a client's
//! datagram socket takes batched calls, a tap interface one frame per read
//! or write. Everything else is one code path.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollFlags};

use super::sys::{self, BATCH, RecvBatch};
use super::{Token, interest, log};
use crate::engine::{Delivery, DropReason, Edit, EndpointKey, Outgoing, Switch};
use crate::wire::{MAX_FRAME, VLAN_TAG_LEN, pop_tag, push_tag};

/// Least receive buffer size: larger than any frame the switch carries
/// (with `--mtu` the buffers grow past the longest frame), so an oversized
/// datagram shows as too long instead of being cut to size.
const BUF: usize = 2048;
/// Batches read from one endpoint before others get their turn.
const ROUNDS_PER_WAKEUP: usize = 8;
/// Frames held for a full destination before further ones are dropped.
const QUEUE_LIMIT: usize = BATCH;
/// How long a full destination may hold its senders back.
pub const STALL_LIMIT: Duration = Duration::from_millis(10);

/// What carries an endpoint's frames.
pub enum LinkKind {
    /// A client's connected datagram socket, bound at `path` (its `NNN.M`
    /// file) and kept alive by the control connection in slot `conn`.
    Socket { path: PathBuf, conn: usize },
    /// A tap interface (`-t`): no file and no control connection; it lives
    /// until exit or `port/epclose`, and closing it removes the interface.
    Tap,
}

/// One attached endpoint's descriptor and its flow-control state.
pub struct Link {
    fd: OwnedFd,
    kind: LinkKind,
    /// Send errors other than a full buffer are logged once per endpoint.
    send_error_logged: bool,
    /// Frames waiting for room in this endpoint's socket.
    queue: VecDeque<Vec<u8>>,
    /// Since when the queue has been waiting.
    stalled_since: Option<Instant>,
    /// Stayed full too long: its senders are no longer held back.
    congested: bool,
    /// Sources not being read until this endpoint drains.
    waiters: Vec<EndpointKey>,
    /// How many destinations hold this endpoint back as a source.
    held_by: u32,
    /// The epoll interest currently registered.
    registered: EpollFlags,
    /// The wake-up in which frames last came from this endpoint.
    last_busy: u64,
}

impl Link {
    /// The `NNN.M` file to unlink when the endpoint goes.
    pub fn path(&self) -> Option<&PathBuf> {
        match &self.kind {
            LinkKind::Socket { path, .. } => Some(path),
            LinkKind::Tap => None,
        }
    }

    fn recv_batch(&self, rx: &mut RecvBatch, max: usize) -> io::Result<usize> {
        match self.kind {
            LinkKind::Socket { .. } => rx.recv(self.fd.as_fd(), max),
            LinkKind::Tap => rx.read(self.fd.as_fd(), max),
        }
    }

    fn send_batch<'a, I>(&self, frames: I) -> (usize, Option<io::Error>)
    where
        I: IntoIterator<Item = &'a [u8]>,
        I::IntoIter: ExactSizeIterator,
    {
        match self.kind {
            LinkKind::Socket { .. } => sys::send_batch(self.fd.as_fd(), frames),
            LinkKind::Tap => sys::write_batch(self.fd.as_fd(), frames),
        }
    }

    fn wanted(&self) -> EpollFlags {
        let mut flags = EpollFlags::empty();
        if self.held_by == 0 {
            flags |= EpollFlags::EPOLLIN;
        }
        if !self.queue.is_empty() {
            flags |= EpollFlags::EPOLLOUT;
        }
        flags
    }
}

/// One frame of the current batch, queued for one endpoint.
#[derive(Clone, Copy)]
struct Queued {
    endpoint: EndpointKey,
    frame: u8,
    edit: Edit,
}

pub struct DataPlane {
    links: Vec<Option<Link>>,
    rx: RecvBatch,
    /// The retagged copy of each frame, when some destination needs one:
    /// `BATCH` slots of `edited_size` bytes.
    edited: Vec<u8>,
    edited_size: usize,
    edited_len: [usize; BATCH],
    decisions: Vec<Delivery>,
    /// The batch's deliveries in arrival order, then grouped by destination.
    arrivals: Vec<Queued>,
    queue: Vec<Queued>,
    /// Per destination of the batch being grouped: its key and where its
    /// next delivery goes in `queue`.
    groups: Vec<(EndpointKey, usize)>,
    /// For each endpoint key, 1 + its index in `groups` while a batch is
    /// being grouped, else 0.
    group_of: Vec<u32>,
    /// Buffers of drained queue entries, reused for the next ones.
    spare: Vec<Vec<u8>>,
    /// Destinations holding frames, and those marked congested: kept apart
    /// so timers cost O(stalled endpoints), not O(endpoints).
    stalled: Vec<EndpointKey>,
    congested: Vec<EndpointKey>,
    /// Counts the loop's wake-ups; see [`DataPlane::pump`].
    wakeup: u64,
}

impl Default for DataPlane {
    fn default() -> Self {
        DataPlane::new(MAX_FRAME)
    }
}

impl DataPlane {
    /// A data plane for frames of up to `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        let edited_size = max_frame + VLAN_TAG_LEN;
        DataPlane {
            links: Vec::new(),
            rx: RecvBatch::new(BUF.max(max_frame + 1)),
            edited: vec![0; BATCH * edited_size],
            edited_size,
            edited_len: [0; BATCH],
            decisions: Vec::with_capacity(BATCH * 4),
            arrivals: Vec::with_capacity(BATCH * 4),
            queue: Vec::with_capacity(BATCH * 4),
            groups: Vec::new(),
            group_of: Vec::new(),
            spare: Vec::new(),
            stalled: Vec::new(),
            congested: Vec::new(),
            wakeup: 0,
        }
    }

    fn link(&self, key: EndpointKey) -> Option<&Link> {
        self.links.get(key.0 as usize)?.as_ref()
    }

    fn link_mut(&mut self, key: EndpointKey) -> Option<&mut Link> {
        self.links.get_mut(key.0 as usize)?.as_mut()
    }

    /// Starts moving frames for a new endpoint.
    pub fn add(&mut self, epoll: &Epoll, key: EndpointKey, fd: OwnedFd, kind: LinkKind) -> io::Result<()> {
        let flags = EpollFlags::EPOLLIN;
        epoll.add(&fd, interest(Token::Data(key.0), flags)).map_err(|e| io::Error::from_raw_os_error(e as i32))?;
        let index = key.0 as usize;
        if self.links.len() <= index {
            self.links.resize_with(index + 1, || None);
        }
        self.links[index] = Some(Link {
            fd,
            kind,
            send_error_logged: false,
            queue: VecDeque::new(),
            stalled_since: None,
            congested: false,
            waiters: Vec::new(),
            held_by: 0,
            registered: flags,
            last_busy: 0,
        });
        Ok(())
    }

    /// Forgets an endpoint, releasing the sources it held back and its own
    /// place in other endpoints' waiting lists.
    pub fn remove(&mut self, epoll: &Epoll, key: EndpointKey) -> Option<Link> {
        let mut link = self.links.get_mut(key.0 as usize)?.take()?;
        let _ = epoll.delete(&link.fd);
        self.release(epoll, std::mem::take(&mut link.waiters));
        // Only stalled destinations have waiters.
        for &dest in &self.stalled {
            if let Some(other) = self.links.get_mut(dest.0 as usize).and_then(Option::as_mut) {
                other.waiters.retain(|&w| w != key);
            }
        }
        self.stalled.retain(|&k| k != key);
        self.congested.retain(|&k| k != key);
        Some(link)
    }

    /// The control connection of a socket endpoint.
    pub fn conn_of(&self, key: EndpointKey) -> Option<usize> {
        match self.link(key)?.kind {
            LinkKind::Socket { conn, .. } => Some(conn),
            LinkKind::Tap => None,
        }
    }

    pub fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.links.iter().flatten().filter_map(Link::path)
    }

    fn sync_interest(&mut self, epoll: &Epoll, key: EndpointKey) {
        let Some(link) = self.link_mut(key) else { return };
        let wanted = link.wanted();
        if wanted != link.registered {
            link.registered = wanted;
            let _ = epoll.modify(&link.fd, &mut interest(Token::Data(key.0), wanted));
        }
    }

    /// Lets held-back sources be read again.
    fn release(&mut self, epoll: &Epoll, waiters: Vec<EndpointKey>) {
        for source in waiters {
            if let Some(s) = self.link_mut(source) {
                s.held_by = s.held_by.saturating_sub(1);
            }
            self.sync_interest(epoll, source);
        }
    }

    /// Handles readiness of `key`'s descriptor.
    pub fn ready(&mut self, epoll: &Epoll, key: EndpointKey, flags: EpollFlags, switch: &mut Switch, now: u64) {
        if flags.contains(EpollFlags::EPOLLERR)
            && let Some(link) = self.link(key)
        {
            match link.kind {
                // A pending socket error keeps a level-triggered wait firing
                // even while the socket is not being read: consume it.
                LinkKind::Socket { .. } => {
                    let _ = nix::sys::socket::getsockopt(&link.fd, nix::sys::socket::sockopt::SocketError);
                }
                // A tap reports an error only once its interface has been
                // deleted (`ip link del`), for ever: it cannot be consumed.
                LinkKind::Tap => return self.close_tap(epoll, key, switch, "the interface was removed"),
            }
        }
        if flags.contains(EpollFlags::EPOLLOUT) {
            self.drain_queue(epoll, key, switch);
        }
        if flags.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLERR)
            && let Err(e) = self.pump(epoll, key, switch, now)
        {
            match self.link(key).map(|l| &l.kind) {
                // A tap that cannot be read will not recover.
                Some(LinkKind::Tap) => self.close_tap(epoll, key, switch, &log::error_text(&e)),
                _ if e.raw_os_error() == Some(libc::ECONNREFUSED) => {}
                _ => log::log(&format!("recv from endpoint: {e}")),
            }
        }
    }

    /// Detaches a tap endpoint that can no longer move frames and closes it.
    fn close_tap(&mut self, epoll: &Epoll, key: EndpointKey, switch: &mut Switch, reason: &str) {
        if let Some(ep) = switch.detach(key) {
            log::log(&format!("Closing tap interface {}: {reason}", String::from_utf8_lossy(&ep.description)));
        }
        // Dropping the link closes the descriptor.
        drop(self.remove(epoll, key));
    }

    /// Marks the start of a new round of readiness events.
    pub fn wake_up(&mut self) {
        self.wakeup += 1;
    }

    /// Moves the frames waiting on `from`'s socket.
    ///
    /// An endpoint that was quiet in the previous wake-up gets a receive of
    /// one frame: at low rates a batched receive's second attempt, which
    /// finds nothing, costs as much as the frame itself. If more frames were
    /// waiting, the level-triggered wait reports the socket again at once,
    /// and as it is busy now the rest come in a batch.
    fn pump(&mut self, epoll: &Epoll, from: EndpointKey, switch: &mut Switch, now: u64) -> io::Result<()> {
        for _ in 0..ROUNDS_PER_WAKEUP {
            let wakeup = self.wakeup;
            let Some(link) = self.links.get_mut(from.0 as usize).and_then(Option::as_mut) else { return Ok(()) };
            if link.held_by > 0 {
                return Ok(());
            }
            let max = if link.last_busy + 1 >= wakeup { BATCH } else { 1 };
            let n = link.recv_batch(&mut self.rx, max)?;
            if n == 0 {
                return Ok(());
            }
            link.last_busy = wakeup;
            self.decide(from, n, switch, now);
            self.send(epoll, from, switch);
            if n < BATCH {
                return Ok(());
            }
        }
        Ok(())
    }

    fn decide(&mut self, from: EndpointKey, n: usize, switch: &mut Switch, now: u64) {
        self.arrivals.clear();
        for i in 0..n {
            self.decisions.clear();
            let frame = self.rx.frame(i);
            if switch.ingress(from, frame, now, &mut self.decisions).is_err() {
                continue;
            }
            // The engine asks for at most one kind of rewrite per frame:
            // make that copy once, whatever the number of destinations.
            if let Some(edit) = self.decisions.iter().map(|d| d.edit).find(|e| *e != Edit::AsIs) {
                let slot = &mut self.edited[i * self.edited_size..(i + 1) * self.edited_size];
                self.edited_len[i] = match edit {
                    Edit::Tag(tci) => push_tag(frame, tci, slot),
                    _ => pop_tag(frame, slot),
                };
            }
            let queued = self.decisions.iter().map(|d| Queued { endpoint: d.endpoint, frame: i as u8, edit: d.edit });
            self.arrivals.extend(queued);
        }
        self.group_by_destination();
    }

    /// Moves the batch's deliveries into `queue`, grouped by destination,
    /// each group in arrival order. A counting sort, linear in deliveries:
    /// comparison sorting a flood (64 frames times every port) was almost
    /// half of the switch's instructions per delivered frame.
    fn group_by_destination(&mut self) {
        self.groups.clear();
        for q in &self.arrivals {
            let i = q.endpoint.0 as usize;
            if i >= self.group_of.len() {
                self.group_of.resize(i + 1, 0);
            }
            match self.group_of[i] {
                0 => {
                    self.groups.push((q.endpoint, 1));
                    self.group_of[i] = self.groups.len() as u32;
                }
                g => self.groups[g as usize - 1].1 += 1,
            }
        }
        if self.groups.len() <= 1 {
            std::mem::swap(&mut self.queue, &mut self.arrivals);
        } else {
            let mut start = 0;
            for (_, next) in &mut self.groups {
                (*next, start) = (start, start + *next);
            }
            self.queue.clear();
            self.queue.extend_from_slice(&self.arrivals);
            for q in &self.arrivals {
                let next = &mut self.groups[self.group_of[q.endpoint.0 as usize] as usize - 1].1;
                self.queue[*next] = *q;
                *next += 1;
            }
        }
        for (dest, _) in &self.groups {
            self.group_of[dest.0 as usize] = 0;
        }
    }

    fn frame(&self, q: &Queued) -> &[u8] {
        let i = q.frame as usize;
        match q.edit {
            Edit::AsIs => self.rx.frame(i),
            Edit::Tag(_) | Edit::Untag => &self.edited[i * self.edited_size..][..self.edited_len[i]],
        }
    }

    fn send(&mut self, epoll: &Epoll, source: EndpointKey, switch: &mut Switch) {
        let queue = std::mem::take(&mut self.queue);
        for run in queue.chunk_by(|a, b| a.endpoint == b.endpoint) {
            let dest = run[0].endpoint;
            let Some(link) = self.link(dest) else { continue };
            // Frames already waiting go first: keep the order.
            let sent = if link.queue.is_empty() {
                let (sent, error) = link.send_batch(run.iter().map(|q| self.frame(q)));
                match error {
                    None => continue,
                    Some(e) if e.kind() == io::ErrorKind::WouldBlock => sent,
                    Some(e) => {
                        self.send_failed(dest, &e, (run.len() - sent) as u64, switch);
                        continue;
                    }
                }
            } else {
                0
            };
            self.hold(epoll, source, dest, &run[sent..], switch);
        }
        self.queue = queue;
    }

    /// Queues frames a full destination could not take, and holds back the
    /// source unless the destination is congested.
    fn hold(&mut self, epoll: &Epoll, source: EndpointKey, dest: EndpointKey, run: &[Queued], switch: &mut Switch) {
        let room = self.link(dest).map_or(0, |l| QUEUE_LIMIT.saturating_sub(l.queue.len()));
        let (kept, dropped) = run.split_at(run.len().min(room));
        for q in kept {
            let mut copy = self.spare.pop().unwrap_or_default();
            copy.clear();
            copy.extend_from_slice(self.frame(q));
            self.link_mut(dest).expect("checked").queue.push_back(copy);
        }
        switch.count_egress_drops(dest, DropReason::SocketFull, dropped.len() as u64);
        let link = self.link_mut(dest).expect("checked");
        if link.stalled_since.is_none() && !link.congested {
            link.stalled_since = Some(Instant::now());
            self.stalled.push(dest);
        }
        let link = self.link_mut(dest).expect("checked");
        let hold = !link.congested && source != dest && !link.waiters.contains(&source);
        if hold {
            link.waiters.push(source);
            if let Some(s) = self.link_mut(source) {
                s.held_by += 1;
            }
            self.sync_interest(epoll, source);
        }
        self.sync_interest(epoll, dest);
    }

    fn send_failed(&mut self, dest: EndpointKey, e: &io::Error, frames: u64, switch: &mut Switch) {
        if let Some(link) = self.link_mut(dest)
            && !link.send_error_logged
        {
            link.send_error_logged = true;
            let port = switch.endpoint(dest).map_or(0, |ep| ep.port);
            // vde_switch's names for the two ways of sending.
            let call = match link.kind {
                LinkKind::Socket { .. } => "send_sockaddr",
                LinkKind::Tap => "send_tap",
            };
            log::log(&format!("{call} port {port}: {}", log::error_text(e)));
        }
        switch.count_egress_drops(dest, DropReason::SendFailed, frames);
    }

    /// Writes as much of `key`'s queue as its socket takes; once empty, the
    /// sources it held back run again.
    fn drain_queue(&mut self, epoll: &Epoll, key: EndpointKey, switch: &mut Switch) {
        let Some(link) = self.links.get_mut(key.0 as usize).and_then(Option::as_mut) else { return };
        while !link.queue.is_empty() {
            let (sent, error) = link.send_batch(link.queue.iter().map(Vec::as_slice));
            self.spare.extend(link.queue.drain(..sent));
            match error {
                None => {}
                Some(e) if e.kind() == io::ErrorKind::WouldBlock => return self.sync_interest(epoll, key),
                Some(e) => {
                    let lost = link.queue.len() as u64;
                    link.queue.clear();
                    self.send_failed(key, &e, lost, switch);
                    break;
                }
            }
        }
        let link = self.link_mut(key).expect("still attached");
        link.stalled_since = None;
        let waiters = std::mem::take(&mut link.waiters);
        self.stalled.retain(|&k| k != key);
        self.release(epoll, waiters);
        self.sync_interest(epoll, key);
    }

    /// Sends the frames the switch itself originated (BPDUs). They hold no
    /// source back: a full destination queues them behind its waiting
    /// frames, or drops them once its queue is full.
    pub fn send_originated(&mut self, epoll: &Epoll, switch: &mut Switch) {
        let frames = switch.take_outbox();
        for Outgoing { endpoint, frame } in frames {
            let Some(link) = self.link_mut(endpoint) else { continue };
            if link.queue.is_empty() {
                match link.send_batch([frame.as_slice()]).1 {
                    None => continue,
                    Some(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Some(e) => {
                        self.send_failed(endpoint, &e, 1, switch);
                        continue;
                    }
                }
            }
            let link = self.link_mut(endpoint).expect("checked above");
            if link.queue.len() < QUEUE_LIMIT {
                link.queue.push_back(frame);
                self.sync_interest(epoll, endpoint);
            } else {
                switch.count_egress_drops(endpoint, DropReason::SocketFull, 1);
            }
        }
    }

    /// The earliest moment a stalled destination must give up holding its
    /// sources back.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.stalled.iter().filter_map(|&k| self.link(k)?.stalled_since).min().map(|t| t + STALL_LIMIT)
    }

    /// Marks destinations stalled past the limit congested and releases
    /// their sources.
    pub fn expire_stalls(&mut self, epoll: &Epoll, now: Instant) {
        let expired: Vec<EndpointKey> = self
            .stalled
            .iter()
            .copied()
            .filter(|&k| self.link(k).and_then(|l| l.stalled_since).is_some_and(|t| t + STALL_LIMIT <= now))
            .collect();
        for key in expired {
            self.stalled.retain(|&k| k != key);
            self.congested.push(key);
            let link = self.link_mut(key).expect("listed as stalled");
            link.congested = true;
            link.stalled_since = None;
            let waiters = std::mem::take(&mut link.waiters);
            self.release(epoll, waiters);
            self.sync_interest(epoll, key);
        }
    }

    /// Once a second: congested destinations that have drained may hold
    /// their sources back again.
    pub fn tick(&mut self, epoll: &Epoll) {
        let congested = std::mem::take(&mut self.congested);
        for key in congested {
            let Some(link) = self.link_mut(key) else { continue };
            if link.queue.is_empty() {
                link.congested = false;
                self.sync_interest(epoll, key);
            } else {
                self.congested.push(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(endpoint: u32, frame: u8) -> Queued {
        Queued { endpoint: EndpointKey(endpoint), frame, edit: Edit::AsIs }
    }

    fn grouped(arrivals: &[(u32, u8)]) -> Vec<(u32, u8)> {
        let mut plane = DataPlane::default();
        plane.arrivals.extend(arrivals.iter().map(|&(e, f)| delivery(e, f)));
        plane.group_by_destination();
        assert!(plane.group_of.iter().all(|&g| g == 0), "scratch left dirty");
        plane.queue.iter().map(|q| (q.endpoint.0, q.frame)).collect()
    }

    #[test]
    fn a_flood_is_regrouped_by_destination_keeping_frame_order() {
        let flood: Vec<(u32, u8)> = (0..3).flat_map(|f| [(7, f), (2, f), (40, f)]).collect();
        assert_eq!(grouped(&flood), [(7, 0), (7, 1), (7, 2), (2, 0), (2, 1), (2, 2), (40, 0), (40, 1), (40, 2)]);
    }

    #[test]
    fn mixed_destinations_stay_in_arrival_order_within_each() {
        let mixed = [(3, 0), (1, 1), (3, 2), (3, 3), (1, 4), (9, 5)];
        assert_eq!(grouped(&mixed), [(3, 0), (3, 2), (3, 3), (1, 1), (1, 4), (9, 5)]);
        assert_eq!(grouped(&[(5, 0), (5, 1)]), [(5, 0), (5, 1)]);
        assert_eq!(grouped(&[]), []);
    }

    #[test]
    fn consecutive_batches_do_not_mix() {
        let mut plane = DataPlane::default();
        for batch in [[(1u32, 0u8), (2, 0), (1, 1)], [(2, 0), (3, 1), (2, 2)]] {
            plane.arrivals.clear();
            plane.arrivals.extend(batch.iter().map(|&(e, f)| delivery(e, f)));
            plane.group_by_destination();
            let keys: Vec<u32> = plane.queue.iter().map(|q| q.endpoint.0).collect();
            assert_eq!(keys.len(), 3);
            assert_eq!(keys.chunk_by(|a, b| a == b).count(), 2, "{keys:?}");
        }
    }
}
