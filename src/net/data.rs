//! The data plane: read a batch of frames from one endpoint, let the engine
//! decide each, then send every destination its share in one batched call.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use super::sys::{self, BATCH};
use crate::engine::{Delivery, DropReason, Edit, EndpointKey, Switch};
use crate::wire::{MAX_FRAME, VLAN_TAG_LEN, pop_tag, push_tag};

/// Receive buffer size: larger than any frame the switch carries, so an
/// oversized datagram shows as too long instead of being cut to size.
const BUF: usize = 2048;
/// Batches read from one endpoint before others get their turn.
const ROUNDS_PER_WAKEUP: usize = 8;

/// One attached endpoint's data socket.
pub struct Link {
    pub socket: OwnedFd,
    /// The `NNN.M` file the socket is bound to.
    pub path: PathBuf,
    /// Slot of the control connection that keeps the endpoint alive.
    pub conn: usize,
    /// Send errors other than a full buffer are logged once per endpoint.
    pub send_error_logged: bool,
}

pub type Links = Vec<Option<Link>>;

/// One frame of the current batch, queued for one endpoint.
#[derive(Clone, Copy)]
struct Queued {
    endpoint: EndpointKey,
    frame: u8,
    edit: Edit,
}

pub struct DataPlane {
    bufs: Box<[[u8; BUF]; BATCH]>,
    lens: [usize; BATCH],
    /// The retagged copy of each frame, when some destination needs one.
    edited: Box<[[u8; MAX_FRAME + VLAN_TAG_LEN]; BATCH]>,
    edited_len: [usize; BATCH],
    decisions: Vec<Delivery>,
    queue: Vec<Queued>,
}

impl Default for DataPlane {
    fn default() -> Self {
        DataPlane {
            bufs: Box::new([[0; BUF]; BATCH]),
            lens: [0; BATCH],
            edited: Box::new([[0; MAX_FRAME + VLAN_TAG_LEN]; BATCH]),
            edited_len: [0; BATCH],
            decisions: Vec::with_capacity(BATCH * 4),
            queue: Vec::with_capacity(BATCH * 4),
        }
    }
}

impl DataPlane {
    /// Moves the frames waiting on `from`'s socket. Returns an error only
    /// when the socket itself failed.
    pub fn pump(&mut self, from: EndpointKey, switch: &mut Switch, links: &mut Links, now: u64) -> io::Result<()> {
        for _ in 0..ROUNDS_PER_WAKEUP {
            let Some(link) = links.get(from.0 as usize).and_then(Option::as_ref) else {
                return Ok(());
            };
            let n = sys::recv_batch(link.socket.as_fd(), &mut self.bufs[..], &mut self.lens)?;
            if n == 0 {
                return Ok(());
            }
            self.decide(from, n, switch, now);
            self.send(switch, links);
            if n < BATCH {
                return Ok(());
            }
        }
        Ok(())
    }

    fn decide(&mut self, from: EndpointKey, n: usize, switch: &mut Switch, now: u64) {
        self.queue.clear();
        for i in 0..n {
            self.decisions.clear();
            let frame = &self.bufs[i][..self.lens[i]];
            if switch.ingress(from, frame, now, &mut self.decisions).is_err() {
                continue;
            }
            for d in &self.decisions {
                match d.edit {
                    Edit::AsIs => {}
                    Edit::Tag(tci) => self.edited_len[i] = push_tag(frame, tci, &mut self.edited[i]),
                    Edit::Untag => self.edited_len[i] = pop_tag(frame, &mut self.edited[i]),
                }
                self.queue.push(Queued { endpoint: d.endpoint, frame: i as u8, edit: d.edit });
            }
        }
        // Stable: each destination still gets its frames in arrival order.
        self.queue.sort_by_key(|q| q.endpoint);
    }

    fn send(&mut self, switch: &mut Switch, links: &mut Links) {
        let mut frames: [&[u8]; BATCH] = [&[]; BATCH];
        for run in self.queue.chunk_by(|a, b| a.endpoint == b.endpoint) {
            let endpoint = run[0].endpoint;
            let Some(link) = links.get_mut(endpoint.0 as usize).and_then(Option::as_mut) else {
                continue;
            };
            for (slot, q) in frames.iter_mut().zip(run) {
                let i = q.frame as usize;
                *slot = match q.edit {
                    Edit::AsIs => &self.bufs[i][..self.lens[i]],
                    Edit::Tag(_) | Edit::Untag => &self.edited[i][..self.edited_len[i]],
                };
            }
            let (sent, error) = sys::send_batch(link.socket.as_fd(), &frames[..run.len()]);
            let Some(error) = error else { continue };
            let reason = if error.kind() == io::ErrorKind::WouldBlock {
                DropReason::SocketFull
            } else {
                if !link.send_error_logged {
                    link.send_error_logged = true;
                    let port = switch.endpoint(endpoint).map_or(0, |e| e.port);
                    super::log::log(&format!("send_sockaddr port {port}: {}", error_text(&error)));
                }
                DropReason::SendFailed
            };
            for _ in sent..run.len() {
                switch.count_egress_drop(endpoint, reason);
            }
        }
    }
}

fn error_text(e: &io::Error) -> &'static str {
    nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)).desc()
}
