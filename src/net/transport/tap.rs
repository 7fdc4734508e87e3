//! Tap interfaces (`-t NAME`): kernel network interfaces whose frames the
//! switch reads and writes through `/dev/net/tun`, one frame per `read` or
//! `write`, attached as endpoints at start-up. The interface exists while
//! its descriptor is open, so closing the endpoint removes it.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use nix::sys::epoll::Epoll;
use nix::unistd::{Gid, Uid};
use slab::Slab;

use super::{Batch, DescId, Registry, Sent, Transport, TransportId, Verdict};
use crate::engine::{Attach, Credentials, EndpointKey, PortRequest};
use crate::net::data::TAP;
use crate::net::{Server, log, sys};

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

    fn add(
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
fn open(name: &str) -> Result<OwnedFd, String> {
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

impl Server {
    /// Attaches each `-t` interface on the next automatically allocated
    /// port, as vde_switch does between the management socket and the rc
    /// file. One that cannot be opened or has no port is logged and skipped.
    pub(in crate::net) fn attach_taps(&mut self, names: &[String]) {
        for name in names {
            if let Err(reason) = self.attach_tap(name) {
                log::log(&reason);
                log::log(&format!("ERROR OPENING tap interface: {name}"));
            }
        }
    }

    fn attach_tap(&mut self, name: &str) -> Result<(), String> {
        let fd = open(name)?;
        let (key, _) = self
            .switch
            .attach(Attach {
                request: PortRequest::Any,
                // vde_switch shows the tap's descriptor as the endpoint ID.
                id: fd.as_raw_fd() as u32,
                module: MODULE,
                description: name.as_bytes().to_vec(),
                // Nobody owns the port (`Current User: NONE`); the kernel
                // identity sharing checks compare with is the switch's own.
                user: None,
                credentials: Credentials { uid: Uid::effective().as_raw(), gids: vec![Gid::effective().as_raw()] },
            })
            .map_err(|e| format!("Cannot attach tap interface {name}: {e}"))?;
        let epoll = &self.epoll;
        let added = self.data.with_transport(TAP, |tap: &mut Tap, registry| tap.add(registry, epoll, key, fd));
        match added.unwrap_or_else(|| Err(io::Error::other("no tap transport"))) {
            Ok((local, desc)) => {
                self.data.attach(key, TAP, local, desc, desc);
                Ok(())
            }
            Err(e) => {
                self.switch.detach(key);
                Err(format!("epoll add tap interface {name}: {}", log::error_text(&e)))
            }
        }
    }
}
