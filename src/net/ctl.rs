//! The control directory: its `ctl` listener, the handshake that turns a
//! control connection into an endpoint, and the per-endpoint data sockets.

use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown, lchown};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::epoll::EpollFlags;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, bind, socket};
use nix::unistd::{Gid, Uid};

use super::data::LinkKind;
use super::{Conn, Fatal, HANDSHAKE_TIMEOUT, Server, Token, interest, log, sys};
use crate::engine::{Attach, AttachError, Credentials, EndpointKey, Module, PortRequest, Switch};
use crate::wire::{Request, RequestError, RequestKind, reply_for_path};

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
    /// replacing a stale socket but never a live switch's.
    pub fn open(path: &Path, access: Access) -> Result<CtlDir, Fatal> {
        match fs::create_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(Fatal::new(
                    255,
                    format!("Cannot create ctl directory '{}': {}", path.display(), log::error_text(&e)),
                ));
            }
        }
        let dir = fs::canonicalize(path).map_err(|e| {
            Fatal::new(1, format!("Cannot resolve ctl directory '{}': {}", path.display(), log::error_text(&e)))
        })?;
        let _ = set_group(&dir, access.group);
        let _ = set_mode(&dir, access.dir_mode);
        let ctl = dir.join("ctl");
        let listener = match super::listen_at(&ctl) {
            Ok(Some(l)) => l,
            Ok(None) => {
                return Err(Fatal::new(
                    255,
                    format!("Could not bind to socket '{}': Address already in use", ctl.display()),
                ));
            }
            Err(_) => UnixListener::bind(&ctl).map_err(|e| Self::bind_error(&ctl, &e))?,
        };
        listener.set_nonblocking(true).map_err(|e| Self::bind_error(&ctl, &e))?;
        let _ = set_group(&ctl, access.group);
        let _ = set_mode(&ctl, access.ctl_mode);
        Ok(CtlDir { dir, listener, access })
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
}

impl HandshakeError {
    pub fn is_silent(&self) -> bool {
        matches!(self, HandshakeError::Inaccessible)
    }
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

/// Serves one port request read from a control connection: checks the
/// client, attaches it to a port, creates and binds its data socket and
/// writes the reply naming that socket.
pub fn handshake(
    ctl: &CtlDir,
    stream: &UnixStream,
    request: &[u8],
    switch: &mut Switch,
) -> Result<NewEndpoint, HandshakeError> {
    let req = Request::parse(request)?;
    let peer = Peer::of(stream);
    let owner = match req.addr.path() {
        None => None,
        Some(path) => {
            let path = Path::new(std::ffi::OsStr::from_bytes(path));
            Some(peer.impersonate(|| fs::metadata(path)).map_err(|_| HandshakeError::Inaccessible)?.uid())
        }
    };
    let socket =
        socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)
            .map_err(|e| HandshakeError::DataSocket(io_err(e)))?;
    peer.impersonate(|| sys::connect_raw(socket.as_fd(), &req.addr)).map_err(HandshakeError::Connect)?;
    let request = match req.kind {
        RequestKind::NewPort0 => PortRequest::Zero,
        RequestKind::NewControl if req.port == 0 => PortRequest::Any,
        RequestKind::NewControl => PortRequest::Port(req.port),
    };
    let (key, port) = switch.attach(Attach {
        request,
        id: stream.as_raw_fd() as u32,
        module: Module::UnixProg,
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

/// The process at the other end of a control connection, as the kernel
/// knows it.
struct Peer {
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
}

impl Peer {
    fn of(stream: &UnixStream) -> Peer {
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
        let Ok(cred) = getsockopt(stream, PeerCredentials) else {
            // Unknown peers get an identity that owns nothing.
            return Peer { uid: Uid::from_raw(u32::MAX - 1), gid: Gid::from_raw(u32::MAX - 1), groups: Vec::new() };
        };
        let gid = Gid::from_raw(cred.gid());
        let groups = sys::peer_groups(stream.as_fd()).map(|g| g.into_iter().map(Gid::from_raw).collect());
        Peer { uid: Uid::from_raw(cred.uid()), gid, groups: groups.unwrap_or_default() }
    }

    fn credentials(&self) -> Credentials {
        let mut gids: Vec<u32> = self.groups.iter().map(|g| g.as_raw()).collect();
        gids.push(self.gid.as_raw());
        Credentials { uid: self.uid.as_raw(), gids }
    }

    /// Runs `f` with the peer's file-system identity, so the client's
    /// socket path is looked up and connected to with the peer's rights,
    /// not the switch's: a client cannot make the switch reach a socket it
    /// could not reach itself. Only a root switch has another identity to
    /// borrow; otherwise the kernel already checks with the switch's own.
    fn impersonate<T>(&self, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        use nix::unistd::{getgroups, setfsgid, setfsuid, setgroups};
        if !Uid::effective().is_root() || self.uid.is_root() {
            return f();
        }
        let saved = getgroups().map_err(io_err)?;
        setgroups(&self.groups).map_err(io_err)?;
        setfsgid(self.gid);
        setfsuid(self.uid);
        let result = f();
        setfsuid(Uid::effective());
        setfsgid(Gid::effective());
        setgroups(&saved).map_err(io_err)?;
        result
    }
}

/// The switch's control side: accepting clients and serving handshakes.
impl Server {
    pub(super) fn accept_ctl(&mut self) {
        loop {
            match self.ctl.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let slot = self.conns.vacant_key();
                    let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
                    if self.epoll.add(&stream, interest(Token::Conn(slot), flags)).is_ok() {
                        self.conns.insert(Conn { stream, endpoint: None, accepted_at: self.now });
                        self.handshakes.push_back((slot, self.now));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.pause_listener(Token::Ctl, &e),
            }
        }
    }

    pub(super) fn read_conn(&mut self, slot: usize, flags: EpollFlags) {
        let Some(conn) = self.conns.get_mut(slot) else { return };
        if conn.endpoint.is_some() {
            // Attached streams are watched for hang-up only (see below).
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
        match handshake(&self.ctl, &conn.stream, &buf[..n], &mut self.switch) {
            Ok(new) => {
                let kind = LinkKind::Socket { path: new.path.clone(), conn: slot };
                if let Err(e) = self.data.add(&self.epoll, new.key, new.socket, kind) {
                    log::log(&format!("epoll add data socket: {e}"));
                    self.switch.detach(new.key);
                    let _ = fs::remove_file(&new.path);
                    self.close_conn(slot);
                    return;
                }
                conn.endpoint = Some(new.key);
                // From now on only the end of the stream matters. Not
                // reading it also means a client writing without pause
                // fills its own socket buffer, not the switch's time.
                let _ = self.epoll.modify(&conn.stream, &mut interest(Token::Conn(slot), EpollFlags::EPOLLRDHUP));
            }
            Err(e) => {
                if !e.is_silent() {
                    log::log(&e.to_string());
                }
                self.close_conn(slot);
            }
        }
    }

    /// Closes connections that have not sent their request in time.
    pub(super) fn expire_handshakes(&mut self) {
        while let Some(&(slot, accepted_at)) = self.handshakes.front() {
            if accepted_at + HANDSHAKE_TIMEOUT > self.now {
                break;
            }
            self.handshakes.pop_front();
            let still_waiting =
                self.conns.get(slot).is_some_and(|c| c.endpoint.is_none() && c.accepted_at == accepted_at);
            if still_waiting {
                self.close_conn(slot);
            }
        }
    }

    /// Closes a control connection, detaching its endpoint if it has one.
    pub(super) fn close_conn(&mut self, slot: usize) {
        let Some(conn) = self.conns.try_remove(slot) else { return };
        let _ = self.epoll.delete(&conn.stream);
        if let Some(key) = conn.endpoint {
            self.switch.detach(key);
            if let Some(path) = self.data.remove(&self.epoll, key).as_ref().and_then(|l| l.path()) {
                let _ = fs::remove_file(path);
            }
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
