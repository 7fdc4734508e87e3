//! A VDE client written from the spec (§3), independent of libvdeplug:
//! a datagram socket of its own, a control stream to `DIR/ctl` carrying a
//! v3 request, and the 110-byte reply naming the switch's data socket.

use std::ffi::OsStr;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use vswitch::wire::{Request, RequestKind, SOCKADDR_UN_LEN, reply_for_path};

use super::EVENT_TIMEOUT;
use super::frames::describe;
use super::station::Station;

/// Larger than any datagram a switch may send, so truncation by the switch
/// is visible and not caused by us.
const RECV_BUFFER: usize = 65536;

/// What the switch did with a control connection after the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeOutcome {
    /// It sent these bytes (a proper reply is 110 bytes).
    Reply(Vec<u8>),
    /// It closed the stream without replying.
    Closed,
    /// It neither replied nor closed within the timeout (2.3.2 does this
    /// on failed port requests, spec §3.4).
    NoReply,
}

/// Writes `request` in one write to a new connection to `ctl_dir/ctl` and
/// reports how the switch reacted.
pub fn raw_handshake(ctl_dir: &Path, request: &[u8]) -> HandshakeOutcome {
    handshake(ctl_dir, request).0
}

fn handshake(ctl_dir: &Path, request: &[u8]) -> (HandshakeOutcome, UnixStream) {
    let ctl_path = ctl_dir.join("ctl");
    let mut stream = UnixStream::connect(&ctl_path).unwrap_or_else(|e| panic!("connect to {ctl_path:?}: {e}"));
    (send_request(&mut stream, request), stream)
}

/// Sends `request` on a connected control stream and waits for the reply.
pub fn send_request(stream: &mut UnixStream, request: &[u8]) -> HandshakeOutcome {
    match stream.write_all(request) {
        Ok(()) => {}
        // Closed before the request arrived (a connection shed for lack of
        // descriptors is closed as soon as it is accepted).
        Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {
            return HandshakeOutcome::Closed;
        }
        Err(e) => panic!("write {}-byte request: {e}", request.len()),
    }
    stream.set_read_timeout(Some(EVENT_TIMEOUT)).expect("set control read timeout");
    let mut reply = Vec::new();
    let mut chunk = [0u8; 256];
    // The reply is one write, but the stream may still split it.
    loop {
        match stream.read(&mut chunk) {
            Ok(0) if reply.is_empty() => return HandshakeOutcome::Closed,
            Ok(0) => return HandshakeOutcome::Reply(reply),
            Ok(n) => {
                reply.extend_from_slice(&chunk[..n]);
                if reply.len() >= SOCKADDR_UN_LEN {
                    return HandshakeOutcome::Reply(reply);
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset && reply.is_empty() => {
                return HandshakeOutcome::Closed;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return if reply.is_empty() { HandshakeOutcome::NoReply } else { HandshakeOutcome::Reply(reply) };
            }
            Err(e) => panic!("read handshake reply: {e}"),
        }
    }
}

/// Path for a new client datagram socket inside `dir`, unique within this
/// process, in the style of libvdeplug's `.PPPPP-SSSSS`.
pub fn unique_socket_path(dir: &Path) -> PathBuf {
    static SEQUENCE: AtomicU32 = AtomicU32::new(0);
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".test-{}-{seq}", std::process::id()))
}

/// A v3 request for the datagram socket bound at `socket_path`.
pub fn v3_request(kind: RequestKind, port: u32, socket_path: &Path, descr: impl AsRef<[u8]>) -> Vec<u8> {
    let addr = reply_for_path(socket_path.as_os_str().as_bytes())
        .unwrap_or_else(|| panic!("{socket_path:?} does not fit in a sockaddr_un"));
    Request::encode_v3(kind, port, &addr, descr.as_ref())
}

/// An attached endpoint. Dropping it closes both sockets (the switch then
/// removes the endpoint) and unlinks its socket file.
pub struct Client {
    name: String,
    data: UnixDatagram,
    socket_path: PathBuf,
    /// The control stream; closing it detaches the endpoint.
    ctl: Option<UnixStream>,
    /// The switch's data socket `DIR/NNN.M` named in the reply.
    switch_socket: PathBuf,
}

impl Client {
    /// Attaches to port `port`, or to an automatically chosen port if
    /// `None`, with description `descr`. Panics if the switch refuses.
    pub fn connect(ctl_dir: &Path, port: Option<u32>, descr: &str) -> Client {
        Client::connect_as(ctl_dir, RequestKind::NewControl, port.unwrap_or(0), descr.as_bytes())
    }

    /// Attaches with a request of `kind` for `port` (`NewPort0` asks for
    /// the management port 0) and a description of any bytes. Panics if
    /// the switch refuses.
    pub fn connect_as(ctl_dir: &Path, kind: RequestKind, port: u32, descr: &[u8]) -> Client {
        Client::try_connect(ctl_dir, kind, port, descr).unwrap_or_else(|outcome| {
            panic!("switch refused client {:?} ({kind:?}, port {port}): {outcome:?}", String::from_utf8_lossy(descr))
        })
    }

    /// Sends a request of `kind` for `port` and returns the client, or how
    /// the switch reacted if it did not send a proper reply.
    fn try_connect(ctl_dir: &Path, kind: RequestKind, port: u32, descr: &[u8]) -> Result<Client, HandshakeOutcome> {
        let socket_path = unique_socket_path(ctl_dir);
        let data =
            UnixDatagram::bind(&socket_path).unwrap_or_else(|e| panic!("bind client socket {socket_path:?}: {e}"));
        let request = v3_request(kind, port, &socket_path, descr);
        let (outcome, ctl) = handshake(ctl_dir, &request);
        let reply = match outcome {
            HandshakeOutcome::Reply(reply) => reply,
            refused => {
                let _ = std::fs::remove_file(&socket_path);
                return Err(refused);
            }
        };
        let switch_socket = parse_reply(&reply);
        data.connect(&switch_socket).unwrap_or_else(|e| panic!("connect to switch data socket {switch_socket:?}: {e}"));
        // A send blocks while the switch's receive queue is full; a switch
        // that stopped reading must fail the test, not hang it.
        data.set_write_timeout(Some(EVENT_TIMEOUT)).expect("set data write timeout");
        Ok(Client {
            name: String::from_utf8_lossy(descr).into_owned(),
            data,
            socket_path,
            ctl: Some(ctl),
            switch_socket,
        })
    }

    /// The switch's data socket this client talks to (`DIR/NNN.M`).
    pub fn switch_socket(&self) -> &Path {
        &self.switch_socket
    }

    /// The port number, read from the `NNN.` prefix of the data socket name.
    pub fn port(&self) -> u32 {
        let name = self.switch_socket.file_name().unwrap().to_string_lossy();
        let (number, _) =
            name.split_once('.').unwrap_or_else(|| panic!("data socket name {name:?} lacks the NNN. prefix"));
        number.parse().expect("numeric port prefix")
    }

    /// The control stream, e.g. to write junk after the handshake.
    pub fn ctl(&self) -> &UnixStream {
        self.ctl.as_ref().expect("control stream still open")
    }

    /// Whether the switch closes the control stream within `wait`. Panics
    /// if it sends anything: nothing follows the handshake reply.
    pub fn ctl_closed_within(&self, wait: Duration) -> bool {
        let mut ctl = self.ctl();
        ctl.set_read_timeout(Some(wait)).expect("set control read timeout");
        let mut buf = [0u8; 16];
        loop {
            match ctl.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => panic!("{}: switch sent {n} bytes on the control stream after the handshake", self.name),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return false,
                Err(e) => panic!("{}: read control stream: {e}", self.name),
            }
        }
    }

    /// Closes the control stream: the switch must remove this endpoint.
    pub fn close_ctl(&mut self) {
        self.ctl = None;
    }
}

/// Checks the reply layout (family AF_UNIX, NUL-padded path, 110 bytes)
/// and returns the path.
fn parse_reply(reply: &[u8]) -> PathBuf {
    assert_eq!(reply.len(), SOCKADDR_UN_LEN, "handshake reply must be one sockaddr_un, got {reply:02x?}");
    assert_eq!(u16::from_ne_bytes([reply[0], reply[1]]), libc::AF_UNIX as u16, "reply family");
    let path = &reply[2..];
    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
    assert!(path[end..].iter().all(|&b| b == 0), "reply path not NUL-padded: {reply:02x?}");
    PathBuf::from(OsStr::from_bytes(&path[..end]))
}

impl Station for Client {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&self, frame: &[u8]) {
        self.data.send(frame).unwrap_or_else(|e| panic!("{} cannot send {}: {e}", self.name, describe(frame)));
    }

    fn recv_timeout(&self, timeout: Duration) -> Option<Vec<u8>> {
        // A zero timeout would mean "block forever".
        self.data.set_read_timeout(Some(timeout.max(Duration::from_millis(1)))).expect("set data read timeout");
        let mut buf = vec![0u8; RECV_BUFFER];
        loop {
            match self.data.recv(&mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    return Some(buf);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return None,
                Err(e) => panic!("{} cannot receive: {e}", self.name),
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket_path);
    }
}
