//! A small vhost-user frontend of our own, for the tests and the fuzz
//! target: it speaks the protocol over a real socket, hands over a real
//! memfd as guest memory, lays out two split virtqueues in it and plays
//! the guest's driver on them. Every field can be set to nonsense, which
//! is the point: a frontend is untrusted.

use std::fs::File;
use std::io::{self, Read as _};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

/// vhost-user request codes used here.
pub mod request {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const SET_VRING_BASE: u32 = 10;
    pub const GET_VRING_BASE: u32 = 11;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
}

pub const VERSION_1: u64 = 1 << 32;
pub const MRG_RXBUF: u64 = 1 << 15;
pub const EVENT_IDX: u64 = 1 << 29;
pub const INDIRECT_DESC: u64 = 1 << 28;
pub const IN_ORDER: u64 = 1 << 35;

/// Guest memory: 2 MiB at guest address 0 (rings, then 2 × 256 buffers of
/// 2 KiB), which the frontend claims to have mapped at `USER_BASE` in its
/// own address space.
pub const MEM_SIZE: u64 = 2 << 20;
pub const USER_BASE: u64 = 0x7f00_0000_0000;
pub const QUEUE_SIZE: u16 = 256;
/// Per queue: descriptors, available ring, used ring, then buffers.
const QUEUE_STRIDE: u64 = 0x4000;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
pub const BUFFERS: u64 = 0x10000;
/// Buffer bytes per queue slot.
pub const SLOT: u64 = 2048;

pub const RX: usize = 0;
pub const TX: usize = 1;

pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;
pub const VRING_DESC_F_INDIRECT: u16 = 4;

pub fn desc_table(queue: usize) -> u64 {
    queue as u64 * QUEUE_STRIDE
}

pub fn avail_ring(queue: usize) -> u64 {
    desc_table(queue) + AVAIL
}

pub fn used_ring(queue: usize) -> u64 {
    desc_table(queue) + USED
}

/// The buffer of descriptor `slot` of `queue`.
pub fn buffer(queue: usize, slot: u16) -> u64 {
    BUFFERS + (queue as u64 * u64::from(QUEUE_SIZE) + u64::from(slot)) * SLOT
}

pub struct Frontend {
    sock: UnixStream,
    pub memory: GuestMemoryMmap,
    pub memfd: File,
    pub kicks: [EventFd; 2],
    pub calls: [EventFd; 2],
    /// What the driver has made available and seen used, per queue.
    avail_idx: [u16; 2],
    used_seen: [u16; 2],
    pub header_len: usize,
}

impl Frontend {
    pub fn connect(path: &Path) -> io::Result<Frontend> {
        Frontend::from_stream(UnixStream::connect(path)?)
    }

    pub fn from_stream(sock: UnixStream) -> io::Result<Frontend> {
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        let memfd = File::from(memfd_create("vswitch-test-guest", MFdFlags::MFD_CLOEXEC)?);
        memfd.set_len(MEM_SIZE)?;
        let region = GuestRegionMmap::from_range(
            GuestAddress(0),
            MEM_SIZE as usize,
            Some(FileOffset::new(memfd.try_clone()?, 0)),
        )
        .map_err(io::Error::other)?;
        let memory = GuestMemoryMmap::from_regions(vec![region]).map_err(io::Error::other)?;
        let eventfd = |flags| EventFd::from_value_and_flags(0, flags);
        // Call eventfds blocking, as a careless frontend may leave them.
        let (kick, call) = (EfdFlags::EFD_NONBLOCK, EfdFlags::empty());
        Ok(Frontend {
            sock,
            memory,
            memfd,
            kicks: [eventfd(kick)?, eventfd(kick)?],
            calls: [eventfd(call)?, eventfd(call)?],
            avail_idx: [0; 2],
            used_seen: [0; 2],
            header_len: 12,
        })
    }

    /// Sends one message: header (request, flags with version 1, size),
    /// payload and descriptors, in one `sendmsg` as real frontends do.
    pub fn send(&self, request: u32, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
        let mut msg = Vec::with_capacity(12 + payload.len());
        msg.extend_from_slice(&request.to_le_bytes());
        msg.extend_from_slice(&1u32.to_le_bytes());
        msg.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        msg.extend_from_slice(payload);
        self.send_raw(&msg, fds)
    }

    /// Sends bytes as they are, with descriptors attached.
    pub fn send_raw(&self, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
        let iov = [io::IoSlice::new(bytes)];
        let cmsg = [ControlMessage::ScmRights(fds)];
        let cmsgs = if fds.is_empty() { &[][..] } else { &cmsg[..] };
        sendmsg::<()>(self.sock.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)?;
        Ok(())
    }

    /// Reads one reply's payload.
    pub fn reply(&mut self) -> io::Result<Vec<u8>> {
        let mut header = [0u8; 12];
        self.sock.read_exact(&mut header)?;
        let size = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
        let mut payload = vec![0u8; size];
        self.sock.read_exact(&mut payload)?;
        Ok(payload)
    }

    pub fn control(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    pub fn get_features(&mut self) -> io::Result<u64> {
        self.send(request::GET_FEATURES, &[], &[])?;
        let reply = self.reply()?;
        let bytes: [u8; 8] = reply.get(..8).and_then(|b| b.try_into().ok()).ok_or(io::ErrorKind::InvalidData)?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// A memory table of one region; the arguments let tests lie.
    pub fn set_mem_table(&self, guest: u64, size: u64, user: u64, offset: u64, fd: RawFd) -> io::Result<()> {
        let mut p = Vec::new();
        p.extend_from_slice(&1u32.to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        for v in [guest, size, user, offset] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        self.send(request::SET_MEM_TABLE, &p, &[fd])
    }

    pub fn set_vring_addr(&self, queue: usize, desc: u64, used: u64, avail: u64) -> io::Result<()> {
        let mut p = Vec::new();
        p.extend_from_slice(&(queue as u32).to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        for v in [desc, used, avail, 0] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        self.send(request::SET_VRING_ADDR, &p, &[])
    }

    /// Everything a well-behaved frontend says before frames flow, with
    /// `features` acknowledged without asking first (the backend must
    /// refuse what it did not offer), so no reply is awaited.
    pub fn set_up(&mut self, features: u64) -> io::Result<()> {
        self.header_len = if features & (VERSION_1 | MRG_RXBUF) != 0 { 12 } else { 10 };
        self.send(request::SET_FEATURES, &features.to_le_bytes(), &[])?;
        self.send(request::SET_OWNER, &[], &[])?;
        self.set_mem_table(0, MEM_SIZE, USER_BASE, 0, self.memfd.as_raw_fd())?;
        for q in [RX, TX] {
            self.set_up_queue(q)?;
        }
        Ok(())
    }

    /// Size, addresses, base and eventfds of one queue.
    pub fn set_up_queue(&mut self, q: usize) -> io::Result<()> {
        self.vring_state(request::SET_VRING_NUM, q, u32::from(QUEUE_SIZE))?;
        self.set_vring_addr(q, USER_BASE + desc_table(q), USER_BASE + used_ring(q), USER_BASE + avail_ring(q))?;
        self.vring_state(request::SET_VRING_BASE, q, 0)?;
        let index = (q as u64).to_le_bytes();
        self.send(request::SET_VRING_CALL, &index, &[self.calls[q].as_fd().as_raw_fd()])?;
        self.send(request::SET_VRING_KICK, &index, &[self.kicks[q].as_fd().as_raw_fd()])
    }

    /// `SET_VRING_NUM` and the like: a queue index and a value.
    pub fn vring_state(&self, request: u32, queue: usize, value: u32) -> io::Result<()> {
        let mut p = (queue as u32).to_le_bytes().to_vec();
        p.extend_from_slice(&value.to_le_bytes());
        self.send(request, &p, &[])
    }

    /// Writes descriptor `index` of `queue`.
    pub fn write_desc(&self, queue: usize, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(desc_table(queue) + u64::from(index) * 16);
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.memory.write_slice(&d, at).expect("descriptor table inside guest memory");
    }

    /// Makes the chain starting at `head` available and kicks.
    pub fn make_available(&mut self, queue: usize, head: u16) {
        let slot = self.avail_idx[queue] % QUEUE_SIZE;
        let ring = GuestAddress(avail_ring(queue) + 4 + u64::from(slot) * 2);
        self.memory.write_obj(head.to_le(), ring).expect("ring inside guest memory");
        self.avail_idx[queue] = self.avail_idx[queue].wrapping_add(1);
        self.set_avail_idx(queue, self.avail_idx[queue]);
    }

    /// Sets the available index as it is, whatever it claims.
    pub fn set_avail_idx(&mut self, queue: usize, idx: u16) {
        self.avail_idx[queue] = idx;
        self.memory.write_obj(idx.to_le(), GuestAddress(avail_ring(queue) + 2)).expect("ring inside guest memory");
    }

    pub fn kick(&self, queue: usize) {
        let _ = self.kicks[queue].write(1);
    }

    /// Queues `frame` for transmission behind a zeroed virtio-net header,
    /// in the buffer of the next descriptor slot, and kicks.
    pub fn transmit(&mut self, frame: &[u8]) {
        self.stage(frame);
        self.kick(TX);
    }

    /// Queues `frame` as [`Frontend::transmit`] does, without the kick.
    pub fn stage(&mut self, frame: &[u8]) {
        let slot = self.avail_idx[TX] % QUEUE_SIZE;
        let addr = buffer(TX, slot);
        let mut bytes = vec![0u8; self.header_len];
        bytes.extend_from_slice(frame);
        self.memory.write_slice(&bytes, GuestAddress(addr)).expect("buffer inside guest memory");
        self.write_desc(TX, slot, addr, bytes.len() as u32, 0, 0);
        self.make_available(TX, slot);
    }

    /// Makes `n` receive buffers of `len` bytes available.
    pub fn post_receive_buffers(&mut self, n: u16, len: u32) {
        for _ in 0..n {
            let slot = self.avail_idx[RX] % QUEUE_SIZE;
            self.write_desc(RX, slot, buffer(RX, slot), len, VRING_DESC_F_WRITE, 0);
            self.make_available(RX, slot);
        }
        self.kick(RX);
    }

    /// Entries the device added to `queue`'s used ring since the last call:
    /// (descriptor head, length written).
    pub fn used(&mut self, queue: usize) -> Vec<(u16, u32)> {
        let idx: u16 = self.memory.read_obj(GuestAddress(used_ring(queue) + 2)).expect("used ring inside guest memory");
        let mut out = Vec::new();
        while self.used_seen[queue] != u16::from_le(idx) {
            let slot = self.used_seen[queue] % QUEUE_SIZE;
            let at = GuestAddress(used_ring(queue) + 4 + u64::from(slot) * 8);
            let id: u32 = self.memory.read_obj(at).expect("used ring inside guest memory");
            let len: u32 = self.memory.read_obj(GuestAddress(at.0 + 4)).expect("used ring inside guest memory");
            out.push((u32::from_le(id) as u16, u32::from_le(len)));
            self.used_seen[queue] = self.used_seen[queue].wrapping_add(1);
        }
        out
    }

    /// Frames the device wrote into receive buffers since the last call,
    /// without their headers, merged buffers joined.
    pub fn received(&mut self) -> Vec<Vec<u8>> {
        let used = self.used(RX);
        let mut frames = Vec::new();
        let mut i = 0;
        while i < used.len() {
            let read = |(head, len): (u16, u32)| {
                let mut b = vec![0u8; len as usize];
                self.memory.read_slice(&mut b, GuestAddress(buffer(RX, head))).expect("buffer inside guest memory");
                b
            };
            let first = read(used[i]);
            let count = if self.header_len == 12 { usize::from(u16::from_le_bytes([first[10], first[11]])) } else { 1 };
            let mut frame = first[self.header_len.min(first.len())..].to_vec();
            for &entry in used.iter().skip(i + 1).take(count.saturating_sub(1)) {
                frame.extend_from_slice(&read(entry));
            }
            frames.push(frame);
            i += count.max(1);
        }
        frames
    }
}
