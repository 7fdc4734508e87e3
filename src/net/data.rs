//! The data plane: read a batch of frames from one descriptor, let the
//! engine decide each, then send every destination its share in one
//! batched call.
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
//! How bytes move is each transport's business ([`super::transport`]);
//! flow control, grouping by destination, counters and drop reasons are
//! here, once for all of them.
//!
//! # Flow-control states of a destination `D`
//!
//! ```text
//!              a send would block: queue the rest,
//!              hold their sources (S.held_by += 1)
//!   ┌──────┐ ───────────────────────────────────▶ ┌─────────┐
//!   │ Idle │ ◀─────────────────────────────────── │ Stalled │
//!   └──────┘   queue drained: release the sources └─────────┘
//!    │  ▲  ▲                                        ▲     │ STALL_LIMIT passed:
//!    │  │  │ queue drained, then a tick             │     │ release the sources
//!    │  │  └──────────────────────── ┌───────────┐  │     │
//!    │  │                            │ Congested │ ◀┼─────┘ frames beyond the
//!    │  │ drained                    └───────────┘  │       queue: socket-full
//!    ▼  │                                           │
//!   ┌────────┐ forwarded frames meet the queue: hold│
//!   │ Queued │ ─────────────────────────────────────┘
//!   └────────┘ a frame the switch originated (BPDU)
//!              waits; nobody is held
//! ```
//!
//! What holds in every state, and is checked in debug builds after every
//! change ([`DataPlane::check_invariants`]):
//! - `D` is in the `stalled` list exactly when `stalled_since` is set, and
//!   in the `congested` list exactly when `congested` is set; never both,
//!   never twice.
//! - Only a stalled `D` has waiters; they are distinct, live, and not `D`.
//! - A source's `held_by` is the number of destinations listing it as a
//!   waiter.
//! - A queue holds at most [`QUEUE_LIMIT`] frames; a partial-send offset
//!   is zero when the queue is empty.
//! - Each descriptor lists the endpoints it feeds and counts how many of
//!   those are held, and lists the endpoints whose queue waits for it to
//!   be writable; it is read unless all of those it feeds that sent lately
//!   are held (see `transport::Desc::wanted`).

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollFlags};

use super::capture::{Captures, Direction};
use super::sys::BATCH;
use super::transport::tap::Tap;
use super::transport::vde::Vde;
use super::transport::vxlan::Vxlan;
use super::transport::{
    Arrival, Batch, DescId, PENDING, Registry, Sent, TAP, Transport, TransportId, VDE, VXLAN, Verdict, buffer_size,
};
use super::{Token, interest, log};
use crate::engine::{Attach, Delivery, DropReason, Edit, EndpointKey, Outgoing, PortRequest, Switch};
use crate::wire::{MAX_FRAME, VLAN_TAG_LEN, pop_tag, push_tag};

/// Batches read from one descriptor before others get their turn.
const ROUNDS_PER_WAKEUP: usize = 8;
/// Frames held for a full destination before further ones are dropped.
const QUEUE_LIMIT: usize = BATCH;
/// Buffers of sent queue entries kept for reuse: enough for two full
/// queues; more would only be memory a past burst left behind.
const SPARE_LIMIT: usize = 2 * QUEUE_LIMIT;
/// How long a full destination may hold its senders back.
pub const STALL_LIMIT: Duration = Duration::from_millis(10);

/// One attached endpoint: where its frames move and its flow-control state.
struct Link {
    transport: TransportId,
    /// The endpoint's number within its transport.
    local: u32,
    /// The descriptor its frames arrive on, and the one whose writability
    /// lets its queue drain.
    input: DescId,
    output: DescId,
    /// Send errors other than a full buffer are logged once per endpoint.
    send_error_logged: bool,
    /// Frames waiting for room in this endpoint's socket.
    queue: VecDeque<Vec<u8>>,
    /// Progress of a partial send into the queue's first frame.
    offset: usize,
    /// Since when the queue has been waiting.
    stalled_since: Option<Instant>,
    /// Stayed full too long: its senders are no longer held back.
    congested: bool,
    /// Sources not being read until this endpoint drains.
    waiters: Vec<EndpointKey>,
    /// How many destinations hold this endpoint back as a source.
    held_by: u32,
    /// The wake-up in which a frame last came from this endpoint over a
    /// shared descriptor.
    last_heard: u64,
    /// Whether the input descriptor counts this endpoint as held, and the
    /// output descriptor lists it as waiting: what was last told to them.
    counted_held: bool,
    counted_waiting: bool,
}

/// One frame of the current batch, queued for one endpoint.
#[derive(Clone, Copy)]
struct Queued {
    endpoint: EndpointKey,
    frame: u8,
    edit: Edit,
}

/// Lines a second about endpoints refused, closed or failing to receive.
const PEER_LINES_PER_SECOND: u32 = 10;

pub struct DataPlane {
    transports: Vec<Box<dyn Transport>>,
    registry: Registry,
    links: Vec<Option<Link>>,
    rx: Batch,
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
    /// Log lines that peers can cause (refused or closed endpoints, receive
    /// errors): any local user who may connect could otherwise flood the log.
    peer_lines: log::RateLimited,
    /// Descriptors not read until the next tick (see `Verdict::Pause`).
    paused: Vec<(DescId, u32)>,
    /// Descriptors with frames read but not yet moved (a stream's
    /// reassembly buffer), to pump again without waiting for readiness.
    backlog: Vec<DescId>,
    /// Flow-control state changed since the invariants were last checked.
    #[cfg(debug_assertions)]
    changed: bool,
    capture: Captures,
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
            transports: vec![Box::new(Vde::new(VDE)), Box::new(Tap::new(TAP)), Box::new(Vxlan::new(VXLAN))],
            registry: Registry::default(),
            links: Vec::new(),
            rx: Batch::new(buffer_size(max_frame)),
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
            peer_lines: log::RateLimited::new(PEER_LINES_PER_SECOND),
            paused: Vec::new(),
            backlog: Vec::new(),
            #[cfg(debug_assertions)]
            changed: false,
            capture: Captures::default(),
        }
    }
}

/// The bytes of a queued delivery: the received frame, or its retagged
/// copy (`edited` holds `BATCH` slots of `edited.len() / BATCH` bytes).
fn frame_of<'a>(rx: &'a Batch, edited: &'a [u8], edited_len: &[usize; BATCH], q: &Queued) -> &'a [u8] {
    let i = q.frame as usize;
    match q.edit {
        Edit::AsIs => rx.frame(i),
        Edit::Tag(_) | Edit::Untag => &edited[i * (edited.len() / BATCH)..][..edited_len[i]],
    }
}

impl DataPlane {
    fn link(&self, key: EndpointKey) -> Option<&Link> {
        self.links.get(key.0 as usize)?.as_ref()
    }

    fn link_mut(&mut self, key: EndpointKey) -> Option<&mut Link> {
        self.links.get_mut(key.0 as usize)?.as_mut()
    }

    /// Adds a transport (a listener of a kind that is not always there),
    /// made knowing its id and with the registry for its descriptors.
    pub fn add_transport(
        &mut self,
        make: impl FnOnce(TransportId, &mut Registry) -> io::Result<Box<dyn Transport>>,
    ) -> io::Result<TransportId> {
        let transport = make(self.transports.len(), &mut self.registry)?;
        self.transports.push(transport);
        Ok(self.transports.len() - 1)
    }

    /// Runs `f` on transport `id` as its concrete kind `T`, with the
    /// registry to add or remove descriptors.
    pub fn with_transport<T: Transport + 'static, R>(
        &mut self,
        id: TransportId,
        f: impl FnOnce(&mut T, &mut Registry) -> R,
    ) -> Option<R> {
        let any: &mut dyn std::any::Any = self.transports.get_mut(id)?.as_mut();
        Some(f(any.downcast_mut::<T>()?, &mut self.registry))
    }

    /// Starts moving frames for endpoint `key`, number `local` of
    /// `transport`, arriving on descriptor `input`; its queue drains when
    /// `output` is writable.
    pub fn attach(&mut self, key: EndpointKey, transport: TransportId, local: u32, input: DescId, output: DescId) {
        let index = key.0 as usize;
        if self.links.len() <= index {
            self.links.resize_with(index + 1, || None);
        }
        if let Some(desc) = self.registry.descs.get_mut(input) {
            desc.feeders.push(key);
        }
        self.links[index] = Some(Link {
            transport,
            local,
            input,
            output,
            send_error_logged: false,
            queue: VecDeque::new(),
            offset: 0,
            stalled_since: None,
            congested: false,
            waiters: Vec::new(),
            held_by: 0,
            last_heard: 0,
            counted_held: false,
            counted_waiting: false,
        });
        self.changed();
    }

    /// Forgets an endpoint and closes it in its transport, releasing the
    /// sources it held back and its own place in other endpoints' waiting
    /// lists.
    pub fn remove(&mut self, epoll: &Epoll, key: EndpointKey) {
        let Some(mut link) = self.links.get_mut(key.0 as usize).and_then(Option::take) else { return };
        self.release(epoll, std::mem::take(&mut link.waiters));
        // Only stalled destinations have waiters.
        for &dest in &self.stalled {
            if let Some(other) = self.links.get_mut(dest.0 as usize).and_then(Option::as_mut) {
                other.waiters.retain(|&w| w != key);
            }
        }
        self.stalled.retain(|&k| k != key);
        self.congested.retain(|&k| k != key);
        if let Some(desc) = self.registry.descs.get_mut(link.input) {
            desc.feeders.retain(|&k| k != key);
            desc.held -= u32::from(link.counted_held);
        }
        if let Some(desc) = self.registry.descs.get_mut(link.output) {
            desc.waiting.retain(|&k| k != key);
        }
        if let Some(t) = self.transports.get_mut(link.transport) {
            t.close(link.local, &mut self.registry, epoll);
        }
        for desc in [link.input, link.output] {
            self.sync_desc(epoll, desc);
        }
        self.spare_buffers(link.queue.drain(..));
        self.changed();
    }

    /// Closes every endpoint and listening socket (at exit).
    pub fn remove_all(&mut self, epoll: &Epoll) {
        for key in 0..self.links.len() {
            self.remove(epoll, EndpointKey(key as u32));
        }
        for t in &mut self.transports {
            t.shutdown();
        }
    }

    /// Detaches and closes an endpoint its transport gave up on.
    fn close_endpoint(&mut self, epoll: &Epoll, key: EndpointKey, switch: &mut Switch) {
        switch.detach(key);
        self.remove(epoll, key);
    }

    /// Once a second: closes endpoints their transports found silent for
    /// too long.
    pub fn expire_endpoints(&mut self, epoll: &Epoll, switch: &mut Switch, now: u64) {
        for t in 0..self.transports.len() {
            for key in self.transports[t].expired(now) {
                self.close_endpoint(epoll, key, switch);
            }
        }
    }

    /// Gives ports to the endpoints that appeared on `transport`, and the
    /// frames of theirs in the first `n` of the batch their keys.
    fn admit_arrivals(&mut self, epoll: &Epoll, transport: TransportId, n: usize, switch: &mut Switch) {
        let arrivals = self.transports[transport].arrivals(&mut self.registry, epoll);
        for Arrival { local, id, module, description, user, credentials, input, output } in arrivals {
            let attach = Attach { request: PortRequest::Any, id, module, description, user, credentials };
            let description = attach.description.clone();
            match switch.attach(attach) {
                Ok((key, _)) => {
                    self.transports[transport].admit(local, Some(key), &mut self.registry, epoll);
                    self.attach(key, transport, local, input, output);
                    self.rx.retag(0..n, PENDING | local, key.0);
                }
                Err(e) => {
                    self.peer_lines.note(|| format!("{module} {}: {e}", String::from_utf8_lossy(&description)));
                    self.transports[transport].admit(local, None, &mut self.registry, epoll);
                }
            }
        }
    }

    /// Whether some descriptor holds frames it already read.
    pub fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Moves frames descriptors had read but not delivered.
    pub fn run_backlog(&mut self, epoll: &Epoll, switch: &mut Switch, now: u64) {
        for id in std::mem::take(&mut self.backlog) {
            if let Err(e) = self.pump(epoll, id, switch, now)
                && let Some(desc) = self.registry.descs.get(id)
            {
                let (transport, tag) = (desc.transport, desc.tag);
                let verdict = self.transports[transport].failure(tag, Some(&e));
                self.judge(epoll, id, verdict, Some(&e), switch);
            }
        }
        self.check_invariants();
    }

    /// Remembers to pump descriptor `id` again if it still holds frames
    /// and may be read.
    fn note_backlog(&mut self, id: DescId) {
        let Some(desc) = self.registry.descs.get(id) else { return };
        if !desc.all_held() && self.transports[desc.transport].buffered(desc.tag) && !self.backlog.contains(&id) {
            self.backlog.push(id);
        }
    }

    /// The control connection whose end ends `key`, if it has one.
    pub fn lifeline(&self, key: EndpointKey) -> Option<usize> {
        let link = self.link(key)?;
        self.transports[link.transport].lifeline(link.local)
    }

    pub fn capture(&mut self) -> &mut Captures {
        &mut self.capture
    }

    fn spare_buffers(&mut self, buffers: impl Iterator<Item = Vec<u8>>) {
        for buf in buffers {
            if self.spare.len() >= SPARE_LIMIT {
                break;
            }
            self.spare.push(buf);
        }
    }

    /// Whether descriptor `id` should not be read: some endpoint it feeds
    /// is held, and every one of them that sent in this or the previous
    /// wake-up is.
    fn paused(&self, id: DescId) -> bool {
        let Some(desc) = self.registry.descs.get(id) else { return false };
        match desc.feeders.as_slice() {
            _ if desc.held == 0 => false,
            [_] => true,
            feeders => {
                feeders.iter().filter_map(|&k| self.link(k)).all(|l| l.held_by > 0 || l.last_heard + 1 < self.wakeup)
            }
        }
    }

    /// Brings descriptor `id`'s watch in line with what it is wanted for.
    fn sync_desc(&mut self, epoll: &Epoll, id: DescId) {
        let paused = self.paused(id);
        let Some(desc) = self.registry.descs.get_mut(id) else { return };
        desc.paused = paused;
        let wanted = desc.wanted();
        if wanted != desc.registered {
            let released = wanted.contains(EpollFlags::EPOLLIN) && !desc.registered.contains(EpollFlags::EPOLLIN);
            desc.registered = wanted;
            if desc.watched {
                let fd = self.transports[desc.transport].fd(desc.tag);
                let _ = epoll.modify(fd, &mut interest(Token::Data(id as u32, desc.generation), wanted));
            }
            if released {
                self.note_backlog(id);
            }
        }
    }

    /// Tells `key`'s descriptors whether it is held back and whether its
    /// queue waits, and updates what they are watched for.
    fn sync_interest(&mut self, epoll: &Epoll, key: EndpointKey) {
        let Some(link) = self.links.get_mut(key.0 as usize).and_then(Option::as_mut) else { return };
        let held = link.held_by > 0;
        if held != link.counted_held {
            link.counted_held = held;
            if let Some(desc) = self.registry.descs.get_mut(link.input) {
                if held {
                    desc.held += 1;
                } else {
                    desc.held -= 1;
                }
            }
        }
        let waiting = !link.queue.is_empty();
        if waiting != link.counted_waiting {
            link.counted_waiting = waiting;
            if let Some(desc) = self.registry.descs.get_mut(link.output) {
                if waiting {
                    desc.waiting.push(key);
                } else {
                    desc.waiting.retain(|&k| k != key);
                }
            }
        }
        let (input, output) = (link.input, link.output);
        self.sync_desc(epoll, input);
        if output != input {
            self.sync_desc(epoll, output);
        }
        self.changed();
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

    /// Handles readiness of descriptor `id`, registration `generation`.
    pub fn ready(&mut self, epoll: &Epoll, id: u32, generation: u32, flags: EpollFlags, switch: &mut Switch, now: u64) {
        let id = id as DescId;
        let Some(desc) = self.registry.descs.get(id) else { return };
        if desc.generation != generation {
            return;
        }
        let (transport, tag, room, reads) = (desc.transport, desc.tag, desc.watch.room, desc.reads);
        if flags.contains(EpollFlags::EPOLLERR) {
            let verdict = self.transports[transport].failure(tag, None);
            if self.judge(epoll, id, verdict, None, switch) {
                return;
            }
        }
        if flags.intersects(room) {
            let waiting = self.registry.descs.get(id).map(|d| d.waiting.clone()).unwrap_or_default();
            for key in waiting {
                self.drain_queue(epoll, key, switch);
            }
        }
        let input = if reads { EpollFlags::EPOLLIN } else { EpollFlags::empty() };
        if flags.intersects(input | EpollFlags::EPOLLERR)
            && let Err(e) = self.pump(epoll, id, switch, now)
            && self.registry.descs.get(id).is_some_and(|d| d.generation == generation)
        {
            let verdict = self.transports[transport].failure(tag, Some(&e));
            self.judge(epoll, id, verdict, Some(&e), switch);
        }
        self.check_invariants();
    }

    /// Acts on a transport's verdict about a failure; true if it closed an
    /// endpoint.
    fn judge(
        &mut self,
        epoll: &Epoll,
        id: DescId,
        verdict: Verdict,
        error: Option<&io::Error>,
        switch: &mut Switch,
    ) -> bool {
        match verdict {
            Verdict::Keep => false,
            Verdict::Pause => {
                if let Some(e) = error {
                    log::log(&format!("accept: {}", log::error_text(e)));
                }
                if let Some(desc) = self.registry.descs.get_mut(id) {
                    desc.reads = false;
                    self.paused.push((id, desc.generation));
                }
                self.sync_desc(epoll, id);
                false
            }
            Verdict::Log => {
                if let Some(e) = error {
                    self.peer_lines.note(|| format!("recv from endpoint: {e}"));
                }
                false
            }
            Verdict::Close { endpoint, what, reason } => {
                if let Some(ep) = switch.detach(endpoint)
                    && let Some(reason) = reason
                {
                    self.peer_lines
                        .note(|| format!("Closing {what} {}: {reason}", String::from_utf8_lossy(&ep.description)));
                }
                self.remove(epoll, endpoint);
                true
            }
        }
    }

    /// Marks the start of a new round of readiness events.
    pub fn wake_up(&mut self) {
        self.wakeup += 1;
    }

    /// Moves the frames waiting on descriptor `id`.
    ///
    /// A descriptor that was quiet in the previous wake-up gets a receive
    /// of one frame: at low rates a batched receive's second attempt,
    /// which finds nothing, costs as much as the frame itself. If more
    /// frames were waiting, the level-triggered wait reports it again at
    /// once, and as it is busy now the rest come in a batch.
    fn pump(&mut self, epoll: &Epoll, id: DescId, switch: &mut Switch, now: u64) -> io::Result<()> {
        let result = self.pump_rounds(epoll, id, switch, now);
        self.note_backlog(id);
        result
    }

    fn pump_rounds(&mut self, epoll: &Epoll, id: DescId, switch: &mut Switch, now: u64) -> io::Result<()> {
        for _ in 0..ROUNDS_PER_WAKEUP {
            let wakeup = self.wakeup;
            let Some(desc) = self.registry.descs.get_mut(id) else { return Ok(()) };
            if desc.all_held() {
                return Ok(());
            }
            let max = if desc.last_busy + 1 >= wakeup { BATCH } else { 1 };
            let (transport, tag) = (desc.transport, desc.tag);
            let received = self.transports[transport].recv(tag, &mut self.rx, max);
            // Endpoints that appeared before a failure still get their ports.
            self.admit_arrivals(epoll, transport, *received.as_ref().unwrap_or(&0), switch);
            let n = received?;
            if n == 0 {
                return Ok(());
            }
            let shared = match self.registry.descs.get_mut(id) {
                Some(desc) => {
                    desc.last_busy = wakeup;
                    desc.feeders.len() > 1
                }
                None => false,
            };
            if shared {
                for i in 0..n {
                    if let Some(Some(link)) = self.links.get_mut(self.rx.source(i) as usize) {
                        link.last_heard = wakeup;
                    }
                }
            }
            if self.capture.is_on() {
                for i in 0..n {
                    if let Some(ep) = switch.endpoint(EndpointKey(self.rx.source(i))) {
                        self.capture.record(ep.port, Direction::In, [self.rx.frame(i)]);
                    }
                }
            }
            self.decide(n, switch, now);
            self.send(epoll, switch);
            if n < BATCH {
                return Ok(());
            }
        }
        Ok(())
    }

    fn decide(&mut self, n: usize, switch: &mut Switch, now: u64) {
        self.arrivals.clear();
        for i in 0..n {
            self.decisions.clear();
            let frame = self.rx.frame(i);
            let from = EndpointKey(self.rx.source(i));
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

    fn send(&mut self, epoll: &Epoll, switch: &mut Switch) {
        let queue = std::mem::take(&mut self.queue);
        if self.capture.is_on() {
            let mut capture = std::mem::take(&mut self.capture);
            for run in queue.chunk_by(|a, b| a.endpoint == b.endpoint) {
                if let Some(ep) = switch.endpoint(run[0].endpoint) {
                    capture.record(
                        ep.port,
                        Direction::Out,
                        run.iter().map(|q| frame_of(&self.rx, &self.edited, &self.edited_len, q)),
                    );
                }
            }
            self.capture = capture;
        }
        for run in queue.chunk_by(|a, b| a.endpoint == b.endpoint) {
            let dest = run[0].endpoint;
            let Some(link) = self.links.get(dest.0 as usize).and_then(Option::as_ref) else { continue };
            // Frames already waiting go first: keep the order.
            let (sent, offset) = if link.queue.is_empty() {
                let n = run.len().min(BATCH);
                let mut frames: [&[u8]; BATCH] = [&[]; BATCH];
                for (slot, q) in frames.iter_mut().zip(run) {
                    *slot = frame_of(&self.rx, &self.edited, &self.edited_len, q);
                }
                let Sent { frames: sent, offset, error } =
                    self.transports[link.transport].send(link.local, &frames[..n], 0);
                match error {
                    None if sent == run.len() => continue,
                    None => (sent, offset),
                    Some(e) if e.kind() == io::ErrorKind::WouldBlock => (sent, offset),
                    Some(e) => {
                        self.send_failed(epoll, dest, &e, (run.len() - sent) as u64, switch);
                        continue;
                    }
                }
            } else {
                (0, 0)
            };
            self.hold(epoll, dest, &run[sent..], offset, switch);
        }
        self.queue = queue;
    }

    /// Queues frames a full destination could not take (the first of them
    /// `offset` into a partial send), and holds back their sources unless
    /// the destination is congested.
    fn hold(&mut self, epoll: &Epoll, dest: EndpointKey, run: &[Queued], offset: usize, switch: &mut Switch) {
        let Some(link) = self.links.get_mut(dest.0 as usize).and_then(Option::as_mut) else { return };
        if link.queue.is_empty() {
            link.offset = offset;
        }
        let room = QUEUE_LIMIT.saturating_sub(link.queue.len());
        let (kept, dropped) = run.split_at(run.len().min(room));
        for q in kept {
            let mut copy = self.spare.pop().unwrap_or_default();
            copy.clear();
            copy.extend_from_slice(frame_of(&self.rx, &self.edited, &self.edited_len, q));
            link.queue.push_back(copy);
        }
        switch.count_egress_drops(dest, DropReason::SocketFull, dropped.len() as u64);
        if link.stalled_since.is_none() && !link.congested {
            link.stalled_since = Some(Instant::now());
            self.stalled.push(dest);
        }
        if !link.congested {
            for q in run {
                let source = EndpointKey(self.rx.source(q.frame as usize));
                let link = self.links[dest.0 as usize].as_mut().expect("checked");
                if source == dest || link.waiters.contains(&source) {
                    continue;
                }
                let Some(Some(s)) = self.links.get_mut(source.0 as usize) else { continue };
                s.held_by += 1;
                self.links[dest.0 as usize].as_mut().expect("checked").waiters.push(source);
                self.sync_interest(epoll, source);
            }
        }
        self.sync_interest(epoll, dest);
    }

    fn send_failed(&mut self, epoll: &Epoll, dest: EndpointKey, e: &io::Error, frames: u64, switch: &mut Switch) {
        if let Some(link) = self.link(dest)
            && self.transports[link.transport].gone(link.local, e)
        {
            switch.count_egress_drops(dest, DropReason::SendFailed, frames);
            return self.close_endpoint(epoll, dest, switch);
        }
        if let Some(link) = self.links.get_mut(dest.0 as usize).and_then(Option::as_mut)
            && !link.send_error_logged
        {
            link.send_error_logged = true;
            let port = switch.endpoint(dest).map_or(0, |ep| ep.port);
            let call = self.transports[link.transport].send_call();
            log::log(&format!("{call} port {port}: {}", log::error_text(e)));
        }
        switch.count_egress_drops(dest, DropReason::SendFailed, frames);
    }

    /// Writes as much of `key`'s queue as its socket takes; once empty, the
    /// sources it held back run again.
    fn drain_queue(&mut self, epoll: &Epoll, key: EndpointKey, switch: &mut Switch) {
        let Some(link) = self.links.get_mut(key.0 as usize).and_then(Option::as_mut) else { return };
        while !link.queue.is_empty() {
            let n = link.queue.len().min(BATCH);
            let mut frames: [&[u8]; BATCH] = [&[]; BATCH];
            for (slot, frame) in frames.iter_mut().zip(&link.queue) {
                *slot = frame;
            }
            let Sent { frames: sent, offset, error } =
                self.transports[link.transport].send(link.local, &frames[..n], link.offset);
            link.offset = offset;
            for buf in link.queue.drain(..sent) {
                if self.spare.len() < SPARE_LIMIT {
                    self.spare.push(buf);
                }
            }
            match error {
                None if sent > 0 || offset > 0 => {}
                None => return self.sync_interest(epoll, key),
                Some(e) if e.kind() == io::ErrorKind::WouldBlock => return self.sync_interest(epoll, key),
                Some(e) => {
                    let lost = link.queue.len() as u64;
                    link.queue.clear();
                    link.offset = 0;
                    self.send_failed(epoll, key, &e, lost, switch);
                    break;
                }
            }
        }
        // A destination whose address is gone was closed above.
        let Some(link) = self.link_mut(key) else { return };
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
            let Some(link) = self.links.get_mut(endpoint.0 as usize).and_then(Option::as_mut) else { continue };
            if link.queue.is_empty() {
                let Sent { frames: sent, offset, error } =
                    self.transports[link.transport].send(link.local, &[frame.as_slice()], 0);
                match error {
                    None if sent == 1 => continue,
                    None => link.offset = offset,
                    Some(e) if e.kind() == io::ErrorKind::WouldBlock => link.offset = offset,
                    Some(e) => {
                        self.send_failed(epoll, endpoint, &e, 1, switch);
                        continue;
                    }
                }
            }
            if link.queue.len() < QUEUE_LIMIT {
                link.queue.push_back(frame);
                self.sync_interest(epoll, endpoint);
            } else {
                switch.count_egress_drops(endpoint, DropReason::SocketFull, 1);
            }
        }
        self.check_invariants();
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
        self.check_invariants();
    }

    /// Once a second: congested destinations that have drained may hold
    /// their sources back again, and shared descriptors whose only busy
    /// senders were held learn who fell silent.
    pub fn tick(&mut self, epoll: &Epoll) {
        self.peer_lines.next_second("endpoint log lines");
        for (id, generation) in std::mem::take(&mut self.paused) {
            if let Some(desc) = self.registry.descs.get_mut(id)
                && desc.generation == generation
            {
                desc.reads = true;
                self.sync_desc(epoll, id);
            }
        }
        let shared: Vec<DescId> =
            self.registry.descs.iter().filter(|(_, d)| d.held > 0 && d.feeders.len() > 1).map(|(i, _)| i).collect();
        for id in shared {
            self.sync_desc(epoll, id);
        }
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
        self.changed();
        self.check_invariants();
    }

    fn changed(&mut self) {
        #[cfg(debug_assertions)]
        {
            self.changed = true;
        }
    }

    /// Checks the flow-control invariants of the module documentation
    /// (debug builds only, and only after something changed: a check is
    /// linear in endpoints).
    fn check_invariants(&mut self) {
        #[cfg(debug_assertions)]
        if std::mem::take(&mut self.changed) {
            self.assert_invariants();
        }
    }

    #[cfg(debug_assertions)]
    fn assert_invariants(&self) {
        use std::collections::HashMap;
        let mut holds: HashMap<EndpointKey, u32> = HashMap::new();
        let mut feeds: HashMap<DescId, (u32, u32)> = HashMap::new();
        let unique = |list: &[EndpointKey]| {
            let mut sorted = list.to_vec();
            sorted.sort_unstable();
            sorted.windows(2).all(|w| w[0] != w[1])
        };
        assert!(unique(&self.stalled) && unique(&self.congested), "a list names an endpoint twice");
        for (i, link) in self.links.iter().enumerate() {
            let Some(link) = link else { continue };
            let key = EndpointKey(i as u32);
            assert_eq!(link.stalled_since.is_some(), self.stalled.contains(&key), "{key:?}: stalled list");
            assert_eq!(link.congested, self.congested.contains(&key), "{key:?}: congested list");
            assert!(!(link.congested && link.stalled_since.is_some()), "{key:?}: stalled and congested");
            assert!(link.waiters.is_empty() || link.stalled_since.is_some(), "{key:?}: waiters while not stalled");
            assert!(unique(&link.waiters) && !link.waiters.contains(&key), "{key:?}: waiters");
            for w in &link.waiters {
                assert!(self.link(*w).is_some(), "{key:?}: waiter {w:?} is gone");
                *holds.entry(*w).or_default() += 1;
            }
            assert!(link.queue.len() <= QUEUE_LIMIT, "{key:?}: queue over its limit");
            assert!(!link.queue.is_empty() || link.offset == 0, "{key:?}: offset into nothing");
            assert_eq!(link.counted_held, link.held_by > 0, "{key:?}: held not told to its descriptor");
            assert_eq!(link.counted_waiting, !link.queue.is_empty(), "{key:?}: queue not told to its descriptor");
            let f = feeds.entry(link.input).or_default();
            f.0 += 1;
            f.1 += u32::from(link.held_by > 0);
            if let Some(out) = self.registry.descs.get(link.output) {
                assert_eq!(out.waiting.contains(&key), !link.queue.is_empty(), "{key:?}: output waiting list");
            }
        }
        for (i, link) in self.links.iter().enumerate() {
            if let Some(link) = link {
                let key = EndpointKey(i as u32);
                assert_eq!(link.held_by, holds.get(&key).copied().unwrap_or(0), "{key:?}: held_by");
            }
        }
        for (id, desc) in &self.registry.descs {
            let (n, held) = feeds.get(&id).copied().unwrap_or((0, 0));
            assert_eq!((desc.feeders.len() as u32, desc.held), (n, held), "descriptor {id}: feeders and held");
            // Whom a shared descriptor counts as active changes with time
            // alone; what is fixed is that nobody held means read, and a
            // descriptor of one endpoint is paused exactly while it is held.
            assert!(desc.held > 0 || !desc.paused, "descriptor {id}: paused with nobody held");
            if desc.feeders.len() == 1 {
                assert_eq!(desc.paused, desc.held > 0, "descriptor {id}: paused");
            }
            assert!(unique(&desc.waiting), "descriptor {id}: waiting list");
            assert_eq!(desc.wanted(), desc.registered, "descriptor {id}: watched for the wrong events");
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

    mod flow_control {
        use std::os::fd::OwnedFd;
        use std::os::unix::net::UnixDatagram;

        use nix::sys::epoll::{EpollCreateFlags, EpollEvent, EpollTimeout};
        use nix::sys::socket::{setsockopt, sockopt::SndBuf};

        use super::super::super::Token;
        use super::*;
        use crate::engine::{Attach, Credentials, PortRequest};

        /// xorshift64: reproducible steps without a crate.
        struct Rng(u64);

        impl Rng {
            fn next(&mut self, below: u64) -> u64 {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                self.0 % below
            }
        }

        struct Client {
            key: EndpointKey,
            peer: UnixDatagram,
        }

        fn attach(plane: &mut DataPlane, switch: &mut Switch, epoll: &Epoll, n: u8) -> Client {
            let (ours, peer) = UnixDatagram::pair().unwrap();
            ours.set_nonblocking(true).unwrap();
            peer.set_nonblocking(true).unwrap();
            // A small send buffer fills after a few frames: destinations
            // stall, sources are held, queues fill and drain.
            setsockopt(&ours, SndBuf, &2048).unwrap();
            let (key, _) = switch
                .attach(Attach {
                    request: PortRequest::Any,
                    id: u32::from(n),
                    module: "test",
                    description: Vec::new(),
                    user: None,
                    credentials: Credentials { uid: 0, gids: vec![0] },
                })
                .unwrap();
            let fd = OwnedFd::from(ours);
            let path = std::path::PathBuf::from(format!("/nonexistent/vswitch-test/{n}"));
            let (local, desc) =
                plane.with_transport(VDE, |vde: &mut Vde, reg| vde.add(reg, epoll, key, fd, path, 0)).unwrap().unwrap();
            plane.attach(key, VDE, local, desc, desc);
            Client { key, peer }
        }

        fn frame(from: u8) -> Vec<u8> {
            let mut f = vec![0xff; 6];
            f.extend_from_slice(&[2, 0, 0, 0, 0, from]);
            f.extend_from_slice(&[0x08, 0x00]);
            f.resize(60, from);
            f
        }

        /// Random sends, reads, wake-ups, stall deadlines, ticks and
        /// detaches on a hub (every frame floods, so every client is both
        /// a source and a destination): the invariants of the module
        /// documentation hold after every step, and a destination whose
        /// client reads everything ends up with an empty queue.
        #[test]
        fn random_traffic_keeps_the_flow_control_invariants() {
            for seed in [1u64, 0x9e37_79b9_7f4a_7c15, 42, 7777] {
                let epoll = Epoll::new(EpollCreateFlags::empty()).unwrap();
                let mut switch = Switch::new(16, true, 64);
                let mut plane = DataPlane::default();
                let mut rng = Rng(seed);
                let mut clients: Vec<Client> = (0..5).map(|n| attach(&mut plane, &mut switch, &epoll, n)).collect();
                let mut next_id = 5;
                let mut late = Instant::now();
                let mut events = vec![EpollEvent::empty(); 64];
                for _ in 0..3000 {
                    let c = rng.next(clients.len() as u64) as usize;
                    match rng.next(16) {
                        0..=4 => {
                            for _ in 0..=rng.next(40) {
                                let _ = clients[c].peer.send(&frame(c as u8));
                            }
                        }
                        5..=8 => {
                            let mut buf = [0u8; 2048];
                            for _ in 0..=rng.next(40) {
                                let _ = clients[c].peer.recv(&mut buf);
                            }
                        }
                        9..=12 => {
                            let n = epoll.wait(&mut events, EpollTimeout::ZERO).unwrap();
                            plane.wake_up();
                            for ev in &events[..n] {
                                if let Some(Token::Data(id, generation)) = Token::decode(ev.data()) {
                                    plane.ready(&epoll, id, generation, ev.events(), &mut switch, 0);
                                }
                            }
                            plane.send_originated(&epoll, &mut switch);
                        }
                        13 => {
                            late += STALL_LIMIT;
                            plane.expire_stalls(&epoll, late);
                        }
                        14 => plane.tick(&epoll),
                        _ if clients.len() > 2 => {
                            let gone = clients.swap_remove(c);
                            switch.detach(gone.key);
                            plane.remove(&epoll, gone.key);
                            clients.push(attach(&mut plane, &mut switch, &epoll, next_id));
                            next_id += 1;
                        }
                        _ => {}
                    }
                    plane.assert_invariants();
                }
                // Everyone reads until nothing moves: every queue drains.
                let mut buf = [0u8; 2048];
                for _ in 0..200 {
                    for c in &clients {
                        while c.peer.recv(&mut buf).is_ok() {}
                    }
                    let n = epoll.wait(&mut events, EpollTimeout::ZERO).unwrap();
                    plane.wake_up();
                    for ev in &events[..n] {
                        if let Some(Token::Data(id, generation)) = Token::decode(ev.data()) {
                            plane.ready(&epoll, id, generation, ev.events(), &mut switch, 0);
                        }
                    }
                    plane.assert_invariants();
                }
                for c in &clients {
                    let link = plane.link(c.key).unwrap();
                    assert!(link.queue.is_empty() && link.held_by == 0, "seed {seed}: {:?} still blocked", c.key);
                }
                assert!(plane.spare.len() <= SPARE_LIMIT);
            }
        }
    }
}
