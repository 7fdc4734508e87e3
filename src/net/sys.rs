//! The system calls the safe wrappers do not cover in the form the hot path
//! needs: batched datagram I/O, with receive headers built once (and its tap
//! counterpart, one frame per read or write), connecting to a raw 110-byte
//! `sockaddr_un`, creating a tap interface, and syslog. Every `unsafe` block
//! in vswitch is here; each one passes pointers to memory that outlives the
//! call.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::socket::MsgFlags;

use crate::wire::ClientAddr;

/// Most datagrams one batched call moves.
pub const BATCH: usize = 64;

/// Buffers for a batch of up to [`BATCH`] received frames of at most a
/// given size, with the `recvmmsg` headers that point at them built once:
/// a frame at a time, setting up 64 headers per call cost more than the
/// system call's own work for one frame. The size is chosen at run time so
/// that jumbo frames cost memory only where they are asked for.
pub struct RecvBatch {
    // Vecs rather than boxes: the headers hold pointers into the other two,
    // and a Vec's heap block may be aliased like that while the Vec moves.
    /// `BATCH` buffers of `size` bytes, back to back.
    bufs: Vec<u8>,
    size: usize,
    /// Only read by the kernel, through `hdrs`; kept for their lifetime.
    _iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    lens: [usize; BATCH],
}

impl RecvBatch {
    /// Buffers for frames of up to `size` bytes (longer ones are cut).
    pub fn new(size: usize) -> Self {
        let size = size.max(1);
        let mut bufs = vec![0u8; BATCH * size];
        let mut iovs: Vec<libc::iovec> = bufs
            .chunks_exact_mut(size)
            .map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: size })
            .collect();
        let hdrs = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: mmsghdr is plain old data; all-zero is a valid empty header.
                let mut hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
                hdr.msg_hdr.msg_iov = iov;
                hdr.msg_hdr.msg_iovlen = 1;
                hdr
            })
            .collect();
        RecvBatch { bufs, size, _iovs: iovs, hdrs, lens: [0; BATCH] }
    }

    fn buf_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.bufs[i * self.size..(i + 1) * self.size]
    }

    /// Frame `i` of the last call, cut to the buffer size if it was longer.
    pub fn frame(&self, i: usize) -> &[u8] {
        &self.bufs[i * self.size..][..self.lens[i]]
    }

    /// Receives up to `max` (at most [`BATCH`]) datagrams from `fd` without
    /// blocking, replacing the previous batch: frames `0..n` are the new
    /// ones. Returns how many arrived;
    /// `Ok(0)` when none was waiting.
    pub fn recv(&mut self, fd: BorrowedFd, max: usize) -> io::Result<usize> {
        if max == 1 {
            // As in send_one: no headers to copy in and out.
            return match nix::sys::socket::recv(fd.as_raw_fd(), self.buf_mut(0), MsgFlags::MSG_DONTWAIT) {
                Ok(len) => {
                    self.lens[0] = len;
                    Ok(1)
                }
                Err(nix::errno::Errno::EAGAIN) => Ok(0),
                Err(e) => Err(e.into()),
            };
        }
        // SAFETY: every header points at its own iovec over its own
        // `size`-byte buffer, all owned by `self` and alive for the call; the kernel
        // writes only the buffers, msg_len and the header's flag and length
        // fields.
        let n = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                max.min(BATCH) as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::WouldBlock { Ok(0) } else { Err(err) };
        }
        let n = n as usize;
        for (len, hdr) in self.lens.iter_mut().zip(self.hdrs.iter()).take(n) {
            *len = (hdr.msg_len as usize).min(self.size);
        }
        Ok(n)
    }

    /// Like [`RecvBatch::recv`] for a descriptor that yields one frame per
    /// `read` (a tap interface). An error after some frames is left for
    /// the next call, which meets it again.
    pub fn read(&mut self, fd: BorrowedFd, max: usize) -> io::Result<usize> {
        let mut n = 0;
        while n < max.min(BATCH) {
            match nix::unistd::read(fd, self.buf_mut(n)) {
                Ok(len) => {
                    self.lens[n] = len;
                    n += 1;
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) if n == 0 => return Err(e.into()),
                Err(_) => break,
            }
        }
        Ok(n)
    }
}

/// Sends `frames` (the first [`BATCH`] of them) on a connected datagram
/// socket without blocking. Returns how many were sent before the first
/// failure, and that failure if any.
pub fn send_batch<'a, I>(fd: BorrowedFd, frames: I) -> (usize, Option<io::Error>)
where
    I: IntoIterator<Item = &'a [u8]>,
    I::IntoIter: ExactSizeIterator,
{
    let mut frames = frames.into_iter();
    if frames.len() == 1
        && let Some(frame) = frames.next()
    {
        return send_one(fd, frame);
    }
    let mut iovs: [MaybeUninit<libc::iovec>; BATCH] = [MaybeUninit::uninit(); BATCH];
    let mut hdrs: [MaybeUninit<libc::mmsghdr>; BATCH] = [MaybeUninit::uninit(); BATCH];
    let mut count = 0;
    for (iov, frame) in iovs.iter_mut().zip(frames) {
        let iov = iov.write(libc::iovec { iov_base: frame.as_ptr() as *mut _, iov_len: frame.len() });
        // SAFETY: mmsghdr is plain old data; all-zero is a valid empty header.
        let mut hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        hdr.msg_hdr.msg_iov = iov;
        hdr.msg_hdr.msg_iovlen = 1;
        hdrs[count].write(hdr);
        count += 1;
    }
    let mut sent = 0;
    while sent < count {
        // SAFETY: headers sent..count are initialised and point at iovecs
        // over the caller's frames, which the kernel only reads.
        let n = unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                hdrs.as_mut_ptr().add(sent).cast(),
                (count - sent) as libc::c_uint,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return (sent, Some(err));
        }
        sent += n as usize;
    }
    (sent, None)
}

/// A lone frame goes by `send`, which has no message headers to copy in:
/// at low rates that is most frames, and the difference is measurable.
fn send_one(fd: BorrowedFd, frame: &[u8]) -> (usize, Option<io::Error>) {
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    loop {
        match nix::sys::socket::send(fd.as_raw_fd(), frame, flags) {
            Ok(_) => return (1, None),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return (0, Some(e.into())),
        }
    }
}

/// Writes `frames` (the first [`BATCH`]), one `write` each, to a
/// descriptor that takes one frame per write (a tap interface), with the
/// contract of [`send_batch`].
pub fn write_batch<'a>(fd: BorrowedFd, frames: impl IntoIterator<Item = &'a [u8]>) -> (usize, Option<io::Error>) {
    let mut sent = 0;
    for frame in frames.into_iter().take(BATCH) {
        loop {
            match nix::unistd::write(fd, frame) {
                // A tap takes a frame whole or not at all.
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return (sent, Some(e.into())),
            }
        }
        sent += 1;
    }
    (sent, None)
}

/// Makes `tun`, an open `/dev/net/tun`, the interface `name` (created if
/// missing) as a tap without packet-information header, so that each read
/// or write is exactly one Ethernet frame. The interface lives as long as
/// the descriptor.
pub fn attach_tap(tun: BorrowedFd, name: &str) -> io::Result<()> {
    // SAFETY: ifreq is plain old data; all-zero is an empty request.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // The name must leave room for the terminating NUL. An empty name would
    // let the kernel pick one, unknown to whoever asked for the tap.
    if name.is_empty() || name.len() >= req.ifr_name.len() || name.contains('\0') {
        let limit = req.ifr_name.len() - 1;
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("an interface name has 1 to {limit} bytes and no NUL"),
        ));
    }
    for (dst, &src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, and `req` is one that
    // lives through the call.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Connects a datagram socket to a client address exactly as the client
/// sent it: all 110 bytes, so abstract names with trailing bytes match.
pub fn connect_raw(fd: BorrowedFd, addr: &ClientAddr) -> io::Result<()> {
    let mut raw: libc::sockaddr_un = unsafe {
        // SAFETY: sockaddr_un is plain old data.
        std::mem::zeroed()
    };
    raw.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in raw.sun_path.iter_mut().zip(&addr.0[2..]) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `raw` is a valid sockaddr_un of exactly the length passed.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Routes later [`syslog`] calls to the system log under `ident`.
pub fn open_syslog(ident: &str) {
    let ident = CString::new(ident).unwrap_or_default();
    // openlog keeps the pointer: the identity must live for the process.
    let ident: &'static CString = Box::leak(Box::new(ident));
    // SAFETY: ident is a valid NUL-terminated string with static lifetime.
    unsafe { libc::openlog(ident.as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
}

pub fn syslog(message: &str) {
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    // SAFETY: both strings are valid and NUL-terminated; "%s" consumes one.
    unsafe { libc::syslog(libc::LOG_INFO, c"%s".as_ptr(), message.as_ptr()) };
}

/// The supplementary groups of the process at the other end of a Unix
/// stream, as the kernel recorded them at connect time (`SO_PEERGROUPS`).
pub fn peer_groups(fd: BorrowedFd) -> io::Result<Vec<u32>> {
    let mut groups = vec![0 as libc::gid_t; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer holds `len` bytes; the kernel writes at most that
        // and reports the size it needs.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) || count <= groups.len() {
            return Err(err);
        }
        groups.resize(count, 0);
    }
}

/// What a signal does; never a handler of ours, so no code of ours ever
/// runs in signal context.
pub enum Disposition {
    Ignore,
    Default,
}

pub fn set_disposition(signal: nix::sys::signal::Signal, how: Disposition) -> nix::Result<()> {
    use nix::sys::signal::SigHandler;
    let handler = match how {
        Disposition::Ignore => SigHandler::SigIgn,
        Disposition::Default => SigHandler::SigDfl,
    };
    // SAFETY: ignoring or restoring the default installs no handler code.
    unsafe { nix::sys::signal::signal(signal, handler) }.map(drop)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixDatagram;

    use super::*;

    #[test]
    fn batches_and_lone_frames_arrive_whole_and_in_order() {
        let (a, b) = UnixDatagram::pair().unwrap();
        let frames: Vec<Vec<u8>> = (1..=5u8).map(|i| vec![i; 60 + i as usize]).collect();
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        assert_eq!(send_batch(a.as_fd(), refs[..1].iter().copied()).0, 1);
        assert_eq!(send_batch(a.as_fd(), refs[1..].iter().copied()).0, 4);
        let mut rx = RecvBatch::new(128);
        assert_eq!(rx.recv(b.as_fd(), 1).unwrap(), 1);
        assert_eq!(rx.frame(0), &frames[0][..]);
        assert_eq!(rx.recv(b.as_fd(), BATCH).unwrap(), 4);
        for (i, f) in frames[1..].iter().enumerate() {
            assert_eq!(rx.frame(i), &f[..]);
        }
        assert_eq!(rx.recv(b.as_fd(), BATCH).unwrap(), 0);
        assert_eq!(rx.recv(b.as_fd(), 1).unwrap(), 0);
    }

    #[test]
    fn a_datagram_longer_than_the_buffer_comes_back_cut() {
        let (a, b) = UnixDatagram::pair().unwrap();
        a.send(&[7; 200]).unwrap();
        a.send(&[8; 200]).unwrap();
        a.send(&[9; 200]).unwrap();
        let mut rx = RecvBatch::new(128);
        assert_eq!(rx.recv(b.as_fd(), 1).unwrap(), 1);
        assert_eq!(rx.frame(0), &[7; 128][..]);
        assert_eq!(rx.recv(b.as_fd(), BATCH).unwrap(), 2);
        assert_eq!(rx.frame(1), &[9; 128][..]);
    }

    #[test]
    fn a_batch_survives_being_moved() {
        let (a, b) = UnixDatagram::pair().unwrap();
        let rx = RecvBatch::new(64);
        let mut moved = Box::new(rx);
        a.send(&[1, 2, 3]).unwrap();
        a.send(&[4, 5]).unwrap();
        assert_eq!(moved.recv(b.as_fd(), BATCH).unwrap(), 2);
        assert_eq!(moved.frame(1), &[4, 5][..]);
    }
}
