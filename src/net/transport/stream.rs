//! `--stream PATH`: a Unix stream listener for QEMU's `-netdev stream`
//! (and anything else speaking its framing, as passt and socket_vmnet
//! do): every frame is preceded by its length as a 4-byte big-endian
//! integer. Every accepted connection is an endpoint on a port of its own.
//!
//! Frames are reassembled across reads in a per-connection buffer, many
//! per read. A record length of 0 or above the largest tagged Ethernet
//! frame cannot be resynchronised: the connection is closed, logged and
//! counted. Output goes through the data plane's queue like any other
//! endpoint's, so a peer that does not read paces its senders and then
//! has frames dropped as `socket-full`; a record written in part is
//! finished before anything else is sent.

use std::io::{self, IoSlice, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::sys::epoll::Epoll;
use nix::unistd::Gid;
use slab::Slab;

use super::{Arrival, Batch, DescId, Registry, Sent, StreamListener, Transport, TransportId, Verdict, describe_peer};
use crate::engine::EndpointKey;
use crate::net::log;
use crate::net::sys::BATCH;
use crate::wire::VLAN_TAG_LEN;

pub const MODULE: &str = "stream";

/// The tag of the listening socket; connections are tagged by their slot.
const LISTENER: u32 = u32::MAX;
/// Bytes read at once: many small frames per system call.
const READ_SIZE: usize = 16 * 1024;

struct Conn {
    stream: UnixStream,
    /// Set once registered; the key once admitted.
    desc: Option<DescId>,
    key: Option<EndpointKey>,
    /// Received bytes not yet delivered: `buf[start..end]`. Room for a
    /// read on top of a partial record, allocated once.
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The end of the stream, or a read error, met after frames that were
    /// delivered first.
    ended: Option<io::Error>,
}

impl Conn {
    /// The next record's frame length, if its header is in.
    fn next_len(&self) -> Option<usize> {
        let head = self.buf[..self.end].get(self.start..self.start + 4)?;
        Some(u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize)
    }

    fn has_record(&self, max_record: usize) -> bool {
        match self.next_len() {
            Some(len) if !(1..=max_record).contains(&len) => true,
            Some(len) => self.end - self.start >= 4 + len,
            None => false,
        }
    }
}

pub struct Stream {
    id: TransportId,
    listener: StreamListener,
    conns: Slab<Conn>,
    /// The longest record: the longest frame the switch carries (`--mtu`)
    /// with room for an 802.1Q tag.
    max_record: usize,
    /// Connections closed for a bad record length, since start.
    bad_lengths: u64,
    /// Connections accepted since the data plane last asked for arrivals.
    fresh: Vec<usize>,
}

impl Stream {
    /// Listens at `path` with `ctl`'s mode and group and registers the
    /// listener; records carry frames of up to `max_frame` bytes.
    pub fn open(
        id: TransportId,
        path: &Path,
        mode: u32,
        group: Option<Gid>,
        max_frame: usize,
        registry: &mut Registry,
        epoll: &Epoll,
    ) -> io::Result<Stream> {
        let listener = StreamListener::open(path, mode, group, (registry, epoll), (id, LISTENER))?;
        let max_record = max_frame + VLAN_TAG_LEN;
        Ok(Stream { id, listener, conns: Slab::new(), max_record, bad_lengths: 0, fresh: Vec::new() })
    }

    fn accept(&mut self) -> io::Result<usize> {
        let Stream { listener, conns, fresh, max_record, .. } = self;
        listener.accept(|stream| {
            let buf = vec![0; READ_SIZE + 4 + *max_record].into_boxed_slice();
            let conn = Conn { stream, desc: None, key: None, buf, start: 0, end: 0, ended: None };
            fresh.push(conns.insert(conn));
        })
    }

    /// Moves up to `max` whole records of connection `tag` into `rx`,
    /// reading more while fewer are buffered.
    fn reassemble(&mut self, tag: u32, rx: &mut Batch, max: usize) -> io::Result<usize> {
        let max_record = self.max_record.min(rx.size());
        let Some(conn) = self.conns.get_mut(tag as usize) else { return Ok(0) };
        let Some(key) = conn.key else { return Ok(0) };
        let mut n = 0;
        // A bad length ends the connection, but only after the frames
        // before it have gone; it is met again by the next call.
        let mut bad = false;
        loop {
            while n < max
                && let Some(len) = conn.next_len()
            {
                if !(1..=max_record).contains(&len) {
                    if n > 0 {
                        bad = true;
                        break;
                    }
                    return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame length {len}")));
                }
                let record = conn.start + 4..conn.start + 4 + len;
                let Some(frame) = conn.buf[..conn.end].get(record.clone()) else { break };
                rx.buf_mut(n)[..len].copy_from_slice(frame);
                rx.set_frame(n, 0, len);
                conn.start = record.end;
                n += 1;
            }
            if n == max || bad {
                break;
            }
            if conn.start > 0 {
                conn.buf.copy_within(conn.start..conn.end, 0);
                conn.end -= conn.start;
                conn.start = 0;
            }
            if let Some(e) = conn.ended.take() {
                if n > 0 {
                    conn.ended = Some(e);
                    break;
                }
                return Err(e);
            }
            // What is left is part of one record (its length checked), so
            // a read's worth of room remains.
            match conn.stream.read(&mut conn.buf[conn.end..]) {
                Ok(0) => conn.ended = Some(io::Error::from(io::ErrorKind::UnexpectedEof)),
                Ok(read) => conn.end += read,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => conn.ended = Some(e),
            }
        }
        rx.set_sources(0..n, key.0);
        Ok(n)
    }
}

/// The 4-byte big-endian length that precedes a frame on the stream.
fn header(frame: &[u8]) -> [u8; 4] {
    (frame.len() as u32).to_be_bytes()
}

impl Transport for Stream {
    fn recv(&mut self, tag: u32, rx: &mut Batch, max: usize) -> io::Result<usize> {
        if tag == LISTENER { self.accept() } else { self.reassemble(tag, rx, max) }
    }

    /// Writes whole records with one `writev`; `offset` is how many bytes
    /// of the first record (header included) went before.
    fn send(&mut self, endpoint: u32, frames: &[&[u8]], offset: usize) -> Sent {
        let Some(conn) = self.conns.get(endpoint as usize) else {
            return Sent { frames: frames.len(), offset: 0, error: None };
        };
        let frames = &frames[..frames.len().min(BATCH)];
        let mut headers = [[0u8; 4]; BATCH];
        for (head, frame) in headers.iter_mut().zip(frames) {
            *head = header(frame);
        }
        let mut iovs = [IoSlice::new(&[]); 2 * BATCH];
        let mut count = 0;
        for (i, (frame, head)) in frames.iter().zip(&headers).enumerate() {
            let skip = if i == 0 { offset } else { 0 };
            if skip < 4 {
                iovs[count] = IoSlice::new(&head[skip..]);
                iovs[count + 1] = IoSlice::new(frame);
                count += 2;
            } else {
                iovs[count] = IoSlice::new(&frame[(skip - 4).min(frame.len())..]);
                count += 1;
            }
        }
        let written = loop {
            match nix::sys::uio::writev(conn.stream.as_fd(), &iovs[..count]) {
                Ok(n) => break n,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Sent { frames: 0, offset, error: Some(e.into()) },
            }
        };
        // Walk the records the write covered.
        let mut left = written + offset;
        let mut whole = 0;
        for frame in frames {
            let record = 4 + frame.len();
            if left < record {
                break;
            }
            left -= record;
            whole += 1;
        }
        if whole == frames.len() {
            Sent { frames: whole, offset: 0, error: None }
        } else {
            Sent { frames: whole, offset: left, error: Some(io::ErrorKind::WouldBlock.into()) }
        }
    }

    fn fd(&self, tag: u32) -> BorrowedFd<'_> {
        if tag == LISTENER { self.listener.fd() } else { self.conns[tag as usize].stream.as_fd() }
    }

    fn failure(&mut self, tag: u32, failed: Option<&io::Error>) -> Verdict {
        if tag == LISTENER {
            return StreamListener::verdict(failed);
        }
        let Some(key) = self.conns.get(tag as usize).and_then(|c| c.key) else { return Verdict::Keep };
        let reason = match failed {
            None => None,
            Some(e) if e.kind() == io::ErrorKind::UnexpectedEof => None,
            Some(e) if e.kind() == io::ErrorKind::InvalidData => {
                self.bad_lengths += 1;
                Some(format!("{e} ({} connections closed for bad lengths)", self.bad_lengths))
            }
            Some(e) if e.kind() == io::ErrorKind::ConnectionReset => None,
            Some(e) => Some(log::error_text(e)),
        };
        Verdict::Close { endpoint: key, what: "stream connection", reason }
    }

    fn send_call(&self) -> &'static str {
        "send_stream"
    }

    fn close(&mut self, endpoint: u32, registry: &mut Registry, epoll: &Epoll) {
        if let Some(conn) = self.conns.try_remove(endpoint as usize)
            && let Some(desc) = conn.desc
        {
            registry.remove(epoll, desc, conn.stream.as_fd());
        }
    }

    fn arrivals(&mut self, registry: &mut Registry, epoll: &Epoll) -> Vec<Arrival> {
        let mut arrivals = Vec::new();
        for local in std::mem::take(&mut self.fresh) {
            let Some(conn) = self.conns.get_mut(local) else { continue };
            let desc = match registry.add(epoll, conn.stream.as_fd(), self.id, local as u32) {
                Ok(desc) => desc,
                Err(e) => {
                    log::log(&format!("{MODULE} {}: {}", self.listener.path.display(), log::error_text(&e)));
                    self.conns.remove(local);
                    continue;
                }
            };
            conn.desc = Some(desc);
            let (credentials, description, user) = describe_peer(&self.listener.path, conn.stream.as_fd());
            arrivals.push(Arrival {
                local: local as u32,
                id: conn.stream.as_raw_fd() as u32,
                module: MODULE,
                description,
                user,
                credentials,
                input: desc,
                output: desc,
            });
        }
        arrivals
    }

    fn admit(&mut self, local: u32, key: Option<EndpointKey>, registry: &mut Registry, epoll: &Epoll) {
        match key {
            Some(key) => {
                if let Some(conn) = self.conns.get_mut(local as usize) {
                    conn.key = Some(key);
                }
            }
            None => self.close(local, registry, epoll),
        }
    }

    fn buffered(&self, tag: u32) -> bool {
        self.conns
            .get(tag as usize)
            .is_some_and(|c| c.key.is_some() && (c.has_record(self.max_record) || c.ended.is_some()))
    }

    fn gone(&self, _endpoint: u32, error: &io::Error) -> bool {
        matches!(error.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN))
    }

    fn shutdown(&mut self) {
        self.listener.remove();
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use nix::sys::epoll::EpollCreateFlags;

    use super::*;
    use crate::wire::MAX_FRAME;

    /// A listener in a temporary directory and one connection to it whose
    /// other end is returned, admitted as endpoint 7.
    fn connected() -> (Stream, UnixStream, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let epoll = Epoll::new(EpollCreateFlags::empty()).unwrap();
        let mut registry = Registry::default();
        let mut stream = Stream::open(0, &dir.path().join("s"), 0o600, None, MAX_FRAME, &mut registry, &epoll).unwrap();
        let peer = UnixStream::connect(dir.path().join("s")).unwrap();
        stream.accept().unwrap();
        let arrivals = stream.arrivals(&mut registry, &epoll);
        assert_eq!(arrivals.len(), 1);
        stream.admit(arrivals[0].local, Some(EndpointKey(7)), &mut registry, &epoll);
        (stream, peer, dir)
    }

    /// Records cut at every kind of place (inside the length, inside the
    /// frame, many per write) come out whole and in order; a bad length
    /// is an error, after the frames before it.
    #[test]
    fn records_are_reassembled_across_arbitrary_cuts() {
        let (mut stream, mut peer, _dir) = connected();
        let frames: Vec<Vec<u8>> = (0..300u32).map(|n| vec![n as u8; 14 + (n as usize * 37) % 1500]).collect();
        let bytes: Vec<u8> = frames.iter().flat_map(|f| [&(f.len() as u32).to_be_bytes()[..], f].concat()).collect();
        let mut rx = Batch::new(super::super::BUF);
        let mut got = Vec::new();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut at = 0;
        while at < bytes.len() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let cut = (at + 1 + (seed % 3000) as usize).min(bytes.len());
            peer.write_all(&bytes[at..cut]).unwrap();
            at = cut;
            loop {
                let n = stream.recv(0, &mut rx, 1 + (seed % 64) as usize).unwrap();
                got.extend((0..n).map(|i| rx.frame(i).to_vec()));
                assert!((0..n).all(|i| rx.source(i) == 7));
                if n == 0 {
                    break;
                }
            }
        }
        assert_eq!(got, frames);
        peer.write_all(&[0, 0, 0, 20]).unwrap();
        peer.write_all(&[1; 20]).unwrap();
        peer.write_all(&[0, 0, 0, 0]).unwrap();
        assert_eq!(stream.recv(0, &mut rx, 64).unwrap(), 1);
        let err = stream.recv(0, &mut rx, 64).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    /// The end of the stream comes after the frames before it.
    #[test]
    fn a_hang_up_is_reported_after_the_last_frames() {
        let (mut stream, mut peer, _dir) = connected();
        peer.write_all(&[0, 0, 0, 14]).unwrap();
        peer.write_all(&[9; 14]).unwrap();
        peer.write_all(&[0, 0]).unwrap();
        drop(peer);
        let mut rx = Batch::new(super::super::BUF);
        assert_eq!(stream.recv(0, &mut rx, 64).unwrap(), 1);
        assert_eq!(rx.frame(0), &[9; 14][..]);
        assert!(stream.buffered(0));
        assert_eq!(stream.recv(0, &mut rx, 64).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
