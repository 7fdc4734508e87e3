//! VDE clients: each endpoint is a datagram socket of its own, bound at
//! its `NNN.M` file in the control directory and connected to the
//! client's address, kept alive by the control connection of the
//! handshake (see `net::ctl`).

use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use nix::sys::epoll::Epoll;
use slab::Slab;

use super::{Batch, DescId, Registry, Sent, Transport, TransportId, Verdict};
use crate::engine::EndpointKey;
use crate::net::sys;

/// The module name `port/print` shows, vde_switch's.
pub const MODULE: &str = "unix prog";

struct Endpoint {
    socket: OwnedFd,
    /// The `NNN.M` file, removed with the endpoint.
    path: PathBuf,
    /// The control connection's slot.
    conn: usize,
    key: EndpointKey,
    desc: DescId,
}

pub struct Vde {
    id: TransportId,
    endpoints: Slab<Endpoint>,
}

impl Vde {
    pub fn new(id: TransportId) -> Vde {
        Vde { id, endpoints: Slab::new() }
    }

    /// Takes over endpoint `key`'s data socket, bound at `path`; returns
    /// the endpoint's number here and its descriptor.
    pub fn add(
        &mut self,
        registry: &mut Registry,
        epoll: &Epoll,
        key: EndpointKey,
        socket: OwnedFd,
        path: PathBuf,
        conn: usize,
    ) -> io::Result<(u32, DescId)> {
        let entry = self.endpoints.vacant_entry();
        let local = entry.key() as u32;
        let desc = registry.add(epoll, socket.as_fd(), self.id, local)?;
        entry.insert(Endpoint { socket, path, conn, key, desc });
        Ok((local, desc))
    }
}

impl Transport for Vde {
    fn recv(&mut self, tag: u32, rx: &mut Batch, max: usize) -> io::Result<usize> {
        let Some(ep) = self.endpoints.get(tag as usize) else { return Ok(0) };
        let n = rx.recv(ep.socket.as_fd(), max)?;
        rx.set_sources(0..n, ep.key.0);
        Ok(n)
    }

    fn send(&mut self, endpoint: u32, frames: &[&[u8]], _offset: usize) -> Sent {
        match self.endpoints.get(endpoint as usize) {
            Some(ep) => Sent::from_batch(sys::send_batch(ep.socket.as_fd(), frames.iter().copied())),
            None => Sent { frames: frames.len(), offset: 0, error: None },
        }
    }

    fn fd(&self, tag: u32) -> BorrowedFd<'_> {
        self.endpoints[tag as usize].socket.as_fd()
    }

    fn failure(&mut self, tag: u32, failed: Option<&io::Error>) -> Verdict {
        match failed {
            // A pending socket error keeps a level-triggered wait firing
            // even while the socket is not being read: consume it.
            None => {
                if let Some(ep) = self.endpoints.get(tag as usize) {
                    let _ = nix::sys::socket::getsockopt(&ep.socket, nix::sys::socket::sockopt::SocketError);
                }
                Verdict::Keep
            }
            // The client's socket went away; its control connection's end
            // will follow and detach the endpoint.
            Some(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => Verdict::Keep,
            Some(_) => Verdict::Log,
        }
    }

    fn send_call(&self) -> &'static str {
        "send_sockaddr"
    }

    fn lifeline(&self, endpoint: u32) -> Option<usize> {
        Some(self.endpoints.get(endpoint as usize)?.conn)
    }

    fn close(&mut self, endpoint: u32, registry: &mut Registry, epoll: &Epoll) {
        if let Some(ep) = self.endpoints.try_remove(endpoint as usize) {
            registry.remove(epoll, ep.desc, ep.socket.as_fd());
            let _ = fs::remove_file(&ep.path);
        }
    }
}
