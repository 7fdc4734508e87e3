//! vhost-user-net ports: vswitch is the backend, a frontend (QEMU, a DPDK
//! `net_virtio_user` port, cloud-hypervisor) connects to the listening
//! socket and hands over its memory and two virtqueues; frames then move
//! through the queues in that shared memory, with no system call per frame.
//!
//! The protocol messages are parsed and checked by the `vhost` crate's
//! backend request handler, `virtio-queue` keeps each ring's configuration
//! and checks that it lies inside guest memory, and every guest access goes
//! through `vm-memory`'s bounds-checked slices, which refuse ranges outside
//! the regions handed over. The rings themselves are walked in
//! [`ring`], which bounds descriptor indices, chain lengths, loops and
//! indirect tables as `virtio-queue` would, at a fraction of its cost per
//! frame. What is left to this file is the device: the features, the
//! memory table (checked against the size of the files that back it, since
//! mapping past the end of a file would turn a lying frontend into a
//! SIGBUS), and the two queues.
//!
//! Everything runs on the caller's thread, driven by readiness of three
//! descriptors per port: the control socket (edge-triggered: a request is
//! only handled once all of it has arrived, so a frontend that sends half a
//! message stalls nobody), the kick eventfd of the guest's transmit queue
//! (frames to read) and the kick eventfd of its receive queue (buffers
//! added after the port ran out). `vhost-user-backend`'s daemon would run
//! the request handler and every queue on threads of its own, and each
//! batch would then cross threads to reach the single-threaded engine.

use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::FileTypeExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::socket::{MsgFlags, recv};
use vhost::VhostUserMemoryRegionBase;
use vhost::vhost_user::message::{
    FrontendReq, MAX_MSG_SIZE, VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags,
    VhostUserInflight, VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{BackendReqHandler, GpuBackend, VhostUserBackendReqHandlerMut};
use virtio_queue::{Queue, QueueT};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestMemoryRegion as _, GuestRegionMmap};

mod ring;
use ring::Ring;

use super::sigbus::Guard;
use super::sys::RecvBatch;

/// Largest frame moved unless the port is told otherwise
/// ([`VhostUserPort::set_max_frame`]): a tagged frame of a 1500-byte MTU,
/// as on the socket ports.
pub const MAX_FRAME: usize = 1518;
/// Frames handled per queue per wake-up before the others get their turn.
pub const BATCH: usize = 64;

/// Queue 0 is the guest's receive queue (the switch writes frames into
/// it), queue 1 its transmit queue.
const RX: usize = 0;
const TX: usize = 1;
const QUEUES: usize = 2;
/// Largest ring the virtio spec allows for split queues.
const MAX_QUEUE_SIZE: u16 = 32768;

const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
const VIRTIO_F_IN_ORDER: u64 = 1 << 35;
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
const FEATURES: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_NET_F_MRG_RXBUF
    | VIRTIO_RING_F_INDIRECT_DESC
    | VIRTIO_RING_F_EVENT_IDX
    | VIRTIO_F_IN_ORDER
    | VHOST_USER_F_PROTOCOL_FEATURES;

/// The fixed part of a vhost-user message: request, flags, payload size.
const HEADER: usize = 12;

/// Why a port is closed. Every variant means the frontend is gone or not
/// to be trusted; the other ports are not affected.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("frontend hung up")]
    HungUp,
    #[error("vhost-user request: {0}")]
    Request(#[from] vhost::vhost_user::Error),
    #[error("queue {queue}: {error}")]
    Queue { queue: usize, error: virtio_queue::Error },
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("guest memory truncated under the switch")]
    MemoryGone,
}

fn invalid(reason: &'static str) -> vhost::vhost_user::Error {
    vhost::vhost_user::Error::InvalidOperation(reason)
}

/// One virtqueue and its eventfds.
struct Vring {
    queue: Queue,
    kick: Option<Arc<File>>,
    call: Option<File>,
    /// With protocol features the frontend enables each ring explicitly;
    /// without them a ring runs once its kick descriptor is set.
    enabled: bool,
}

impl Vring {
    fn new() -> Vring {
        Vring {
            queue: Queue::new(MAX_QUEUE_SIZE).expect("the largest ring size is a power of two"),
            kick: None,
            call: None,
            enabled: false,
        }
    }
}

/// Frontend-virtual to guest-physical translation for ring addresses,
/// which vhost-user gives in the frontend's address space.
#[derive(Clone, Copy)]
struct Mapping {
    user_addr: u64,
    guest_addr: u64,
    size: u64,
}

/// The device state the request handler changes and the data path reads.
struct Device {
    acked: u64,
    protocol_acked: bool,
    /// Before `memory`, so that they go before the mappings they guard.
    guards: Vec<Guard>,
    memory: Option<GuestMemoryMmap>,
    mappings: Vec<Mapping>,
    vrings: [Vring; QUEUES],
    /// Bumped whenever a kick descriptor changes, so the port knows to
    /// refresh what its caller waits on.
    kick_generation: u64,
}

impl Device {
    /// Fails if the frontend truncated guest memory under the last accesses
    /// (the SIGBUS guard turned the vanished pages into zeros).
    fn memory_intact(&self) -> Result<(), PortError> {
        if self.guards.iter().any(Guard::faulted) { Err(PortError::MemoryGone) } else { Ok(()) }
    }

    fn translate(&self, user_addr: u64) -> Option<u64> {
        self.mappings
            .iter()
            .find(|m| user_addr >= m.user_addr && user_addr - m.user_addr < m.size)
            .map(|m| user_addr - m.user_addr + m.guest_addr)
    }

    fn vring(&mut self, index: u32) -> vhost::vhost_user::Result<&mut Vring> {
        self.vrings.get_mut(index as usize).ok_or(invalid("no such queue"))
    }

    /// Header in front of every frame: `virtio_net_hdr_v1` (12 bytes) with
    /// VERSION_1 or mergeable buffers, the legacy 10-byte one otherwise.
    fn header_len(&self) -> usize {
        if self.acked & (VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF) != 0 { 12 } else { 10 }
    }

    fn running(&self, index: usize) -> bool {
        let v = &self.vrings[index];
        v.enabled && v.kick.is_some() && v.queue.ready() && self.memory.is_some()
    }

    /// Starts a ring once the frontend has told all about it, checking the
    /// ring's layout against the memory table.
    fn try_start(&mut self, index: usize) -> vhost::vhost_user::Result<()> {
        let Some(memory) = &self.memory else { return Ok(()) };
        let vring = &mut self.vrings[index];
        if vring.kick.is_none() || !vring.enabled || vring.queue.ready() {
            return Ok(());
        }
        vring.queue.set_ready(true);
        // The data path resolves each part of a ring once per batch, so
        // each must lie inside one memory region.
        if !vring.queue.is_valid(memory) || !Ring::fits(memory, &vring.queue) {
            vring.queue.set_ready(false);
            return Err(invalid("ring outside guest memory, across regions or misaligned"));
        }
        Ok(())
    }
}

/// A descriptor received from the frontend, made non-blocking: a frontend
/// that never drains its call eventfd, or hands over a pipe, must not be
/// able to block the switch.
fn nonblocking(file: File) -> vhost::vhost_user::Result<File> {
    let flags = fcntl(&file, FcntlArg::F_GETFL).map_err(|_| invalid("bad descriptor"))?;
    fcntl(&file, FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK))
        .map_err(|_| invalid("bad descriptor"))?;
    Ok(file)
}

/// The page size of a mapping of `file`: a hugetlbfs file's huge pages, or
/// 0 for the system's.
fn page_size_of(file: &File) -> usize {
    use nix::sys::statfs::{HUGETLBFS_MAGIC, fstatfs};
    match fstatfs(file) {
        Ok(fs) if fs.filesystem_type() == HUGETLBFS_MAGIC => usize::try_from(fs.block_size()).unwrap_or(0),
        _ => 0,
    }
}

fn memory_region(region: &VhostUserMemoryRegion, file: File) -> vhost::vhost_user::Result<GuestRegionMmap> {
    let meta = file.metadata().map_err(|_| invalid("memory descriptor"))?;
    let ft = meta.file_type();
    if !meta.is_file() && !ft.is_block_device() && !ft.is_char_device() {
        return Err(invalid("memory descriptor is not a file"));
    }
    let end = region.mmap_offset.checked_add(region.memory_size).ok_or(invalid("memory region overflows"))?;
    // Mapping beyond the end of the file would fault on first touch.
    if meta.is_file() && end > meta.len() {
        return Err(invalid("memory region beyond the end of its file"));
    }
    let size = usize::try_from(region.memory_size).map_err(|_| invalid("memory region too large"))?;
    GuestRegionMmap::from_range(
        GuestAddress(region.guest_phys_addr),
        size,
        Some(FileOffset::new(file, region.mmap_offset)),
    )
    .map_err(|_| invalid("cannot map memory region"))
}

impl VhostUserBackendReqHandlerMut for Device {
    fn set_owner(&mut self) -> vhost::vhost_user::Result<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> vhost::vhost_user::Result<()> {
        Ok(())
    }

    fn reset_device(&mut self) -> vhost::vhost_user::Result<()> {
        Err(invalid("reset is not offered"))
    }

    fn get_features(&mut self) -> vhost::vhost_user::Result<u64> {
        Ok(FEATURES)
    }

    fn set_features(&mut self, features: u64) -> vhost::vhost_user::Result<()> {
        if features & !FEATURES != 0 {
            return Err(vhost::vhost_user::Error::FeatureMismatch);
        }
        self.acked = features;
        let event_idx = features & VIRTIO_RING_F_EVENT_IDX != 0;
        for v in &mut self.vrings {
            v.queue.set_event_idx(event_idx);
            if features & VHOST_USER_F_PROTOCOL_FEATURES == 0 {
                v.enabled = true;
            }
        }
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        regions: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy: Option<bool>,
    ) -> vhost::vhost_user::Result<Option<Vec<VhostUserMemoryRegionBase>>> {
        if regions.len() != files.len() {
            return Err(vhost::vhost_user::Error::IncorrectFds);
        }
        let mut mapped = Vec::with_capacity(regions.len());
        let mut mappings = Vec::with_capacity(regions.len());
        let mut granules = Vec::with_capacity(regions.len());
        for (region, file) in regions.iter().zip(files) {
            granules.push(page_size_of(&file));
            mapped.push(memory_region(region, file)?);
            mappings.push(Mapping {
                user_addr: region.user_addr,
                guest_addr: region.guest_phys_addr,
                size: region.memory_size,
            });
        }
        // The mappings stay where they are when the regions move.
        let guards = mapped
            .iter()
            .zip(granules)
            .map(|(region, granule)| Guard::new(region.as_ptr(), region.len() as usize, granule))
            .collect::<io::Result<Vec<Guard>>>()
            .map_err(|_| invalid("too many guest memory regions in the switch"))?;
        // Overlapping guest ranges are refused here.
        let memory = GuestMemoryMmap::from_regions(mapped).map_err(|_| invalid("overlapping memory regions"))?;
        self.guards.clear();
        self.memory = Some(memory);
        self.guards = guards;
        self.mappings = mappings;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> vhost::vhost_user::Result<()> {
        let vring = self.vring(index)?;
        match u16::try_from(num) {
            Ok(n) if n.is_power_of_two() && n <= MAX_QUEUE_SIZE => vring.queue.set_size(n),
            _ => return Err(invalid("ring size")),
        }
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> vhost::vhost_user::Result<()> {
        let resolve = |a| self.translate(a).ok_or(invalid("ring address outside the memory table"));
        let (desc, avail, used) = (resolve(descriptor)?, resolve(available)?, resolve(used)?);
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let queue = &mut self.vring(index)?.queue;
        let (lo, hi) = split(desc);
        queue.set_desc_table_address(lo, hi);
        let (lo, hi) = split(avail);
        queue.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(used);
        queue.set_used_ring_address(lo, hi);
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> vhost::vhost_user::Result<()> {
        let base = u16::try_from(base).map_err(|_| invalid("ring base"))?;
        let queue = &mut self.vring(index)?.queue;
        queue.set_next_avail(base);
        queue.set_next_used(base);
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> vhost::vhost_user::Result<VhostUserVringState> {
        // The frontend stops the ring with this request.
        let vring = self.vring(index)?;
        let base = vring.queue.next_avail();
        vring.queue.set_ready(false);
        vring.kick = None;
        vring.call = None;
        self.kick_generation += 1;
        Ok(VhostUserVringState::new(index, u32::from(base)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> vhost::vhost_user::Result<()> {
        let fd = fd.map(nonblocking).transpose()?;
        self.vring(u32::from(index))?.kick = fd.map(Arc::new);
        self.kick_generation += 1;
        self.try_start(usize::from(index))
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> vhost::vhost_user::Result<()> {
        self.vring(u32::from(index))?.call = fd.map(nonblocking).transpose()?;
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> vhost::vhost_user::Result<()> {
        self.vring(u32::from(index)).map(|_| ())
    }

    fn get_protocol_features(&mut self) -> vhost::vhost_user::Result<VhostUserProtocolFeatures> {
        Ok(VhostUserProtocolFeatures::REPLY_ACK)
    }

    fn set_protocol_features(&mut self, features: u64) -> vhost::vhost_user::Result<()> {
        if features & !VhostUserProtocolFeatures::REPLY_ACK.bits() != 0 {
            return Err(vhost::vhost_user::Error::FeatureMismatch);
        }
        self.protocol_acked = true;
        Ok(())
    }

    fn get_queue_num(&mut self) -> vhost::vhost_user::Result<u64> {
        Ok(QUEUES as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> vhost::vhost_user::Result<()> {
        self.vring(index)?.enabled = enable;
        if enable { self.try_start(index as usize) } else { Ok(()) }
    }

    fn get_config(&mut self, _: u32, _: u32, _: VhostUserConfigFlags) -> vhost::vhost_user::Result<Vec<u8>> {
        Err(invalid("no device configuration"))
    }

    fn set_config(&mut self, _: u32, _: &[u8], _: VhostUserConfigFlags) -> vhost::vhost_user::Result<()> {
        Err(invalid("no device configuration"))
    }

    fn set_gpu_socket(&mut self, _: GpuBackend) -> vhost::vhost_user::Result<()> {
        Err(invalid("not a GPU"))
    }

    fn get_shared_object(&mut self, _: VhostUserSharedMsg) -> vhost::vhost_user::Result<File> {
        Err(invalid("no shared objects"))
    }

    fn get_inflight_fd(&mut self, _: &VhostUserInflight) -> vhost::vhost_user::Result<(VhostUserInflight, File)> {
        Err(invalid("no inflight tracking"))
    }

    fn set_inflight_fd(&mut self, _: &VhostUserInflight, _: File) -> vhost::vhost_user::Result<()> {
        Err(invalid("no inflight tracking"))
    }

    fn get_max_mem_slots(&mut self) -> vhost::vhost_user::Result<u64> {
        Err(invalid("memory slots are not offered"))
    }

    fn add_mem_region(
        &mut self,
        _: &VhostUserSingleMemoryRegion,
        _: File,
        _: Option<bool>,
    ) -> vhost::vhost_user::Result<Option<VhostUserMemoryRegionBase>> {
        Err(invalid("memory slots are not offered"))
    }

    fn remove_mem_region(&mut self, _: &VhostUserSingleMemoryRegion) -> vhost::vhost_user::Result<()> {
        Err(invalid("memory slots are not offered"))
    }

    fn set_device_state_fd(
        &mut self,
        _: VhostTransferStateDirection,
        _: VhostTransferStatePhase,
        _: File,
    ) -> vhost::vhost_user::Result<Option<File>> {
        Err(invalid("no device state transfer"))
    }

    fn check_device_state(&mut self) -> vhost::vhost_user::Result<()> {
        Err(invalid("no device state transfer"))
    }

    fn get_shmem_config(&mut self) -> vhost::vhost_user::Result<VhostUserShMemConfig> {
        Err(invalid("no shared memory regions"))
    }

    fn set_log_base(&mut self, _: &VhostUserLog, _: File) -> vhost::vhost_user::Result<()> {
        Err(invalid("no dirty logging"))
    }
}

/// The listening socket of `--vhost-user PATH`.
pub struct VhostUserListener {
    listener: UnixListener,
    path: PathBuf,
}

impl VhostUserListener {
    /// Listens on `path`, replacing a stale socket left there.
    pub fn bind(path: &Path) -> io::Result<VhostUserListener> {
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        Ok(VhostUserListener { listener, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The frontend waiting to connect, if any.
    pub fn accept(&self) -> io::Result<Option<VhostUserPort>> {
        match self.listener.accept() {
            Ok((stream, _)) => VhostUserPort::new(stream).map(Some),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl AsFd for VhostUserListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

impl Drop for VhostUserListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What sending a batch to the guest did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub frames: usize,
    /// The guest's receive ring ran out of buffers: the rest would block
    /// until the guest kicks the receive queue ([`VhostUserPort::rx_kick`]).
    pub would_block: bool,
}

/// One connected frontend.
pub struct VhostUserPort {
    requests: BackendReqHandler<Mutex<Device>>,
    device: Arc<Mutex<Device>>,
    /// The control connection, for peeking at whether a whole request has
    /// arrived before the handler reads it.
    control: UnixStream,
    kicks: [Option<Arc<File>>; QUEUES],
    kick_generation: u64,
    max_frame: usize,
    /// The chains of the batch being received or sent.
    chains: Chains,
    poll: Poll,
    /// The last receive left frames in the ring, with the kick off.
    tx_pending: bool,
    /// The last send ran out of buffers and asked for a receive kick.
    rx_waiting: bool,
}

/// What receiving a batch from the guest did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub frames: usize,
    /// Frames are left in the ring and no kick will say so.
    pub more: bool,
}

/// A request waiting whole on the control socket.
struct Waiting {
    /// `(index, num)` when it is `SET_VRING_ENABLE`.
    vring_enable: Option<(u32, u32)>,
}

/// What handling control requests changed for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Unchanged,
    /// The kick descriptors were replaced: wait on the new ones.
    KicksChanged,
}

impl VhostUserPort {
    /// A port for the frontend at the other end of `stream`.
    pub fn new(stream: UnixStream) -> io::Result<VhostUserPort> {
        stream.set_nonblocking(true)?;
        let control = stream.try_clone()?;
        let device = Arc::new(Mutex::new(Device {
            acked: 0,
            protocol_acked: false,
            guards: Vec::new(),
            memory: None,
            mappings: Vec::new(),
            vrings: [Vring::new(), Vring::new()],
            kick_generation: 0,
        }));
        Ok(VhostUserPort {
            requests: BackendReqHandler::from_stream(stream, device.clone()),
            device,
            control,
            kicks: [None, None],
            kick_generation: 0,
            max_frame: MAX_FRAME,
            chains: Chains::default(),
            poll: Poll::default(),
            tx_pending: false,
            rx_waiting: false,
        })
    }

    fn device(&self) -> std::sync::MutexGuard<'_, Device> {
        // Nothing panics while holding the lock, so it is never poisoned;
        // if it were, the state would still be consistent field by field.
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The control socket, to be waited on edge-triggered.
    pub fn control_fd(&self) -> BorrowedFd<'_> {
        self.control.as_fd()
    }

    /// Kick of the guest's transmit queue: frames to [`receive`](Self::receive).
    pub fn tx_kick(&self) -> Option<BorrowedFd<'_>> {
        self.kicks[TX].as_deref().map(AsFd::as_fd)
    }

    /// Kick of the guest's receive queue: buffers for [`send`](Self::send)
    /// after it reported `would_block`.
    pub fn rx_kick(&self) -> Option<BorrowedFd<'_>> {
        self.kicks[RX].as_deref().map(AsFd::as_fd)
    }

    /// The request waiting whole on the control socket, if any.
    fn request_waiting(&self) -> Result<Option<Waiting>, PortError> {
        let mut buf = [0u8; HEADER + MAX_MSG_SIZE];
        match recv(self.control.as_raw_fd(), &mut buf, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
            Ok(0) => Err(PortError::HungUp),
            Ok(n) => {
                let word = |at: usize| u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
                let size = (n >= HEADER).then(|| word(8) as usize);
                // An oversized request is complete enough for the handler
                // to refuse it.
                let complete = size.is_some_and(|size| size > MAX_MSG_SIZE || n >= HEADER + size);
                if !complete {
                    // A peek never reaches the end of the stream behind
                    // half a request: the rest will not come if the
                    // frontend is gone.
                    if crate::net::sys::peer_shut_down(self.control.as_fd()) {
                        return Err(PortError::HungUp);
                    }
                    return Ok(None);
                }
                let vring_enable = (word(0) == FrontendReq::SET_VRING_ENABLE as u32 && size == Some(8))
                    .then(|| (word(HEADER), word(HEADER + 4)));
                Ok(Some(Waiting { vring_enable }))
            }
            Err(nix::errno::Errno::EAGAIN) => Ok(None),
            Err(e) => Err(io::Error::from(e).into()),
        }
    }

    /// Handles every complete request waiting on the control socket. An
    /// error means the frontend is gone or misbehaved: close the port.
    pub fn handle_control(&mut self) -> Result<Control, PortError> {
        while let Some(waiting) = self.request_waiting()? {
            match self.requests.handle_request() {
                // The one request the crate gates on an acknowledged
                // feature is SET_VRING_ENABLE. QEMU 7.2's virtio-net sends
                // it only before SET_FEATURES, never once the rings are set
                // up, so a ring enabled there must count as enabled (DPDK's
                // backend counts it too) or no frame ever moves. The
                // message was read whole: the connection is still in step.
                Err(vhost::vhost_user::Error::InactiveFeature(_)) => {
                    if let Some((index, num)) = waiting.vring_enable {
                        let enable = match num {
                            0 => false,
                            1 => true,
                            _ => return Err(vhost::vhost_user::Error::InvalidParam.into()),
                        };
                        self.device().set_vring_enable(index, enable)?;
                    }
                }
                result => result?,
            }
        }
        let generation = self.device().kick_generation;
        if generation == self.kick_generation {
            return Ok(Control::Unchanged);
        }
        self.kick_generation = generation;
        let device = self.device();
        let kicks = [device.vrings[RX].kick.clone(), device.vrings[TX].kick.clone()];
        drop(device);
        self.kicks = kicks;
        Ok(Control::KicksChanged)
    }

    /// Receives up to `max` (at most [`BATCH`]) frames the guest
    /// transmitted, each copied from guest memory straight into the buffer
    /// `sink` gives for it. `more` says frames are left in the ring, or
    /// that the port is polling (see [`set_poll`](Self::set_poll)): either
    /// way the guest does not kick, and the caller comes back (after its
    /// other ports) without waiting for the transmit kick.
    pub fn receive(&mut self, max: usize, sink: &mut impl FrameSink) -> Result<Received, PortError> {
        if !self.tx_pending
            && let Some(kick) = &self.kicks[TX]
        {
            let _ = (&**kick).read(&mut [0u8; 8]);
        }
        self.tx_pending = false;
        let Self { device, poll, max_frame, chains, .. } = self;
        let max_frame = *max_frame;
        let mut device = device.lock().unwrap_or_else(|e| e.into_inner());
        if !device.running(TX) {
            return Ok(Received { frames: 0, more: false });
        }
        let header = device.header_len();
        let Device { memory, vrings, .. } = &mut *device;
        let memory = memory.as_ref().expect("a running ring has memory");
        let vring = &mut vrings[TX];
        let queue_error = |error| PortError::Queue { queue: TX, error };
        let mut ring = Ring::new(memory, &vring.queue).map_err(queue_error)?;
        let max = max.min(BATCH);
        // No frame needs more of a chain than its header, the largest frame
        // and the byte past it that shows a frame too long.
        let needed = header + max_frame + 1;
        let (mut done, mut handed) = (0, 0);
        let more = loop {
            ring.disable_kick().map_err(queue_error)?;
            let mut avail = ring.avail_idx().map_err(queue_error)?;
            // Every chain ready now is gathered, its buffers prefetched,
            // before any is copied (see `Ring::prefetch`).
            chains.clear();
            while done < max {
                if ring.next_avail == avail {
                    avail = ring.avail_idx().map_err(queue_error)?;
                    if ring.next_avail == avail {
                        break;
                    }
                }
                let head = ring.pop().map_err(queue_error)?;
                let mut seen = 0;
                ring.walk(head, |desc| {
                    // The device-writable part of a chain is not the frame's.
                    if !desc.writable() && desc.len > 0 {
                        ring.prefetch(desc.addr, desc.len, false);
                        chains.buffers.push((desc.addr, desc.len));
                        seen += desc.len as usize;
                    }
                    Ok(seen < needed)
                })
                .map_err(queue_error)?;
                chains.heads.push((head, chains.buffers.len()));
                done += 1;
            }
            ring.prefetch_used(chains.heads.len());
            for chain in 0..chains.heads.len() {
                let (head, buffers) = chains.chain(chain);
                let buffer = sink.buffer(handed);
                // A byte past the largest frame shows the frame is too
                // long: it goes on cut there, and the engine counts it as
                // `oversize`, as a datagram cut at the buffer's end.
                let limit = buffer.len().min(max_frame + 1);
                let (mut seen, mut len) = (0, 0);
                // Copied buffer by buffer (each range checked against guest
                // memory), the header left behind.
                for &(addr, size) in buffers {
                    let skip = header.saturating_sub(seen).min(size as usize);
                    seen += size as usize;
                    let take = (size as usize - skip).min(limit - len);
                    let addr = addr.checked_add(skip as u64).ok_or(virtio_queue::Error::AddressOverflow);
                    ring.read(addr.map_err(queue_error)?, &mut buffer[len..len + take]).map_err(queue_error)?;
                    len += take;
                    if len == limit {
                        break;
                    }
                }
                // Shorter than its header: not a frame.
                if seen >= header {
                    sink.filled(handed, len);
                    handed += 1;
                }
                ring.put_used(head, 0).map_err(queue_error)?;
            }
            if done >= max {
                break true;
            }
            if poll.keep_polling(done > 0) {
                break true;
            }
            // Frames added between the last look and re-enabling the kick
            // would otherwise wait for the next kick.
            if !ring.enable_kick().map_err(queue_error)? {
                break false;
            }
        };
        let notify = ring.publish().map_err(queue_error)?;
        ring.save(&mut vring.queue);
        if notify {
            signal(vring.call.as_ref());
        }
        device.memory_intact()?;
        drop(device);
        self.tx_pending = more;
        Ok(Received { frames: handed, more })
    }

    /// Writes `frames` into the guest's receive ring, each behind a
    /// virtio-net header, spreading a frame over several buffers when the
    /// guest accepted mergeable buffers. Stops when the ring is out of
    /// buffers; the guest's next receive kick says there are more.
    pub fn send(&mut self, frames: &[&[u8]]) -> Result<Sent, PortError> {
        if self.rx_waiting
            && let Some(kick) = &self.kicks[RX]
        {
            let _ = (&**kick).read(&mut [0u8; 8]);
        }
        let Self { device, chains, max_frame, .. } = self;
        let mut device = device.lock().unwrap_or_else(|e| e.into_inner());
        let mut sent = Sent { frames: 0, would_block: false };
        if !device.running(RX) {
            // Nobody is listening yet: what a down link does to a frame.
            sent.frames = frames.len();
            return Ok(sent);
        }
        let filler = Filler { header: device.header_len(), mergeable: device.acked & VIRTIO_NET_F_MRG_RXBUF != 0 };
        let Device { memory, vrings, .. } = &mut *device;
        let memory = memory.as_ref().expect("a running ring has memory");
        let vring = &mut vrings[RX];
        let queue_error = |error| PortError::Queue { queue: RX, error };
        let mut ring = Ring::new(memory, &vring.queue).map_err(queue_error)?;
        let mut avail = ring.avail_idx().map_err(queue_error)?;
        // Buffers are found for every frame that has room, and prefetched,
        // before any is written (see `Ring::prefetch`).
        chains.clear();
        for frame in frames {
            // Longer than the port carries: gone, as on a link of that MTU.
            if frame.len() > *max_frame {
                chains.frames.push(chains.heads.len());
                continue;
            }
            if filler.place(&mut ring, &mut avail, chains, frame.len()).map_err(queue_error)? {
                continue;
            }
            // Ask for a kick when buffers come, then look once more in
            // case they came before the request was seen.
            if ring.enable_kick().map_err(queue_error)?
                && filler.place(&mut ring, &mut avail, chains, frame.len()).map_err(queue_error)?
            {
                continue;
            }
            sent.would_block = true;
            break;
        }
        sent.frames = chains.frames.len();
        ring.prefetch_used(chains.heads.len());
        filler.fill(&mut ring, chains, &frames[..sent.frames]).map_err(queue_error)?;
        if !sent.would_block {
            ring.disable_kick().map_err(queue_error)?;
        }
        let notify = ring.publish().map_err(queue_error)?;
        ring.save(&mut vring.queue);
        if notify {
            signal(vring.call.as_ref());
        }
        device.memory_intact()?;
        drop(device);
        self.rx_waiting = sent.would_block;
        Ok(sent)
    }

    /// Makes the port look for frames again for up to `window` after the
    /// last one it received before it asks the guest for a kick: busy
    /// polling while traffic flows hides the time a kick takes to wake the
    /// switch, at the price of CPU for `window` after the last frame.
    /// Zero (the default) never polls.
    pub fn set_poll(&mut self, window: Duration) {
        self.poll = Poll { window, last: None };
    }

    /// Carries frames of up to `max` bytes (the switch's `--mtu`) instead
    /// of [`MAX_FRAME`]: longer ones from the guest are handed on cut a
    /// byte past `max` (for the caller to count and drop), longer ones to
    /// it are not written.
    pub fn set_max_frame(&mut self, max: usize) {
        self.max_frame = max;
    }
}

/// Where [`VhostUserPort::receive`] puts the frames of a batch: each is
/// copied from guest memory straight into the buffer given for it.
pub trait FrameSink {
    /// The buffer for the `index`th frame of the batch. A frame longer
    /// than it is cut to fit.
    fn buffer(&mut self, index: usize) -> &mut [u8];
    /// The `index`th frame is the first `len` bytes of its buffer.
    fn filled(&mut self, index: usize, len: usize);
}

/// A [`FrameSink`] that hands each frame to a closure, through one buffer
/// of its own: for callers that do not keep a batch.
pub struct EachFrame<F> {
    buffer: Box<[u8]>,
    each: F,
}

impl<F: FnMut(&[u8])> EachFrame<F> {
    /// Room for frames of up to `max` bytes and the byte past them that
    /// shows one is too long.
    pub fn new(max: usize, each: F) -> EachFrame<F> {
        EachFrame { buffer: vec![0; max + 1].into_boxed_slice(), each }
    }
}

impl<F: FnMut(&[u8])> FrameSink for EachFrame<F> {
    fn buffer(&mut self, _: usize) -> &mut [u8] {
        &mut self.buffer
    }

    fn filled(&mut self, _: usize, len: usize) {
        (self.each)(&self.buffer[..len]);
    }
}

/// The poll window of a port and when it last received a frame.
#[derive(Debug, Default)]
struct Poll {
    window: Duration,
    last: Option<Instant>,
}

impl Poll {
    /// Whether to look again rather than ask for a kick, having just taken
    /// frames from the ring (`busy`) or found it empty.
    fn keep_polling(&mut self, busy: bool) -> bool {
        if self.window.is_zero() {
            return false;
        }
        let now = Instant::now();
        if busy {
            self.last = Some(now);
        }
        match self.last {
            Some(last) if now.duration_since(last) < self.window => true,
            _ => {
                self.last = None;
                false
            }
        }
    }
}

/// Interrupts the guest. A full or invalid call descriptor is the
/// frontend's problem; the frames are in its ring either way.
fn signal(call: Option<&File>) {
    if let Some(mut call) = call {
        let _ = call.write(&1u64.to_ne_bytes());
    }
}

/// A receive batch as a [`FrameSink`]: frames go straight from guest
/// memory into its buffers (a batch's buffers hold a frame a byte past the
/// largest, one too long for the engine to count).
pub struct IntoBatch<'a> {
    pub rx: &'a mut RecvBatch,
    /// Frames written so far, also when the receive then failed.
    pub filled: usize,
}

impl FrameSink for IntoBatch<'_> {
    fn buffer(&mut self, index: usize) -> &mut [u8] {
        self.rx.buf_mut(index)
    }

    fn filled(&mut self, index: usize, len: usize) {
        self.rx.set_frame(index, 0, len);
        self.filled = index + 1;
    }
}

/// The chains of a batch and the buffers of each, gathered (and
/// prefetched) before a byte of the batch is copied; kept by the port so
/// their room is allocated once.
#[derive(Default)]
struct Chains {
    /// A chain's head and where its buffers end in `buffers`.
    heads: Vec<(u16, usize)>,
    /// Guest address and length of each buffer.
    buffers: Vec<(u64, u32)>,
    /// When sending, where each frame's chains end in `heads` (a merged
    /// frame takes several, a frame too long for the port none).
    frames: Vec<usize>,
}

impl Chains {
    fn clear(&mut self) {
        self.heads.clear();
        self.buffers.clear();
        self.frames.clear();
    }

    /// The head of the `index`th chain and its buffers.
    fn chain(&self, index: usize) -> (u16, &[(u64, u32)]) {
        let start = index.checked_sub(1).map_or(0, |before| self.heads[before].1);
        let (head, end) = self.heads[index];
        (head, &self.buffers[start..end])
    }
}

/// How frames go into the receive ring: the header the guest expects in
/// front of each, written with the frame straight into guest memory.
struct Filler {
    header: usize,
    mergeable: bool,
}

impl Filler {
    /// Takes the chains a frame of `len` bytes needs from the receive ring
    /// and prefetches their buffers for writing; `false` if the ring has
    /// too few buffers for it (then nothing was taken). `avail` is the
    /// guest's available index as last read.
    fn place(
        &self,
        ring: &mut Ring,
        avail: &mut u16,
        chains: &mut Chains,
        len: usize,
    ) -> Result<bool, virtio_queue::Error> {
        let total = self.header + len;
        let taken = (ring.next_avail, chains.heads.len(), chains.buffers.len());
        let mut room = 0;
        while room < total {
            if ring.next_avail == *avail {
                *avail = ring.avail_idx()?;
                if ring.next_avail == *avail {
                    ring.next_avail = taken.0;
                    chains.heads.truncate(taken.1);
                    chains.buffers.truncate(taken.2);
                    return Ok(false);
                }
            }
            let head = ring.pop()?;
            ring.walk(head, |desc| {
                if desc.writable() && desc.len > 0 {
                    ring.prefetch(desc.addr, desc.len.min((total - room) as u32), true);
                    chains.buffers.push((desc.addr, desc.len));
                    room += desc.len as usize;
                }
                Ok(room < total)
            })?;
            chains.heads.push((head, chains.buffers.len()));
            // Without mergeable buffers a frame gets one chain, cut to fit
            // if the guest posted a smaller one.
            if !self.mergeable {
                break;
            }
        }
        chains.frames.push(chains.heads.len());
        Ok(true)
    }

    /// Writes each of `frames` into the chains [`place`](Filler::place)
    /// took for it and gives the chains back to the guest.
    fn fill(&self, ring: &mut Ring, chains: &Chains, frames: &[&[u8]]) -> Result<(), virtio_queue::Error> {
        let mut first = 0;
        for (frame, &end) in frames.iter().zip(&chains.frames) {
            let taken = first..end;
            first = end;
            let mut header = [0u8; 12];
            // The header's last field counts the buffers a merged frame uses.
            if self.header == 12 {
                header[10..12].copy_from_slice(&(taken.len() as u16).to_le_bytes());
            }
            let packet = Packet { header: &header[..self.header], frame };
            let total = self.header + frame.len();
            let mut offset = 0;
            for chain in taken {
                let (head, buffers) = chains.chain(chain);
                let chain_start = offset;
                for &(addr, len) in buffers {
                    let len = (len as usize).min(total - offset);
                    packet.write(ring, addr, offset..offset + len)?;
                    offset += len;
                }
                ring.put_used(head, (offset - chain_start) as u32)?;
            }
        }
        Ok(())
    }
}

/// A frame behind its virtio-net header, as the guest receives it.
struct Packet<'a> {
    header: &'a [u8],
    frame: &'a [u8],
}

impl Packet<'_> {
    /// Copies the packet's bytes `range` to guest memory at `addr`.
    fn write(&self, ring: &Ring, mut addr: u64, range: std::ops::Range<usize>) -> Result<(), virtio_queue::Error> {
        let mut from = range.start;
        if from < self.header.len() {
            let part = &self.header[from..range.end.min(self.header.len())];
            ring.write(addr, part)?;
            addr = addr.checked_add(part.len() as u64).ok_or(virtio_queue::Error::AddressOverflow)?;
            from += part.len();
        }
        if from < range.end {
            ring.write(addr, &self.frame[from - self.header.len()..range.end - self.header.len()])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::frontend::{EVENT_IDX, Frontend, MRG_RXBUF, VERSION_1};

    /// QEMU 7.2's virtio-net enables both rings before `SET_FEATURES` and
    /// never again; protocol features are acknowledged after that, and the
    /// rings must run all the same.
    #[test]
    fn rings_enabled_before_set_features_run() {
        let dir = tempfile::tempdir().expect("temp dir");
        let listener = VhostUserListener::bind(&dir.path().join("vhu")).expect("listen");
        let mut front = Frontend::connect(listener.path()).expect("connect");
        let mut port = listener.accept().expect("accept").expect("a waiting frontend");
        for q in [RX, TX] {
            front.vring_state(FrontendReq::SET_VRING_ENABLE as u32, q, 1).expect("send");
        }
        front.set_up(VERSION_1 | MRG_RXBUF | EVENT_IDX | VHOST_USER_F_PROTOCOL_FEATURES).expect("set-up messages");
        port.handle_control().expect("a good set-up");
        let frame: Vec<u8> = (0..60).collect();
        front.transmit(&frame);
        let mut got = Vec::new();
        port.receive(BATCH, &mut EachFrame::new(MAX_FRAME, |f| got.push(f.to_vec()))).expect("receive");
        assert_eq!(got, [frame]);
    }
}
