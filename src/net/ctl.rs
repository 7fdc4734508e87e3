//! The control directory: its `ctl` listener, the handshake that turns a
//! control connection into an endpoint, and the per-endpoint data sockets.

use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt, chown, lchown};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::epoll::EpollFlags;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, bind, socket};
use nix::unistd::{Gid, Uid};

use super::jobs::{LOOKUP_TIME_LIMIT, Waiter};
use super::peer::Peer;
use super::transport::VDE;
use super::transport::vde::{self, Vde};
use super::{
    Accepted, Conn, Fatal, HANDSHAKE_TIMEOUT, JobOutcome, MAX_HANDSHAKES, Server, Token, interest, log, sys,
    token_generation,
};
use crate::engine::{Attach, AttachError, EndpointKey, PortRequest, Switch};
use crate::wire::{ClientAddr, Request, RequestError, RequestKind, reply_for_path};

/// Permissions and ownership requested on the command line.
#[derive(Debug, Clone)]
pub struct Access {
    pub ctl_mode: u32,
    pub dir_mode: u32,
    pub group: Option<Gid>,
    /// Mode and group of the management socket, also given to port-0 data sockets.
    pub mgmt_mode: u32,
    pub mgmt_group: Option<Gid>,
}

/// The `ctl` and directory modes for `-m` / `--dirmode`, as vde_switch
/// derives one from the other.
pub fn modes(mode: Option<u32>, dirmode: Option<u32>) -> (u32, u32) {
    match (mode, dirmode) {
        (None, None) => (0o600, 0o2700),
        (Some(m), None) => {
            let dir = [0o700, 0o070, 0o007].iter().fold(0o2000, |dir, &class| {
                let rw = m & class & 0o666;
                if rw != 0 { dir | rw | (class & 0o111) } else { dir }
            });
            (m, dir)
        }
        (None, Some(d)) => (d & 0o666, d),
        (Some(m), Some(d)) => (m, d),
    }
}

pub struct CtlDir {
    /// Canonical path of the directory.
    pub dir: PathBuf,
    pub listener: UnixListener,
    pub access: Access,
}

fn set_group(path: &Path, group: Option<Gid>) -> io::Result<()> {
    match group {
        Some(g) => chown(path, None, Some(g.as_raw())),
        None => Ok(()),
    }
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

impl CtlDir {
    /// Creates (or reuses) the directory and listens on its `ctl` socket,
    /// replacing a stale socket but never a live switch's. Nobody can see
    /// the directory, or a `ctl` in it, before `ctl` listens: a new
    /// directory is built under a temporary name beside it and renamed
    /// into place, and in an existing one `ctl` is bound under a temporary
    /// name and renamed.
    pub fn open(path: &Path, access: Access) -> Result<CtlDir, Fatal> {
        let exists = fs::symlink_metadata(path).is_ok();
        if !exists && let Some(listener) = Self::build_aside(path, &access)? {
            let dir = Self::resolve(path)?;
            return Ok(CtlDir { dir, listener, access });
        }
        if let Err(e) = fs::create_dir(path)
            && e.kind() != io::ErrorKind::AlreadyExists
        {
            return Err(Self::create_error(path, &e));
        }
        let dir = Self::resolve(path)?;
        let _ = set_group(&dir, access.group);
        let _ = set_mode(&dir, access.dir_mode);
        let listener = Self::listen_in_place(&dir.join("ctl"), &access)?;
        Ok(CtlDir { dir, listener, access })
    }

    fn resolve(path: &Path) -> Result<PathBuf, Fatal> {
        fs::canonicalize(path).map_err(|e| {
            Fatal::new(1, format!("Cannot resolve ctl directory '{}': {}", path.display(), log::error_text(&e)))
        })
    }

    fn create_error(path: &Path, e: &io::Error) -> Fatal {
        Fatal::new(255, format!("Cannot create ctl directory '{}': {}", path.display(), log::error_text(e)))
    }

    /// Builds the directory with a listening `ctl` under a temporary name
    /// beside `path` and renames it into place. `None` when that cannot be
    /// done (the temporary paths would be too long for a socket address,
    /// the file system cannot rename without replacing, or `path` appeared
    /// meanwhile): the caller then works in place.
    fn build_aside(path: &Path, access: &Access) -> Result<Option<UnixListener>, Fatal> {
        use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
        let Some(temp) = super::temporary_name(path) else { return Ok(None) };
        let ctl = temp.join("ctl");
        if UnixAddr::new(&ctl).is_err() {
            return Ok(None);
        }
        if let Err(e) = fs::DirBuilder::new().mode(0o700).create(&temp) {
            return match e.kind() {
                io::ErrorKind::AlreadyExists => Ok(None),
                _ => Err(Self::create_error(path, &e)),
            };
        }
        let discard = |temp: &Path| {
            let _ = fs::remove_file(temp.join("ctl"));
            let _ = fs::remove_dir(temp);
        };
        let _ = set_group(&temp, access.group);
        let _ = set_mode(&temp, access.dir_mode);
        let listener = match Self::listen(&ctl, access) {
            Ok(l) => l,
            Err(e) => {
                discard(&temp);
                return Err(Self::bind_error(&path.join("ctl"), &e));
            }
        };
        match renameat2(AT_FDCWD, &temp, AT_FDCWD, path, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => Ok(Some(listener)),
            Err(nix::errno::Errno::EEXIST | nix::errno::Errno::EINVAL | nix::errno::Errno::ENOSYS) => {
                drop(listener);
                discard(&temp);
                Ok(None)
            }
            Err(e) => {
                drop(listener);
                discard(&temp);
                Err(Self::create_error(path, &io_err(e)))
            }
        }
    }

    /// Binds and listens at `path` with the `ctl` mode and group.
    fn listen(path: &Path, access: &Access) -> io::Result<UnixListener> {
        super::bind_prepared(path, |at| Self::prepare(at, access))
    }

    /// Gives a new `ctl` its mode and group; like vde_switch, a failure to
    /// do so does not stop the switch.
    fn prepare(at: &Path, access: &Access) -> io::Result<()> {
        let _ = set_group(at, access.group);
        let _ = set_mode(at, access.ctl_mode);
        Ok(())
    }

    /// Listens on `ctl` in an existing directory: bound under a temporary
    /// name and renamed over `ctl`, so that the name `ctl` goes from absent
    /// or stale straight to listening.
    fn listen_in_place(ctl: &Path, access: &Access) -> Result<UnixListener, Fatal> {
        match super::listen_atomically(ctl, |at| Self::prepare(at, access)) {
            Ok(Some(listener)) => Ok(listener),
            Ok(None) => {
                Err(Fatal::new(255, format!("Could not bind to socket '{}': Address already in use", ctl.display())))
            }
            Err(e) => Err(Self::bind_error(ctl, &e)),
        }
    }

    fn bind_error(ctl: &Path, e: &io::Error) -> Fatal {
        Fatal::new(
            255,
            format!("Could not bind to socket '{}' (second attempt): {}", ctl.display(), log::error_text(e)),
        )
    }

    /// Stops listening, then removes `ctl` and the directory unless another
    /// switch listens there now. Returns a warning to log, if any.
    pub fn cleanup(self) -> Option<String> {
        let ctl = self.dir.join("ctl");
        drop(self.listener);
        if UnixStream::connect(&ctl).is_ok() {
            return Some("Cleanup not removing files".into());
        }
        let _ = fs::remove_file(&ctl);
        fs::remove_dir(&self.dir)
            .err()
            .map(|e| format!("Cannot remove ctl directory '{}': {}", self.dir.display(), log::error_text(&e)))
    }
}

/// Why a control connection was refused.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("{0}")]
    Request(#[from] RequestError),
    /// The client's socket path cannot be reached; refused without a log line.
    #[error("client socket not accessible")]
    Inaccessible,
    #[error("Connecting to client data socket {}", log::error_text(.0))]
    Connect(io::Error),
    #[error("Refusing client: {0}")]
    Attach(#[from] AttachError),
    #[error("Cannot create data socket: {}", log::error_text(.0))]
    DataSocket(io::Error),
    #[error("Refusing client: its socket path could not be reached in time")]
    TimedOut,
}

impl HandshakeError {
    pub fn is_silent(&self) -> bool {
        matches!(self, HandshakeError::Inaccessible)
    }
}

/// A client's socket path, reached: its owner and a datagram socket
/// connected to it.
pub struct Reached {
    pub owner: Option<u32>,
    pub socket: OwnedFd,
}

/// An endpoint the handshake created.
pub struct NewEndpoint {
    pub key: EndpointKey,
    pub socket: OwnedFd,
    pub path: PathBuf,
}

fn io_err(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// A new, unconnected datagram socket for a client's data. Made on the
/// loop's thread, never in a job: the loop then knows, when it accepts or
/// sheds a connection, that no other thread is taking descriptors, and a
/// client that does not fit in the descriptor limit is refused at once.
pub fn data_socket() -> Result<OwnedFd, HandshakeError> {
    socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| HandshakeError::DataSocket(io_err(e)))
}

/// Reaches the client's socket: looks up who owns its path and connects
/// `socket` to it. With `peer`, first takes the peer's file-system
/// identity for the rest of the calling thread's life (a job thread's), so
/// a client cannot make the switch reach a socket it could not reach
/// itself. An abstract address involves no file system and needs no
/// identity.
pub fn reach(peer: Option<&Peer>, addr: &ClientAddr, socket: OwnedFd) -> Result<Reached, HandshakeError> {
    if let Some(peer) = peer {
        peer.assume().map_err(|_| HandshakeError::Inaccessible)?;
    }
    let owner = match addr.path() {
        None => None,
        Some(path) => {
            let path = Path::new(std::ffi::OsStr::from_bytes(path));
            Some(fs::metadata(path).map_err(|_| HandshakeError::Inaccessible)?.uid())
        }
    };
    sys::connect_raw(socket.as_fd(), addr).map_err(HandshakeError::Connect)?;
    Ok(Reached { owner, socket })
}

/// Serves a port request whose client socket has been reached: attaches
/// the client to a port, creates and binds its data socket and writes the
/// reply naming that socket.
pub fn handshake(
    ctl: &CtlDir,
    stream: &UnixStream,
    req: &Request,
    reached: Reached,
    switch: &mut Switch,
) -> Result<NewEndpoint, HandshakeError> {
    let peer = Peer::of(stream);
    let Reached { owner, socket } = reached;
    let request = match req.kind {
        RequestKind::NewPort0 => PortRequest::Zero,
        RequestKind::NewControl if req.port == 0 => PortRequest::Any,
        RequestKind::NewControl => PortRequest::Port(req.port),
    };
    let (key, port) = switch.attach(Attach {
        request,
        id: stream.as_raw_fd() as u32,
        module: vde::MODULE,
        description: printable(req.description),
        user: owner,
        credentials: peer.credentials(),
    })?;
    let path = ctl.dir.join(format!("{port:03}.{}", socket.as_raw_fd()));
    let finish = || -> io::Result<()> {
        let a = &ctl.access;
        // A root switch hands the socket to the client's user; port 0 then
        // takes the management socket's mode and group.
        let chown_to = owner.filter(|_| Uid::effective().is_root());
        let (mode, group) = match (request, chown_to) {
            (PortRequest::Zero, _) => (a.mgmt_mode, a.mgmt_group.or(a.group)),
            (_, Some(_)) => (a.ctl_mode & 0o700, a.group),
            (_, None) => (a.ctl_mode, a.group),
        };
        let _ = fs::remove_file(&path);
        bind_with_mode(&socket, &path, mode)?;
        // The directory may be writable by clients (`-m 0666`): never
        // follow a link someone put in the socket's place.
        lchown(&path, chown_to, group.map(Gid::as_raw))?;
        let reply = reply_for_path(path.as_os_str().as_encoded_bytes())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENAMETOOLONG))?;
        let written = nix::unistd::write(stream, &reply.0).map_err(io_err)?;
        if written != reply.0.len() {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        Ok(())
    };
    if let Err(e) = finish() {
        switch.detach(key);
        let _ = fs::remove_file(&path);
        return Err(HandshakeError::DataSocket(e));
    }
    Ok(NewEndpoint { key, socket, path })
}

/// A client's description as it may appear on a console: control
/// characters would let a client end a reply early or drive the terminal
/// of whoever reads `port/print`, so they become `?`.
fn printable(description: &[u8]) -> Vec<u8> {
    let mut shown = Vec::with_capacity(description.len());
    for chunk in description.utf8_chunks() {
        let mut buf = [0; 4];
        for c in chunk.valid().chars() {
            shown.extend_from_slice(if c.is_control() { b"?" } else { c.encode_utf8(&mut buf).as_bytes() });
        }
        // Bytes that are not UTF-8 are shown as sent, but those that are
        // C1 controls in an 8-bit character set are not.
        shown.extend(chunk.invalid().iter().map(|&b| if (0x80..0xa0).contains(&b) { b'?' } else { b }));
    }
    shown
}

/// Binds a socket at `path` with exactly `mode`: the mode is set on the
/// socket before it gets a name, so there is no moment at which the file
/// exists with other permissions, and the umask cannot narrow it.
fn bind_with_mode(socket: &OwnedFd, path: &Path, mode: u32) -> io::Result<()> {
    use nix::sys::stat::{Mode, fchmod, umask};
    fchmod(socket, Mode::from_bits_truncate(mode)).map_err(io_err)?;
    let addr = UnixAddr::new(path).map_err(io_err)?;
    let saved = umask(Mode::empty());
    let bound = bind(socket.as_raw_fd(), &addr);
    umask(saved);
    bound.map_err(io_err)
}

/// The switch's control side: accepting clients and serving handshakes.
impl Server {
    pub(super) fn accept_ctl(&mut self) {
        // A bounded batch: clients connecting as fast as the switch accepts
        // must not keep the loop here (the listener stays ready).
        for _ in 0..super::ACCEPT_BATCH {
            let stream = match super::accept(&self.ctl.listener, &mut self.reserve) {
                Accepted::Stream(stream) => stream,
                Accepted::Nothing => return,
                Accepted::Shed => {
                    self.refusals.note(|| "Out of descriptors: closed a new control connection".into());
                    continue;
                }
                Accepted::Failed(e) => return self.pause_listener(Token::Ctl, &e),
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            self.make_room_for_handshake();
            let slot = self.conns.vacant_key();
            self.serial += 1;
            let serial = self.serial;
            let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
            if self.epoll.add(&stream, interest(Token::Conn(slot, token_generation(serial)), flags)).is_ok() {
                let conn = Conn { stream, endpoint: None, accepted_at: self.now, serial, request: None };
                self.conns.insert(conn);
                self.handshakes.push_back((slot, self.serial));
            }
        }
    }

    fn is_pending(&self, slot: usize, serial: u64) -> bool {
        self.conns.get(slot).is_some_and(|c| c.endpoint.is_none() && c.serial == serial)
    }

    /// Keeps at most [`MAX_HANDSHAKES`] connections waiting for their
    /// request: at the limit, the oldest one is closed for the newcomer.
    fn make_room_for_handshake(&mut self) {
        let max = super::cap(MAX_HANDSHAKES, 4);
        if self.handshakes.len() < max {
            return;
        }
        let mut live = std::mem::take(&mut self.handshakes);
        live.retain(|&(slot, serial)| self.is_pending(slot, serial));
        self.handshakes = live;
        while self.handshakes.len() >= max
            && let Some((slot, _)) = self.handshakes.pop_front()
        {
            self.refusals.note(|| format!("{max} connections owe their request: closed the oldest"));
            self.close_conn(slot);
        }
    }

    pub(super) fn read_conn(&mut self, slot: usize, flags: EpollFlags) {
        let Some(conn) = self.conns.get_mut(slot) else { return };
        if conn.endpoint.is_some() || conn.request.is_some() {
            // Attached streams, and those whose client socket is being
            // reached, are watched for hang-up only (see below).
            if flags.intersects(EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) {
                self.close_conn(slot);
            }
            return;
        }
        let mut buf = [0u8; crate::wire::REQUEST_MAX];
        let n = match conn.stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => return,
            Err(_) => 0,
        };
        if n == 0 {
            self.close_conn(slot);
            return;
        }
        let request = &buf[..n];
        let addr = match Request::parse(request) {
            Ok(req) => req.addr,
            Err(e) => return self.refuse(slot, &HandshakeError::Request(e)),
        };
        if addr.path().is_none() {
            let reached = data_socket().and_then(|socket| reach(None, &addr, socket));
            return self.finish_handshake(slot, request, reached);
        }
        // The path may sit on a mount that hangs: reached in a job. With
        // every job slot taken the connection waits its turn; its
        // handshake time limit runs on meanwhile. Until then only a
        // hang-up matters.
        conn.request = Some(request.to_vec());
        let serial = conn.serial;
        let _ = self
            .epoll
            .modify(&conn.stream, &mut interest(Token::Conn(slot, token_generation(serial)), EpollFlags::EPOLLRDHUP));
        if !self.start_lookup(slot) {
            if self.lookups_waiting.len() >= MAX_HANDSHAKES {
                let mut waiting = std::mem::take(&mut self.lookups_waiting);
                waiting.retain(|&(slot, serial)| self.is_pending(slot, serial));
                self.lookups_waiting = waiting;
            }
            self.lookups_waiting.push_back((slot, serial));
        }
    }

    /// Starts the job reaching the client socket of the connection in
    /// `slot`. False when no job can start now; a connection whose data
    /// socket cannot be made is refused.
    fn start_lookup(&mut self, slot: usize) -> bool {
        let Some(conn) = self.conns.get(slot) else { return true };
        let Some(addr) = conn.request.as_deref().and_then(|r| Request::parse(r).ok()).map(|r| r.addr) else {
            return true;
        };
        if self.jobs.is_full() {
            return false;
        }
        let socket = match data_socket() {
            Ok(socket) => socket,
            Err(e) => {
                self.refuse(slot, &e);
                return true;
            }
        };
        let peer = Peer::of(&conn.stream);
        let waiter = Waiter::Conn(slot, conn.serial);
        self.jobs.start(waiter, LOOKUP_TIME_LIMIT, move || JobOutcome::Reached(reach(Some(&peer), &addr, socket)))
    }

    /// Starts the look-ups that waited for a free job slot, oldest first.
    pub(super) fn start_waiting_lookups(&mut self) {
        while let Some(&(slot, serial)) = self.lookups_waiting.front() {
            if self.is_pending(slot, serial) && !self.start_lookup(slot) {
                return;
            }
            self.lookups_waiting.pop_front();
        }
    }

    /// Goes on with a handshake once its client socket was reached (or not).
    pub(super) fn finish_handshake(&mut self, slot: usize, request: &[u8], reached: Result<Reached, HandshakeError>) {
        let Some(conn) = self.conns.get_mut(slot) else { return };
        conn.request = None;
        let result = reached.and_then(|reached| {
            let req = Request::parse(request)?;
            handshake(&self.ctl, &conn.stream, &req, reached, &mut self.switch)
        });
        match result {
            Ok(new) => {
                let epoll = &self.epoll;
                let (key, socket, path) = (new.key, new.socket, new.path.clone());
                let added = self
                    .data
                    .with_transport(VDE, |vde: &mut Vde, registry| vde.add(registry, epoll, key, socket, path, slot));
                match added.unwrap_or_else(|| Err(io::Error::other("no VDE transport"))) {
                    Ok((local, desc)) => self.data.attach(key, VDE, local, desc, desc),
                    Err(e) => {
                        self.refusals.note(|| format!("epoll add data socket: {e}"));
                        self.switch.detach(new.key);
                        let _ = fs::remove_file(&new.path);
                        self.close_conn(slot);
                        return;
                    }
                }
                conn.endpoint = Some(new.key);
                // From now on only the end of the stream matters. Not
                // reading it also means a client writing without pause
                // fills its own socket buffer, not the switch's time.
                let _ = self.epoll.modify(
                    &conn.stream,
                    &mut interest(Token::Conn(slot, token_generation(conn.serial)), EpollFlags::EPOLLRDHUP),
                );
            }
            Err(e) => self.refuse(slot, &e),
        }
    }

    /// Job outcome for a control connection: `None` when reaching its
    /// client socket took too long.
    pub(super) fn reached(&mut self, slot: usize, serial: u64, outcome: Option<Result<Reached, HandshakeError>>) {
        let Some(conn) = self.conns.get(slot).filter(|c| c.serial == serial) else { return };
        let Some(request) = conn.request.clone() else { return };
        self.finish_handshake(slot, &request, outcome.unwrap_or(Err(HandshakeError::TimedOut)));
    }

    /// Closes a connection whose request was refused, logging why (at a
    /// bounded rate: any local user may send bad requests).
    fn refuse(&mut self, slot: usize, e: &HandshakeError) {
        if !e.is_silent() {
            self.refusals.note(|| e.to_string());
        }
        self.close_conn(slot);
    }

    /// Closes connections that have not sent their request in time.
    pub(super) fn expire_handshakes(&mut self) {
        while let Some(&(slot, serial)) = self.handshakes.front() {
            if self.is_pending(slot, serial) {
                if self.conns[slot].accepted_at + HANDSHAKE_TIMEOUT > self.now {
                    break;
                }
                self.close_conn(slot);
            }
            self.handshakes.pop_front();
        }
    }

    /// Closes a control connection, detaching its endpoint if it has one.
    pub(super) fn close_conn(&mut self, slot: usize) {
        let Some(conn) = self.conns.try_remove(slot) else { return };
        let _ = self.epoll.delete(&conn.stream);
        if conn.request.is_some() {
            self.jobs.forget(Waiter::Conn(slot, conn.serial));
        }
        if let Some(key) = conn.endpoint {
            self.switch.detach(key);
            self.data.remove(&self.epoll, key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{modes, printable};

    #[test]
    fn descriptions_keep_their_bytes_but_not_control_characters() {
        assert_eq!(printable(b"caf\xe9 \xc3\xa9t\xe9"), b"caf\xe9 \xc3\xa9t\xe9");
        assert_eq!(printable(b"a\nb\x1b[2J\x7f"), b"a?b?[2J?");
        assert_eq!(printable(b"c1 \xc2\x9b and \x9b"), b"c1 ? and ?");
    }

    #[test]
    fn mode_derivation_matches_reference() {
        assert_eq!(modes(None, None), (0o600, 0o2700));
        assert_eq!(modes(Some(0o660), None), (0o660, 0o2770));
        assert_eq!(modes(Some(0o666), None), (0o666, 0o2777));
        assert_eq!(modes(Some(0o640), None), (0o640, 0o2750));
        assert_eq!(modes(None, Some(0o750)), (0o640, 0o750));
        assert_eq!(modes(Some(0o600), Some(0o755)), (0o600, 0o755));
    }
}
