//! The split virtqueue's data path, walked by hand over views of the ring
//! resolved once per batch.
//!
//! `virtio-queue` resolves every ring access and every descriptor through
//! `vm-memory`'s region search and slice iterator; with frames of 64 bytes
//! that was most of the switch's CPU (600–900 ns a frame, against
//! OVS-DPDK's 140–210 ns). Here the descriptor table, the available ring
//! and the used ring are each one `VolatileSlice`, looked up once per
//! batch, and a buffer is one region lookup. Every access still goes
//! through `vm-memory`'s bounds-checked slices (the only raw pointers are
//! the addresses given to prefetch hints, which read nothing), and the
//! checks `virtio-queue` made on the guest's indices stay: the available
//! index at most a ring ahead, descriptor indices inside their table, a
//! chain no longer than its table (so a loop ends), an indirect table a
//! whole number of descriptors and never nested. `virtio-queue`'s `Queue`
//! still holds the ring's configuration and positions between batches.

use std::cell::Cell;
use std::sync::atomic::{Ordering, fence};

use virtio_queue::{Error, Queue, QueueT};
use vm_memory::{
    Bytes as _, GuestAddress, GuestMemoryBackend as _, GuestMemoryMmap, GuestMemoryRegion as _, VolatileSlice,
};

use crate::net::sys;

const DESC_SIZE: usize = 16;
const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;
const VRING_DESC_F_INDIRECT: u16 = 4;
const VRING_USED_F_NO_NOTIFY: u16 = 1;
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// How much of a buffer [`Ring::prefetch`] asks for: a small frame and its
/// header, wherever they start in a line.
const PREFETCH_BYTES: usize = 128;

/// Asks the CPU to start loading the first and last cache line of `slice`
/// (at most two lines apart: see [`PREFETCH_BYTES`]).
fn prefetch(slice: &VolatileSlice, write: bool) {
    let guard = slice.ptr_guard();
    let first = guard.as_ptr();
    sys::prefetch(first, first.wrapping_add(slice.len().saturating_sub(1)), write);
}

/// One descriptor, as the guest wrote it (little-endian on the wire).
#[derive(Clone, Copy)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    flags: u16,
    next: u16,
}

impl Desc {
    /// From the two little-endian words a descriptor is.
    fn from_words(lo: u64, hi: u64) -> Desc {
        let (lo, hi) = (u64::from_le(lo), u64::from_le(hi));
        Desc { addr: lo, len: hi as u32, flags: (hi >> 32) as u16, next: (hi >> 48) as u16 }
    }

    fn parse(raw: [u8; DESC_SIZE]) -> Desc {
        let [a0, a1, a2, a3, a4, a5, a6, a7, l0, l1, l2, l3, f0, f1, n0, n1] = raw;
        Desc {
            addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            len: u32::from_le_bytes([l0, l1, l2, l3]),
            flags: u16::from_le_bytes([f0, f1]),
            next: u16::from_le_bytes([n0, n1]),
        }
    }

    /// A buffer the device writes (the guest's receive buffers).
    pub fn writable(&self) -> bool {
        self.flags & VRING_DESC_F_WRITE != 0
    }
}

fn volatile(e: vm_memory::VolatileMemoryError) -> Error {
    Error::VolatileMemoryError(e)
}

/// Where a chain's descriptors are read from.
enum Table<'a> {
    /// The ring's table, or an indirect table inside one region.
    Slice(VolatileSlice<'a>),
    /// An indirect table spanning regions: read through the slower path
    /// that splits an access at region boundaries.
    Guest(&'a GuestMemoryMmap, GuestAddress),
}

impl Table<'_> {
    #[inline]
    fn read(&self, index: u16) -> Result<Desc, Error> {
        let offset = usize::from(index) * DESC_SIZE;
        // Two aligned words where the table is aligned (the ring's always
        // is); the rest takes the slower path.
        if let Table::Slice(s) = self
            && let Ok(lo) = s.load::<u64>(offset, Ordering::Relaxed)
            && let Ok(hi) = s.load::<u64>(offset + 8, Ordering::Relaxed)
        {
            return Ok(Desc::from_words(lo, hi));
        }
        self.read_bytes(offset)
    }

    /// [`read`](Table::read) byte by byte: an indirect table that is not
    /// aligned, or one that spans regions.
    #[cold]
    fn read_bytes(&self, offset: usize) -> Result<Desc, Error> {
        let mut raw = [0u8; DESC_SIZE];
        match self {
            Table::Slice(s) => s.read_slice(&mut raw, offset).map_err(volatile)?,
            Table::Guest(memory, base) => {
                let addr = base.0.checked_add(offset as u64).ok_or(Error::AddressOverflow)?;
                memory.read_slice(&mut raw, GuestAddress(addr)).map_err(Error::GuestMemory)?;
            }
        }
        Ok(Desc::parse(raw))
    }
}

/// A running ring for the length of one batch: its three parts resolved to
/// host memory, and its positions, written back with [`Ring::save`].
pub struct Ring<'a> {
    memory: &'a GuestMemoryMmap,
    desc: VolatileSlice<'a>,
    avail: VolatileSlice<'a>,
    used: VolatileSlice<'a>,
    size: u16,
    event_idx: bool,
    pub next_avail: u16,
    next_used: u16,
    /// The used index the guest has been shown.
    published: u16,
    /// The region the last buffer was in, and where it starts: a
    /// frontend's buffers mostly come from one pool.
    region: Cell<Option<(u64, VolatileSlice<'a>)>>,
}

impl<'a> Ring<'a> {
    /// The ring `queue` describes. A ring must lie inside one memory
    /// region (the start of the ring checks it).
    pub fn new(memory: &'a GuestMemoryMmap, queue: &Queue) -> Result<Ring<'a>, Error> {
        let size = queue.size();
        if size == 0 {
            return Err(Error::InvalidSize);
        }
        let n = usize::from(size);
        let part = |addr: u64, len: usize| memory.get_slice(GuestAddress(addr), len).map_err(Error::GuestMemory);
        Ok(Ring {
            memory,
            desc: part(queue.desc_table(), DESC_SIZE * n)?,
            avail: part(queue.avail_ring(), 6 + 2 * n)?,
            used: part(queue.used_ring(), 6 + 8 * n)?,
            size,
            event_idx: queue.event_idx_enabled(),
            next_avail: queue.next_avail(),
            next_used: queue.next_used(),
            published: queue.next_used(),
            region: Cell::new(None),
        })
    }

    /// Whether `queue`'s three parts each lie inside one memory region.
    pub fn fits(memory: &GuestMemoryMmap, queue: &Queue) -> bool {
        Ring::new(memory, queue).is_ok()
    }

    /// Keeps the positions for the next batch.
    pub fn save(&self, queue: &mut Queue) {
        queue.set_next_avail(self.next_avail);
        queue.set_next_used(self.next_used);
    }

    fn slot(&self, index: u16) -> usize {
        // Sizes are powers of two (checked when set); the mask keeps any
        // index inside the ring regardless.
        usize::from(index & (self.size - 1))
    }

    /// The guest's available index: how far it has filled the ring. More
    /// than a ring ahead of what was taken is a lie.
    pub fn avail_idx(&self) -> Result<u16, Error> {
        // Acquire: the entries and descriptors behind the index are read
        // after it.
        let idx = u16::from_le(self.avail.load::<u16>(2, Ordering::Acquire).map_err(volatile)?);
        if idx.wrapping_sub(self.next_avail) > self.size {
            return Err(Error::InvalidAvailRingIndex);
        }
        Ok(idx)
    }

    /// Takes the head of the next available chain; the caller has seen
    /// the available index past it.
    pub fn pop(&mut self) -> Result<u16, Error> {
        let offset = 4 + 2 * self.slot(self.next_avail);
        let head = u16::from_le(self.avail.load::<u16>(offset, Ordering::Relaxed).map_err(volatile)?);
        self.next_avail = self.next_avail.wrapping_add(1);
        if head >= self.size {
            return Err(Error::InvalidDescriptorIndex);
        }
        Ok(head)
    }

    /// Starts loading the first lines of the `len` bytes at `addr`, for
    /// reading or for writing. When the frontend runs on another core,
    /// every line of its buffers comes from that core's cache, a transfer
    /// of 50 to 250 ns depending on where the host put the two cores.
    /// Copied chain after chain, the transfers queue one behind the other;
    /// asked for while a batch's chains are gathered, before the first
    /// copy, they overlap.
    pub fn prefetch(&self, addr: u64, len: u32, write: bool) {
        let len = (len as usize).clamp(1, PREFETCH_BYTES);
        // A hint needs no bounds check, only the host address: taken from
        // the last buffer's region when it starts there (almost always).
        if let Some((region, offset)) = self.in_last_region(addr)
            && offset < region.len()
        {
            let first = region.ptr_guard().as_ptr().wrapping_add(offset);
            sys::prefetch(first, first.wrapping_add(len - 1), write);
        } else if let Some(slice) = self.buffer(addr, len) {
            prefetch(&slice, write);
        }
    }

    /// [`prefetch`](Ring::prefetch) for the used entries of the next
    /// `chains` chains given back, which the frontend last read.
    pub fn prefetch_used(&self, chains: usize) {
        let first = 4 + 8 * self.slot(self.next_used);
        let end = (first + 8 * chains).min(self.used.len());
        for offset in (first..end).step_by(64) {
            if let Ok(entries) = self.used.subslice(offset, 8) {
                prefetch(&entries, true);
            }
        }
    }

    /// Hands `each` the descriptors of the chain at `head` in order,
    /// following an indirect table, until the chain ends or `each` says
    /// stop.
    pub fn walk(&self, head: u16, mut each: impl FnMut(Desc) -> Result<bool, Error>) -> Result<(), Error> {
        let mut table = Table::Slice(self.desc);
        let (mut count, mut left, mut index, mut indirect) = (self.size, self.size, head, false);
        loop {
            if index >= count {
                return Err(Error::InvalidDescriptorIndex);
            }
            if left == 0 {
                return Err(Error::InvalidChain);
            }
            left -= 1;
            let desc = table.read(index)?;
            if desc.flags & VRING_DESC_F_INDIRECT != 0 {
                if indirect {
                    return Err(Error::InvalidIndirectDescriptor);
                }
                if !(desc.len as usize).is_multiple_of(DESC_SIZE) {
                    return Err(Error::InvalidIndirectDescriptorTable);
                }
                count =
                    u16::try_from(desc.len as usize / DESC_SIZE).map_err(|_| Error::InvalidIndirectDescriptorTable)?;
                if count == 0 {
                    return Ok(());
                }
                table = match self.memory.get_slice(GuestAddress(desc.addr), desc.len as usize) {
                    Ok(slice) => Table::Slice(slice),
                    Err(_) => Table::Guest(self.memory, GuestAddress(desc.addr)),
                };
                (left, index, indirect) = (count, 0, true);
                continue;
            }
            if !each(desc)? || desc.flags & VRING_DESC_F_NEXT == 0 {
                return Ok(());
            }
            index = desc.next;
        }
    }

    /// The region the last buffer was in and `addr`'s offset from its
    /// start, if `addr` is not below it; the caller checks the end.
    #[inline]
    fn in_last_region(&self, addr: u64) -> Option<(VolatileSlice<'a>, usize)> {
        let (start, region) = self.region.get()?;
        Some((region, usize::try_from(addr.checked_sub(start)?).ok()?))
    }

    /// The `len` bytes at `addr`, if they lie inside one region.
    #[inline]
    fn buffer(&self, addr: u64, len: usize) -> Option<VolatileSlice<'a>> {
        if let Some((region, offset)) = self.in_last_region(addr)
            && let Ok(slice) = region.subslice(offset, len)
        {
            return Some(slice);
        }
        self.buffer_in_another_region(addr, len)
    }

    /// [`buffer`](Ring::buffer) when the last buffer's region does not hold
    /// this one.
    #[cold]
    fn buffer_in_another_region(&self, addr: u64, len: usize) -> Option<VolatileSlice<'a>> {
        let region = self.memory.find_region(GuestAddress(addr))?;
        let (start, whole) = (region.start_addr().0, region.as_volatile_slice().ok()?);
        self.region.set(Some((start, whole)));
        whole.subslice(usize::try_from(addr - start).ok()?, len).ok()
    }

    /// Copies guest memory at `addr` into `buf`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Error> {
        match self.buffer(addr, buf.len()) {
            Some(slice) => {
                slice.copy_to(buf);
                Ok(())
            }
            // A buffer across two regions, or a bad one: the slow path
            // splits the first and refuses the second.
            None => self.memory.read_slice(buf, GuestAddress(addr)).map_err(Error::GuestMemory),
        }
    }

    /// Copies `buf` into guest memory at `addr`.
    pub fn write(&self, addr: u64, buf: &[u8]) -> Result<(), Error> {
        match self.buffer(addr, buf.len()) {
            Some(slice) => {
                slice.copy_from(buf);
                Ok(())
            }
            None => self.memory.write_slice(buf, GuestAddress(addr)).map_err(Error::GuestMemory),
        }
    }

    /// Gives the chain at `head` back to the guest, `len` bytes written;
    /// the guest sees it at the next [`publish`](Ring::publish).
    pub fn put_used(&mut self, head: u16, len: u32) -> Result<(), Error> {
        let offset = 4 + 8 * self.slot(self.next_used);
        self.used.store(u32::from(head).to_le(), offset, Ordering::Relaxed).map_err(volatile)?;
        self.used.store(len.to_le(), offset + 4, Ordering::Relaxed).map_err(volatile)?;
        self.next_used = self.next_used.wrapping_add(1);
        Ok(())
    }

    /// Shows the guest every chain given back since the last time; true
    /// if it asked to be interrupted for them.
    pub fn publish(&mut self) -> Result<bool, Error> {
        let (old, new) = (self.published, self.next_used);
        if old == new {
            return Ok(false);
        }
        // Release: the entries are visible before the index that covers them.
        self.used.store(new.to_le(), 2, Ordering::Release).map_err(volatile)?;
        self.published = new;
        // The guest's wish is read after the index is stored, or an
        // interrupt it asked for in between would be missed.
        fence(Ordering::SeqCst);
        if self.event_idx {
            let offset = 4 + 2 * usize::from(self.size);
            let event = u16::from_le(self.avail.load::<u16>(offset, Ordering::Relaxed).map_err(volatile)?);
            Ok(new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old))
        } else {
            let flags = u16::from_le(self.avail.load::<u16>(0, Ordering::Relaxed).map_err(volatile)?);
            Ok(flags & VRING_AVAIL_F_NO_INTERRUPT == 0)
        }
    }

    /// Asks the guest to kick for chains past the ones taken; true if some
    /// arrived before the request could be seen (then take them: no kick
    /// will come for them).
    pub fn enable_kick(&self) -> Result<bool, Error> {
        if self.event_idx {
            let offset = 4 + 8 * usize::from(self.size);
            self.used.store(self.next_avail.to_le(), offset, Ordering::Relaxed).map_err(volatile)?;
        } else {
            self.used.store(0u16, 0, Ordering::Relaxed).map_err(volatile)?;
        }
        fence(Ordering::SeqCst);
        Ok(self.avail_idx()? != self.next_avail)
    }

    /// Tells the guest kicks are not needed while the ring is being
    /// drained. With event indices there is nothing to do: the guest kicks
    /// only once it passes the index last asked for.
    pub fn disable_kick(&self) -> Result<(), Error> {
        if !self.event_idx {
            self.used.store(VRING_USED_F_NO_NOTIFY.to_le(), 0, Ordering::Relaxed).map_err(volatile)?;
        }
        Ok(())
    }
}
