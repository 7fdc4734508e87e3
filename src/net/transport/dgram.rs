//! `--dgram PATH`: a bound Unix datagram socket for QEMU's `-netdev
//! dgram`, one frame per datagram. Every distinct sender address is an
//! endpoint on a port of its own, created at its first frame.
//!
//! All senders share the one bound socket for input, received with
//! `recvmmsg` and their addresses. Output to a sender goes through a
//! socket of its own connected to its address: sent with `sendmmsg` like
//! the VDE path, and, being connected, it reports writability when that
//! receiver has room, which a shared unconnected socket cannot do per
//! receiver. Frames reach the guest from that socket's (unnamed) address;
//! QEMU's dgram back-end, which does not connect its socket, accepts them
//! from any address. A peer that connects its socket to PATH would refuse
//! them: it is not supported.
//!
//! An endpoint goes when its address stops accepting frames (the guest's
//! socket is closed or removed) or after [`SILENCE`] seconds without a
//! frame from it: a guest that was shut down leaves no trace otherwise.
//! It comes back, on a new port, with its next frame.
//!
//! The socket asks for the sender's credentials with every datagram
//! (`SO_PASSCRED`): the first frame's pid, uid and gid describe the
//! endpoint and are checked against port ACLs (`port/setuser`,
//! `port/setgroup`). The kernel passes no supplementary groups this way,
//! so a group ACL matches only the sender's primary group.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::epoll::Epoll;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
use nix::unistd::{Gid, Uid};
use slab::Slab;

use super::{Arrival, Batch, DescId, PENDING, Registry, Sent, Transport, TransportId, Verdict, bind_unix};
use crate::engine::{Credentials, EndpointKey};
use crate::net::{log, sys};

pub const MODULE: &str = "dgram";

/// Seconds without a frame after which a sender's endpoint is removed.
pub const SILENCE: u64 = 300;
/// Senders known at once; frames from further addresses are dropped.
const MAX_PEERS: usize = 4096;
/// The tag of the shared bound socket; senders' sockets are tagged by slot.
const SHARED: u32 = u32::MAX;
/// A source no endpoint has: the engine ignores such frames.
const NOBODY: u32 = u32::MAX;

struct Peer {
    name: Vec<u8>,
    /// Connected to the sender; `None` for an address that got no port.
    out: Option<OwnedFd>,
    desc: Option<DescId>,
    key: Option<EndpointKey>,
    /// Waiting for its port.
    fresh: bool,
    /// The first frame's sender credentials: pid, uid, gid.
    credentials: Option<(i32, u32, u32)>,
    last_heard: u64,
}

pub struct Dgram {
    id: TransportId,
    path: PathBuf,
    socket: OwnedFd,
    shared: DescId,
    peers: Slab<Peer>,
    by_name: HashMap<Vec<u8>, u32>,
    /// Seconds since start, as of the last tick.
    now: u64,
}

impl Dgram {
    /// Binds `path` with `ctl`'s mode and group and registers the socket.
    pub fn open(
        id: TransportId,
        path: &Path,
        mode: u32,
        group: Option<Gid>,
        registry: &mut Registry,
        epoll: &Epoll,
    ) -> io::Result<Dgram> {
        let socket = bind_unix(path, SockType::Datagram, mode, group)?;
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::PassCred, &true)
            .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
        let shared = match registry.add(epoll, socket.as_fd(), id, SHARED) {
            Ok(desc) => desc,
            Err(e) => {
                let _ = fs::remove_file(path);
                return Err(e);
            }
        };
        let path = path.to_path_buf();
        Ok(Dgram { id, path, socket, shared, peers: Slab::new(), by_name: HashMap::new(), now: 0 })
    }

    /// The tag for frames from `name`: its endpoint, a pending newcomer,
    /// or nobody (a sender that cannot be answered or got no port).
    fn source(&mut self, name: &[u8], credentials: Option<(i32, u32, u32)>) -> u32 {
        if let Some(&local) = self.by_name.get(name) {
            let peer = &mut self.peers[local as usize];
            peer.last_heard = self.now;
            return match (peer.key, peer.fresh) {
                (Some(key), _) => key.0,
                (None, true) => PENDING | local,
                (None, false) => NOBODY,
            };
        }
        if self.peers.len() >= MAX_PEERS {
            return NOBODY;
        }
        // An unnamed sender cannot be answered; nor can one whose socket
        // refuses a connection.
        let out =
            socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)
                .ok()
                .filter(|fd| sys::connect_name(fd.as_fd(), name).is_ok());
        let Some(out) = out else { return NOBODY };
        let peer = Peer {
            name: name.to_vec(),
            out: Some(out),
            desc: None,
            key: None,
            fresh: true,
            credentials,
            last_heard: self.now,
        };
        let local = self.peers.insert(peer) as u32;
        self.by_name.insert(name.to_vec(), local);
        PENDING | local
    }

    fn forget(&mut self, local: u32, registry: &mut Registry, epoll: &Epoll) {
        if let Some(peer) = self.peers.try_remove(local as usize) {
            self.by_name.remove(&peer.name);
            if let (Some(desc), Some(out)) = (peer.desc, &peer.out) {
                registry.remove(epoll, desc, out.as_fd());
            }
        }
    }
}

/// A sender's address for `port/print`: its path, or `@name` if abstract,
/// bytes as the kernel gave them.
fn show_name(name: &[u8]) -> Vec<u8> {
    let path = name.get(2..).unwrap_or_default();
    match path.split_first() {
        Some((0, abstract_name)) => [b"@", abstract_name].concat(),
        _ => path.split(|&b| b == 0).next().unwrap_or_default().to_vec(),
    }
}

impl Transport for Dgram {
    fn recv(&mut self, _tag: u32, rx: &mut Batch, max: usize) -> io::Result<usize> {
        let n = rx.recv_from(self.socket.as_fd(), max)?;
        for i in 0..n {
            let source = self.source(rx.name(i), rx.credentials(i));
            rx.set_sources(i..i + 1, source);
        }
        Ok(n)
    }

    fn send(&mut self, endpoint: u32, frames: &[&[u8]], _offset: usize) -> Sent {
        match self.peers.get(endpoint as usize).and_then(|p| p.out.as_ref()) {
            Some(out) => Sent::from_batch(sys::send_batch(out.as_fd(), frames.iter().copied())),
            None => Sent { frames: frames.len(), offset: 0, error: None },
        }
    }

    fn fd(&self, tag: u32) -> BorrowedFd<'_> {
        match self.peers.get(tag as usize).and_then(|p| p.out.as_ref()) {
            Some(out) => out.as_fd(),
            None => self.socket.as_fd(),
        }
    }

    fn failure(&mut self, tag: u32, failed: Option<&io::Error>) -> Verdict {
        match failed {
            // A pending socket error keeps a level-triggered wait firing:
            // consume it.
            None => {
                let _ = nix::sys::socket::getsockopt(&self.fd(tag), nix::sys::socket::sockopt::SocketError);
                Verdict::Keep
            }
            Some(_) => Verdict::Log,
        }
    }

    fn send_call(&self) -> &'static str {
        "send_dgram"
    }

    fn close(&mut self, endpoint: u32, registry: &mut Registry, epoll: &Epoll) {
        self.forget(endpoint, registry, epoll);
    }

    fn arrivals(&mut self, registry: &mut Registry, epoll: &Epoll) -> Vec<Arrival> {
        let mut arrivals = Vec::new();
        let fresh: Vec<usize> =
            self.peers.iter().filter(|(_, p)| p.fresh && p.desc.is_none()).map(|(i, _)| i).collect();
        let input = self.shared;
        for local in fresh {
            let peer = &mut self.peers[local];
            let Some(out) = &peer.out else { continue };
            match registry.add_output(epoll, out.as_fd(), self.id, local as u32) {
                Ok(desc) => peer.desc = Some(desc),
                Err(e) => {
                    log::log(&format!("{MODULE} {}: {}", self.path.display(), log::error_text(&e)));
                    peer.fresh = false;
                    peer.out = None;
                    continue;
                }
            }
            let from = [self.path.as_os_str().as_bytes(), b" from ", &show_name(&peer.name)].concat();
            let (description, user, credentials) = match peer.credentials {
                Some((pid, uid, gid)) => {
                    let name = nix::unistd::User::from_uid(Uid::from_raw(uid))
                        .ok()
                        .flatten()
                        .map_or_else(|| uid.to_string(), |u| u.name);
                    let description = [from, format!(" user={name} pid={pid}").into_bytes()].concat();
                    (description, Some(uid), Credentials { uid, gids: vec![gid] })
                }
                // Unknown senders get an identity that owns nothing.
                None => (from, None, Credentials { uid: u32::MAX - 1, gids: Vec::new() }),
            };
            arrivals.push(Arrival {
                local: local as u32,
                id: out.as_raw_fd() as u32,
                module: MODULE,
                description,
                user,
                credentials,
                input,
                output: peer.desc.unwrap_or(input),
            });
        }
        arrivals
    }

    fn admit(&mut self, local: u32, key: Option<EndpointKey>, registry: &mut Registry, epoll: &Epoll) {
        let Some(peer) = self.peers.get_mut(local as usize) else { return };
        peer.fresh = false;
        peer.key = key;
        if key.is_none() {
            // Remembered without a socket until it falls silent, so that
            // each of its frames does not ask for a port again.
            if let (Some(desc), Some(out)) = (peer.desc.take(), peer.out.take()) {
                registry.remove(epoll, desc, out.as_fd());
            }
        }
    }

    fn gone(&self, _endpoint: u32, error: &io::Error) -> bool {
        matches!(error.raw_os_error(), Some(libc::ECONNREFUSED | libc::ENOTCONN | libc::ECONNRESET | libc::ENOENT))
    }

    fn expired(&mut self, now: u64) -> Vec<EndpointKey> {
        self.now = now;
        let silent: Vec<usize> =
            self.peers.iter().filter(|(_, p)| p.last_heard + SILENCE <= now).map(|(i, _)| i).collect();
        let mut keys = Vec::new();
        for local in silent {
            match self.peers[local].key {
                Some(key) => keys.push(key),
                None if !self.peers[local].fresh => {
                    let peer = self.peers.remove(local);
                    self.by_name.remove(&peer.name);
                }
                None => {}
            }
        }
        keys
    }

    fn shutdown(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}
