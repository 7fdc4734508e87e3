//! The control-stream handshake: a client's port request and the switch's
//! reply naming the data socket to talk to.

/// `struct sockaddr_un` on Linux: 2-byte family and a 108-byte path.
pub const SOCKADDR_UN_LEN: usize = 110;
/// The switch reads a request with a single read of at most this many bytes.
pub const REQUEST_MAX: usize = 256;

const MAGIC: u32 = 0xfeed_face;
const V3_FIXED: usize = 122;
const V1_FIXED: usize = 124;
const AF_UNIX: u16 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// An ordinary endpoint; `Request::port` names the port or is 0 for any.
    NewControl,
    /// The management port 0.
    NewPort0,
}

/// The client's datagram socket address, kept byte for byte: UML binds an
/// abstract name that spans the whole path field, garbage included, so the
/// switch must connect to exactly these 110 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub [u8; SOCKADDR_UN_LEN]);

impl ClientAddr {
    fn path_field(&self) -> &[u8] {
        &self.0[2..]
    }

    /// Abstract-namespace addresses start with a NUL byte.
    pub fn is_abstract(&self) -> bool {
        self.path_field()[0] == 0
    }

    /// The filesystem path of a non-abstract address, up to its first NUL.
    pub fn path(&self) -> Option<&[u8]> {
        if self.is_abstract() {
            return None;
        }
        let field = self.path_field();
        let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
        Some(&field[..end])
    }
}

impl std::fmt::Debug for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.path() {
            Some(p) => write!(f, "ClientAddr({:?})", String::from_utf8_lossy(p)),
            None => write!(f, "ClientAddr(<abstract>)"),
        }
    }
}

/// A parsed port request (v1 or v3 layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub kind: RequestKind,
    /// Requested port; 0 asks for an automatically allocated one.
    pub port: u32,
    pub addr: ClientAddr,
    /// Free text after the fixed part, cut at the first NUL.
    pub description: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("V0 request not supported")]
    BadMagic,
    #[error("Request for a version {0} port, which this vde_switch doesn't support")]
    UnsupportedVersion(u32),
    #[error("Bad request type : {0}")]
    BadType(u32),
}

fn word(bytes: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    for (i, b) in w.iter_mut().enumerate() {
        *b = bytes.get(at + i).copied().unwrap_or(0);
    }
    u32::from_ne_bytes(w)
}

fn client_addr(bytes: &[u8], at: usize) -> ClientAddr {
    let mut addr = [0u8; SOCKADDR_UN_LEN];
    if let Some(src) = bytes.get(at..) {
        let n = src.len().min(SOCKADDR_UN_LEN);
        addr[..n].copy_from_slice(&src[..n]);
    }
    ClientAddr(addr)
}

fn description(bytes: &[u8], at: usize) -> &[u8] {
    let tail = bytes.get(at..).unwrap_or(&[]);
    let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
    &tail[..end]
}

impl<'a> Request<'a> {
    /// Parses what one read of the control stream returned. Bytes the client
    /// did not send read as zero.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, RequestError> {
        let bytes = &bytes[..bytes.len().min(REQUEST_MAX)];
        if word(bytes, 0) != MAGIC {
            return Err(RequestError::BadMagic);
        }
        let (ty, addr_at, fixed) = match word(bytes, 4) {
            3 => (word(bytes, 8), 12, V3_FIXED),
            v1_type @ (0 | 1) => (v1_type, 14, V1_FIXED),
            version => return Err(RequestError::UnsupportedVersion(version)),
        };
        let kind = match ty & 0xff {
            0 => RequestKind::NewControl,
            1 => RequestKind::NewPort0,
            other => return Err(RequestError::BadType(other)),
        };
        Ok(Request { kind, port: ty >> 8, addr: client_addr(bytes, addr_at), description: description(bytes, fixed) })
    }

    /// Serialises a v3 request (used by tests and the benchmark clients).
    pub fn encode_v3(kind: RequestKind, port: u32, addr: &ClientAddr, descr: &[u8]) -> Vec<u8> {
        let ty = port << 8
            | match kind {
                RequestKind::NewControl => 0,
                RequestKind::NewPort0 => 1,
            };
        let mut out = Vec::with_capacity(V3_FIXED + descr.len());
        out.extend_from_slice(&MAGIC.to_ne_bytes());
        out.extend_from_slice(&3u32.to_ne_bytes());
        out.extend_from_slice(&ty.to_ne_bytes());
        out.extend_from_slice(&addr.0);
        out.extend_from_slice(descr);
        out
    }
}

/// A `sockaddr_un` for `path`, NUL-padded; `None` if the path does not fit.
pub fn reply_for_path(path: &[u8]) -> Option<ClientAddr> {
    if path.len() >= SOCKADDR_UN_LEN - 2 {
        return None;
    }
    let mut addr = [0u8; SOCKADDR_UN_LEN];
    addr[..2].copy_from_slice(&AF_UNIX.to_ne_bytes());
    addr[2..2 + path.len()].copy_from_slice(path);
    Some(ClientAddr(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v3(ty: u32, path: &[u8], descr: &[u8]) -> Vec<u8> {
        let mut b = MAGIC.to_ne_bytes().to_vec();
        b.extend_from_slice(&3u32.to_ne_bytes());
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(&reply_for_path(path).unwrap().0);
        b.extend_from_slice(descr);
        b
    }

    #[test]
    fn v3_with_port_and_description() {
        let bytes = v3(7 << 8, b"/tmp/sw/.01234-00000", b"vdeplug: user=root pid=1\0junk");
        let req = Request::parse(&bytes).unwrap();
        assert_eq!(req.kind, RequestKind::NewControl);
        assert_eq!(req.port, 7);
        assert_eq!(req.addr.path(), Some(&b"/tmp/sw/.01234-00000"[..]));
        assert_eq!(req.description, b"vdeplug: user=root pid=1");
    }

    #[test]
    fn port0_ignores_port_bits() {
        let bytes = v3(5 << 8 | 1, b"/x", b"");
        assert_eq!(Request::parse(&bytes).unwrap().kind, RequestKind::NewPort0);
    }

    #[test]
    fn uml_daemon_request_is_124_bytes_with_abstract_address() {
        let mut b = MAGIC.to_ne_bytes().to_vec();
        b.extend_from_slice(&3u32.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&1u16.to_ne_bytes());
        b.push(0);
        b.extend((0..107).map(|i| i as u8 | 0x80));
        b.extend_from_slice(&[0, 0]);
        assert_eq!(b.len(), 124);
        let req = Request::parse(&b).unwrap();
        assert!(req.addr.is_abstract());
        assert_eq!(req.addr.path(), None);
        assert_eq!(req.description, b"");
        assert_eq!(&req.addr.0[3..], &b[15..122]);
    }

    #[test]
    fn v1_layout() {
        let mut b = MAGIC.to_ne_bytes().to_vec();
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        b.extend_from_slice(&reply_for_path(b"/tmp/c").unwrap().0);
        b.extend_from_slice(b"old");
        let req = Request::parse(&b).unwrap();
        assert_eq!(req.port, 0);
        assert_eq!(req.addr.path(), Some(&b"/tmp/c"[..]));
        assert_eq!(req.description, b"old");
    }

    #[test]
    fn rejections() {
        assert_eq!(Request::parse(b"hello").unwrap_err(), RequestError::BadMagic);
        assert_eq!(Request::parse(&[]).unwrap_err(), RequestError::BadMagic);
        let mut b = v3(0, b"/x", b"");
        b[4..8].copy_from_slice(&2u32.to_ne_bytes());
        assert_eq!(Request::parse(&b).unwrap_err(), RequestError::UnsupportedVersion(2));
        b[4..8].copy_from_slice(&1280u32.to_ne_bytes());
        assert_eq!(Request::parse(&b).unwrap_err(), RequestError::UnsupportedVersion(1280));
        let b = v3(2, b"/x", b"");
        assert_eq!(Request::parse(&b).unwrap_err(), RequestError::BadType(2));
    }

    #[test]
    fn truncated_request_reads_missing_bytes_as_zero() {
        let b = v3(0, b"/tmp/abc", b"");
        let req = Request::parse(&b[..20]).unwrap();
        assert_eq!(req.addr.path(), Some(&b"/tmp/a"[..]));
        assert!(req.description.is_empty());
    }

    #[test]
    fn never_panics_on_any_prefix() {
        let b = v3(3 << 8, b"/tmp/sw/.1", b"descr");
        for n in 0..b.len() {
            let _ = Request::parse(&b[..n]);
        }
    }
}
