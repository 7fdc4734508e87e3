//! The system calls the safe wrappers do not cover in the form the hot path
//! needs: batched datagram I/O, with receive headers built once (and its tap
//! counterpart, one frame per read or write), connecting to a raw 110-byte
//! `sockaddr_un`, creating a tap interface, syslog, per-thread supplementary
//! groups, the fork of a daemon that reports its readiness, and the cache
//! prefetch the vhost-user rings ask for. Every `unsafe` block
//! in vswitch is here (or in `sigbus.rs`, the guard of guest memory); each
//! one passes pointers to memory that outlives the call.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::socket::MsgFlags;

use crate::wire::ClientAddr;

/// Most datagrams one batched call moves.
pub const BATCH: usize = 64;

/// The fixed-size memory of a [`RecvBatch`]: the `recvmmsg` headers and
/// what they point at besides the buffers, in one allocation.
struct Slots {
    iovs: [libc::iovec; BATCH],
    hdrs: [libc::mmsghdr; BATCH],
    names: [libc::sockaddr_storage; BATCH],
    /// Ancillary data (the sender's credentials), 8-byte aligned as
    /// `cmsghdr` needs.
    controls: [[u64; CONTROL_WORDS]; BATCH],
}

/// Room for one `SCM_CREDENTIALS` message and then some.
const CONTROL_WORDS: usize = 8;

/// Buffers for a batch of up to [`BATCH`] received frames of at most a
/// given size, with the `recvmmsg` headers that point at them built once:
/// a frame at a time, setting up 64 headers per call cost more than the
/// system call's own work for one frame. The size is chosen at run time so
/// that jumbo frames (`--mtu`) cost memory only where they are asked for.
/// Each frame carries the endpoint
/// it came from (set by the transport that received it) and where it
/// starts in its buffer (a transport may leave its own header in front).
///
/// The headers hold pointers into the buffers, and the kernel writes
/// through them. So that no Rust reference ever invalidates those
/// pointers, the memory is reached only through `base` and `bufs`, raw
/// pointers to allocations no reference owns: every pointer the kernel or
/// a method uses is derived from them, and references into them live at
/// most as long as a borrow of the batch.
pub struct RecvBatch {
    base: std::ptr::NonNull<Slots>,
    /// `BATCH` buffers of `size` bytes, back to back.
    bufs: std::ptr::NonNull<u8>,
    size: usize,
    lens: [usize; BATCH],
    starts: [usize; BATCH],
    sources: [u32; BATCH],
    name_lens: [usize; BATCH],
    control_lens: [usize; BATCH],
}

impl RecvBatch {
    /// Buffers for frames of up to `size` bytes (longer ones are cut).
    pub fn new(size: usize) -> Self {
        let size = size.max(1);
        // SAFETY: every field of Slots is plain old data for which all-zero
        // bytes are a valid value (null pointers, zero lengths).
        let slots = unsafe { Box::<Slots>::new_zeroed().assume_init() };
        let base = std::ptr::NonNull::from(Box::leak(slots));
        let bufs = std::ptr::NonNull::from(Box::leak(vec![0u8; BATCH * size].into_boxed_slice())).cast::<u8>();
        let p = base.as_ptr();
        for i in 0..BATCH {
            // SAFETY: `p` and `bufs` point at live, exclusively owned
            // allocations; the element pointers are projections of them,
            // within their bounds, and no reference to any part exists.
            unsafe {
                let buf = bufs.as_ptr().add(i * size);
                let iov = (&raw mut (*p).iovs).cast::<libc::iovec>().add(i);
                iov.write(libc::iovec { iov_base: buf.cast(), iov_len: size });
                let hdr = (&raw mut (*p).hdrs).cast::<libc::mmsghdr>().add(i);
                (*hdr).msg_hdr.msg_iov = iov;
                (*hdr).msg_hdr.msg_iovlen = 1;
            }
        }
        RecvBatch {
            base,
            bufs,
            size,
            lens: [0; BATCH],
            starts: [0; BATCH],
            sources: [0; BATCH],
            name_lens: [0; BATCH],
            control_lens: [0; BATCH],
        }
    }

    /// The size of each buffer: the longest frame a receive keeps whole.
    pub fn size(&self) -> usize {
        self.size
    }

    fn buf_ptr(&self, i: usize) -> *mut u8 {
        assert!(i < BATCH);
        // SAFETY: a projection within the allocation `bufs` points at; no
        // reference is created.
        unsafe { self.bufs.as_ptr().add(i * self.size) }
    }

    fn hdr_ptr(&self, i: usize) -> *mut libc::mmsghdr {
        assert!(i < BATCH);
        // SAFETY: as in buf_ptr.
        unsafe { (&raw mut (*self.base.as_ptr()).hdrs).cast::<libc::mmsghdr>().add(i) }
    }

    /// Frame `i` of the last call, cut to the buffer size if it was longer.
    pub fn frame(&self, i: usize) -> &[u8] {
        let (start, len) = (self.starts[i], self.lens[i]);
        // SAFETY: start + len <= size (kept by every setter); the bytes are
        // initialised (zeroed at allocation) and nothing writes them while
        // `self` is borrowed shared, since the kernel writes only during
        // calls that take `&mut self`.
        unsafe { std::slice::from_raw_parts(self.buf_ptr(i).add(start), len) }
    }

    /// The endpoint frame `i` came from, as the transport tagged it.
    pub fn source(&self, i: usize) -> u32 {
        self.sources[i]
    }

    /// Tags frames `range` with the endpoint they came from.
    pub fn set_sources(&mut self, range: std::ops::Range<usize>, source: u32) {
        self.sources[range].fill(source);
    }

    /// Gives the frames in `range` tagged `from` the tag `to`.
    pub fn retag(&mut self, range: std::ops::Range<usize>, from: u32, to: u32) {
        for source in &mut self.sources[range] {
            if *source == from {
                *source = to;
            }
        }
    }

    /// Buffer `i`, to receive a frame into by other means than `recv`.
    pub fn buf_mut(&mut self, i: usize) -> &mut [u8] {
        // SAFETY: the buffer is inside the allocation, initialised, and
        // borrowed from `&mut self`, so nothing else reaches it meanwhile.
        unsafe { std::slice::from_raw_parts_mut(self.buf_ptr(i), self.size) }
    }

    /// Sets frame `i` to `len` bytes of its buffer from `start`.
    pub fn set_frame(&mut self, i: usize, start: usize, len: usize) {
        let start = start.min(self.size);
        self.starts[i] = start;
        self.lens[i] = len.min(self.size - start);
    }

    /// The sender address of frame `i` after [`RecvBatch::recv_from`]: the
    /// raw `sockaddr` bytes the kernel filled in.
    pub fn name(&self, i: usize) -> &[u8] {
        assert!(i < BATCH);
        // SAFETY: a projection within the allocation; the kernel wrote at
        // most name_lens[i] (capped to the buffer) bytes of the zeroed
        // buffer, and nothing writes it while `self` is borrowed shared.
        unsafe {
            let name = (&raw const (*self.base.as_ptr()).names).cast::<libc::sockaddr_storage>().add(i);
            std::slice::from_raw_parts(name.cast::<u8>(), self.name_lens[i])
        }
    }

    /// Receives up to `max` (at most [`BATCH`]) datagrams from `fd` without
    /// blocking, replacing the previous batch: frames `0..n` are the new
    /// ones, each starting at the beginning of its buffer. Returns how many
    /// arrived; `Ok(0)` when none was waiting.
    pub fn recv(&mut self, fd: BorrowedFd, max: usize) -> io::Result<usize> {
        if max == 1 {
            // As in send_one: no headers to copy in and out.
            return match nix::sys::socket::recv(fd.as_raw_fd(), self.buf_mut(0), MsgFlags::MSG_DONTWAIT) {
                Ok(len) => {
                    self.set_frame(0, 0, len);
                    Ok(1)
                }
                Err(nix::errno::Errno::EAGAIN) => Ok(0),
                Err(e) => Err(e.into()),
            };
        }
        self.recv_many(fd, max)
    }

    /// The sender's credentials of frame `i` after [`RecvBatch::recv_from`]
    /// on a socket with `SO_PASSCRED`: pid, uid and gid.
    pub fn credentials(&self, i: usize) -> Option<(i32, u32, u32)> {
        assert!(i < BATCH);
        // SAFETY: a header built over this frame's control buffer, inside
        // the allocation and 8-byte aligned, with the length the kernel
        // reported; the CMSG macros only walk within msg_controllen, and
        // the credentials are read unaligned.
        unsafe {
            let control = (&raw mut (*self.base.as_ptr()).controls).cast::<[u64; CONTROL_WORDS]>().add(i);
            let mut hdr: libc::msghdr = std::mem::zeroed();
            hdr.msg_control = control.cast();
            hdr.msg_controllen = self.control_lens[i];
            let mut cmsg = libc::CMSG_FIRSTHDR(&hdr);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_CREDENTIALS {
                    let cred = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::ucred>());
                    return Some((cred.pid, cred.uid, cred.gid));
                }
                cmsg = libc::CMSG_NXTHDR(&hdr, cmsg);
            }
            None
        }
    }

    /// Like [`RecvBatch::recv`], also recording each sender's address
    /// (see [`RecvBatch::name`]) and any credentials it sent.
    pub fn recv_from(&mut self, fd: BorrowedFd, max: usize) -> io::Result<usize> {
        let max = max.min(BATCH);
        let size = std::mem::size_of::<libc::sockaddr_storage>();
        for i in 0..max {
            let hdr = self.hdr_ptr(i);
            // SAFETY: projections within the allocation; no reference exists.
            unsafe {
                let name = (&raw mut (*self.base.as_ptr()).names).cast::<libc::sockaddr_storage>().add(i);
                (*hdr).msg_hdr.msg_name = name.cast();
                (*hdr).msg_hdr.msg_namelen = size as libc::socklen_t;
                let control = (&raw mut (*self.base.as_ptr()).controls).cast::<[u64; CONTROL_WORDS]>().add(i);
                (*hdr).msg_hdr.msg_control = control.cast();
                (*hdr).msg_hdr.msg_controllen = std::mem::size_of::<[u64; CONTROL_WORDS]>();
            }
        }
        let result = self.recv_many(fd, max);
        for i in 0..max {
            let hdr = self.hdr_ptr(i);
            // SAFETY: as above. The name pointer is taken away again so
            // that plain receives, the hot path, have the kernel write none.
            unsafe {
                self.name_lens[i] = ((*hdr).msg_hdr.msg_namelen as usize).min(size);
                self.control_lens[i] = (*hdr).msg_hdr.msg_controllen.min(std::mem::size_of::<[u64; CONTROL_WORDS]>());
                (*hdr).msg_hdr.msg_name = std::ptr::null_mut();
                (*hdr).msg_hdr.msg_namelen = 0;
                (*hdr).msg_hdr.msg_control = std::ptr::null_mut();
                (*hdr).msg_hdr.msg_controllen = 0;
            }
        }
        result
    }

    fn recv_many(&mut self, fd: BorrowedFd, max: usize) -> io::Result<usize> {
        // SAFETY: every header points at its own iovec over its own
        // `size`-byte buffer, all inside the allocations `base` and `bufs`
        // own and alive for the call, all derived from them; the kernel writes only the
        // buffers, the names, msg_len and the header's flag and length
        // fields.
        let n = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                self.hdr_ptr(0),
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
        for i in 0..n {
            // SAFETY: the header is inside the allocation; msg_len was
            // written by the kernel before recvmmsg returned.
            let len = unsafe { (*self.hdr_ptr(i)).msg_len } as usize;
            self.set_frame(i, 0, len);
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
                    self.set_frame(n, 0, len);
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

impl Drop for RecvBatch {
    fn drop(&mut self) {
        // SAFETY: `base` and `bufs` came from Box::leak in `new`, `bufs` as
        // a slice of BATCH * size bytes, and are freed once.
        unsafe {
            drop(Box::from_raw(self.base.as_ptr()));
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.bufs.as_ptr(), BATCH * self.size)));
        }
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
    // SAFETY: headers 0..count were initialised above and point at iovecs
    // over the caller's frames, which outlive the call.
    unsafe { send_mmsg(fd, &mut hdrs[..count]) }
}

/// Sends `hdrs` with `sendmmsg` without blocking, resuming after a partial
/// send or an interrupt. Returns how many were sent before the first
/// failure, and that failure if any.
///
/// # Safety
/// Every header must be initialised, and what it points at (iovecs, their
/// buffers, addresses) must stay alive for the call; the kernel only reads it.
#[inline]
unsafe fn send_mmsg(fd: BorrowedFd, hdrs: &mut [MaybeUninit<libc::mmsghdr>]) -> (usize, Option<io::Error>) {
    let count = hdrs.len();
    let mut sent = 0;
    while sent < count {
        // SAFETY: by this function's contract, headers sent..count are
        // initialised and point at memory alive for the call.
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

/// Sends datagram `i` (of the first [`BATCH`]) as `header` followed by
/// `frames[i]` to `to[i]`, gathered from two pieces so the frame is never
/// copied, on an unconnected datagram socket without blocking. Returns how
/// many were sent before the first failure, and that failure if any.
pub fn send_to_batch(
    fd: BorrowedFd,
    header: &[u8],
    frames: &[&[u8]],
    to: &[&nix::sys::socket::SockaddrStorage],
) -> (usize, Option<io::Error>) {
    use nix::sys::socket::SockaddrLike;
    let count = frames.len().min(to.len()).min(BATCH);
    let mut iovs: [[MaybeUninit<libc::iovec>; 2]; BATCH] = [[MaybeUninit::uninit(); 2]; BATCH];
    let mut hdrs: [MaybeUninit<libc::mmsghdr>; BATCH] = [MaybeUninit::uninit(); BATCH];
    for (((iov, hdr), frame), to) in iovs.iter_mut().zip(&mut hdrs).zip(frames).zip(to).take(count) {
        iov[0].write(libc::iovec { iov_base: header.as_ptr() as *mut _, iov_len: header.len() });
        iov[1].write(libc::iovec { iov_base: frame.as_ptr() as *mut _, iov_len: frame.len() });
        // SAFETY: mmsghdr is plain old data; all-zero is a valid empty header.
        let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
        h.msg_hdr.msg_iov = iov.as_mut_ptr().cast();
        h.msg_hdr.msg_iovlen = 2;
        h.msg_hdr.msg_name = to.as_ptr() as *mut _;
        h.msg_hdr.msg_namelen = to.len();
        hdr.write(h);
    }
    // SAFETY: headers 0..count were initialised above and point at iovecs
    // over the caller's header and frames and at its addresses, all of
    // which outlive the call.
    unsafe { send_mmsg(fd, &mut hdrs[..count]) }
}

/// Makes a UDP socket refuse datagrams larger than the path MTU with
/// `EMSGSIZE` instead of fragmenting them (`IP_PMTUDISC_DO`).
pub fn set_dont_fragment(fd: BorrowedFd, ipv6: bool) -> io::Result<()> {
    let (level, name, value) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, libc::IPV6_PMTUDISC_DO)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DO)
    };
    // SAFETY: the option is one int, passed by a pointer valid for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
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

/// Connects a socket to a Unix address given as the raw `sockaddr` bytes
/// and length a receive reported (see [`RecvBatch::name`]), so abstract
/// names match exactly.
pub fn connect_name(fd: BorrowedFd, name: &[u8]) -> io::Result<()> {
    // SAFETY: sockaddr_un is plain old data.
    let mut raw: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::sockaddr_un>();
    if name.len() <= 2 || name.len() > size {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    raw.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in raw.sun_path.iter_mut().zip(&name[2..]) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `raw` is a valid sockaddr_un; the length passed is at most its size.
    let rc = unsafe {
        libc::connect(fd.as_raw_fd(), (&raw as *const libc::sockaddr_un).cast(), name.len() as libc::socklen_t)
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

/// Sets the supplementary groups of the calling thread only. The C
/// library's `setgroups` changes every thread of the process (POSIX wants
/// one set per process), which would hand one client's groups to the
/// event loop and to jobs run for other users.
pub fn set_thread_groups(groups: &[u32]) -> io::Result<()> {
    // SAFETY: the raw system call reads `groups.len()` ids from a live slice.
    let rc = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
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

/// Becomes a daemon as `daemon(3)` does (new session, `/`, standard
/// descriptors on /dev/null), except that the launching process exits only
/// once the daemon writes to, or closes, the returned descriptor: a script
/// that starts the switch with `-d` can use it as soon as the command
/// returns. The launcher exits with status 0 either way, as vde_switch's.
pub fn daemon_when_ready() -> nix::Result<std::os::fd::OwnedFd> {
    use nix::unistd::{ForkResult, daemon, fork, pipe2, read};
    let (readiness, report) = pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: called before any thread exists; the parent only reads one
    // byte and exits.
    match unsafe { fork() }? {
        ForkResult::Parent { .. } => {
            drop(report);
            let mut byte = [0u8; 1];
            while read(&readiness, &mut byte) == Err(nix::errno::Errno::EINTR) {}
            std::process::exit(0);
        }
        ForkResult::Child => {
            drop(readiness);
            daemon(false, false)?;
            Ok(report)
        }
    }
}

/// Whether the peer of stream socket `fd` shut down its sending side
/// (`POLLRDHUP`, which nix's poll flags cannot name), whatever is still
/// unread.
pub fn peer_shut_down(fd: BorrowedFd) -> bool {
    let mut poll_fd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 };
    // SAFETY: one valid pollfd for a descriptor the caller keeps open.
    let ready = unsafe { libc::poll(&mut poll_fd, 1, 0) };
    ready > 0 && poll_fd.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0
}

/// Asks the CPU to start loading the cache lines at `first` and `last`
/// (the same line or two), for writing when `write` says so: fetched for
/// ownership, the write then needs no second trip to the core that had
/// the line (a plain prefetch on CPUs without `PREFETCHW`). A hint with no
/// effect on what the program computes: any address will do.
#[inline]
pub fn prefetch(first: *const u8, last: *const u8, write: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        if write && has_prefetchw() {
            // SAFETY: a prefetch reads nothing into the program, writes
            // nothing and never faults, whatever the address; the CPU has
            // the instruction.
            unsafe {
                std::arch::asm!(
                    "prefetchw [{}]",
                    "prefetchw [{}]",
                    in(reg) first,
                    in(reg) last,
                    options(nostack, preserves_flags, readonly)
                );
            }
        } else {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            // SAFETY: as above.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(first.cast());
                _mm_prefetch::<_MM_HINT_T0>(last.cast());
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (first, last, write);
}

/// Whether the CPU has `PREFETCHW` (CPUID leaf 0x8000_0001, ECX bit 8).
#[cfg(target_arch = "x86_64")]
fn has_prefetchw() -> bool {
    use std::arch::x86_64::__cpuid;
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        let (highest, features) = (__cpuid(0x8000_0000).eax, __cpuid(0x8000_0001).ecx);
        highest >= 0x8000_0001 && features & (1 << 8) != 0
    })
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
