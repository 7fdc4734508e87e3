//! Tap interfaces (`-t NAME`): kernel network interfaces whose frames the
//! switch reads and writes through `/dev/net/tun`, one frame per `read` or
//! `write`, attached as endpoints at start-up. The interface exists while
//! its descriptor is open, so closing the endpoint removes it.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use nix::sys::epoll::Epoll;
use slab::Slab;

use super::{Batch, DescId, Registry, Sent, Transport, TransportId, Verdict};
use crate::engine::EndpointKey;
use crate::net::{log, sys};

/// The module name `port/print` shows, vde_switch's.
pub const MODULE: &str = "tuntap";

struct Endpoint {
    tun: OwnedFd,
    key: EndpointKey,
    desc: DescId,
}

pub struct Tap {
    id: TransportId,
    endpoints: Slab<Endpoint>,
}

impl Tap {
    pub fn new(id: TransportId) -> Tap {
        Tap { id, endpoints: Slab::new() }
    }

    pub fn add(
        &mut self,
        registry: &mut Registry,
        epoll: &Epoll,
        key: EndpointKey,
        tun: OwnedFd,
    ) -> io::Result<(u32, DescId)> {
        let entry = self.endpoints.vacant_entry();
        let local = entry.key() as u32;
        let desc = registry.add(epoll, tun.as_fd(), self.id, local)?;
        entry.insert(Endpoint { tun, key, desc });
        Ok((local, desc))
    }
}

impl Transport for Tap {
    fn recv(&mut self, tag: u32, rx: &mut Batch, max: usize) -> io::Result<usize> {
        let Some(ep) = self.endpoints.get(tag as usize) else { return Ok(0) };
        let n = rx.read(ep.tun.as_fd(), max)?;
        rx.set_sources(0..n, ep.key.0);
        Ok(n)
    }

    fn send(&mut self, endpoint: u32, frames: &[&[u8]], _offset: usize) -> Sent {
        match self.endpoints.get(endpoint as usize) {
            Some(ep) => Sent::from_batch(sys::write_batch(ep.tun.as_fd(), frames.iter().copied())),
            None => Sent { frames: frames.len(), offset: 0, error: None },
        }
    }

    fn fd(&self, tag: u32) -> BorrowedFd<'_> {
        self.endpoints[tag as usize].tun.as_fd()
    }

    fn failure(&mut self, tag: u32, failed: Option<&io::Error>) -> Verdict {
        let Some(ep) = self.endpoints.get(tag as usize) else { return Verdict::Keep };
        // A tap reports an error only once its interface has been deleted
        // (`ip link del`), for ever: it cannot be consumed, and a tap that
        // cannot be read will not recover.
        let reason = Some(match failed {
            None => "the interface was removed".to_string(),
            Some(e) => log::error_text(e),
        });
        Verdict::Close { endpoint: ep.key, what: "tap interface", reason }
    }

    fn send_call(&self) -> &'static str {
        "send_tap"
    }

    fn close(&mut self, endpoint: u32, registry: &mut Registry, epoll: &Epoll) {
        if let Some(ep) = self.endpoints.try_remove(endpoint as usize) {
            registry.remove(epoll, ep.desc, ep.tun.as_fd());
        }
    }
}

/// Creates the tap interface `name` (or takes over an existing, unused
/// one) and returns its non-blocking, close-on-exec descriptor.
pub fn open(name: &str) -> Result<OwnedFd, String> {
    // std opens with O_CLOEXEC already.
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .map_err(|e| format!("Failed to open /dev/net/tun {}", log::error_text(&e)))?;
    sys::attach_tap(tun.as_fd(), name)
        .map_err(|e| format!("Cannot create tap interface {name}: {}", log::error_text(&e)))?;
    Ok(tun.into())
}
