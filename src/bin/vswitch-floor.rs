//! `vswitch-floor`: the benchmark's floor. It speaks the VDE handshake but
//! has no switching logic: endpoint 2k and 2k+1 are wired to each other
//! (`--fanout pair`), or every frame goes to every other endpoint
//! (`--fanout all`), with the same batched system calls vswitch uses. A
//! full destination is waited for rather than dropped, so the floor loses
//! nothing and paces its senders. What it achieves is what any switch on
//! this machine can hope for.
//!
//! `--runtime tokio` runs the same forwarding on a tokio current-thread
//! runtime, each data socket registered with its reactor and given a task
//! of its own: what a Rust developer would write first, measured against
//! the plain epoll loop. The sockets are tokio `UnixDatagram`s driven
//! through `try_io` with the same batched calls: the registration an
//! `AsyncFd` would make, without `AsyncFd::register`'s `unsafe` (its safe
//! constructor is deprecated as unsound since tokio 1.54).
//!
//! `--vhost-user PATH` (repeatable) makes it a vhost-user-net backend
//! instead, listening on each PATH, with the frontends on sockets 2k and
//! 2k+1 wired to each other: the floor of the vhost-user path, with the
//! same transport code vswitch uses. `--vhost-user-poll-us N` makes each
//! port poll its ring for up to N microseconds after its last frame before
//! it waits for a kick again.
//!
//! Usage: `vswitch-floor DIR [--fanout pair|all] [--runtime epoll|tokio] [--mtu N]`
//! or `vswitch-floor --vhost-user PATH --vhost-user PATH [--vhost-user-poll-us N]` (runs in the
//! foreground until SIGTERM; creates DIR and DIR/ctl).
//! `--mtu` sizes the buffers for frames of N payload bytes, as vswitch's
//! option does.

use std::cell::RefCell;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, bind, socket};
use tokio::io::Interest;
use tokio::net::UnixDatagram;

use vswitch::engine::{DEFAULT_MTU, FRAME_OVERHEAD};
use vswitch::net::sys::{BATCH, RecvBatch, connect_raw, send_batch};
use vswitch::net::vhost_user::{self, Control, IntoBatch, VhostUserListener, VhostUserPort};
use vswitch::wire::{Request, reply_for_path};

const LISTENER: u64 = u64::MAX;

struct Endpoint {
    _control: UnixStream,
    data: OwnedFd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Fanout {
    /// Endpoint 2k and 2k+1 are wired to each other.
    Pair,
    /// Every frame goes to every other endpoint.
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Runtime {
    /// One level-triggered epoll set, as vswitch's own loop.
    Epoll,
    /// A tokio current-thread runtime, one task per data socket.
    Tokio,
}

#[derive(Parser)]
#[command(about = "A VDE forwarder with no switching logic: the benchmark's floor")]
struct Args {
    /// Control directory to create (DIR/ctl is its listening socket).
    #[arg(required_unless_present = "vhost_user")]
    dir: Option<PathBuf>,
    /// Be a vhost-user backend listening on PATH instead (repeatable).
    #[arg(long, value_name = "PATH", conflicts_with = "dir")]
    vhost_user: Vec<PathBuf>,
    /// Poll a vhost-user port's transmit ring for up to N microseconds
    /// after its last frame before waiting for a kick (0: never poll).
    #[arg(long, value_name = "N", default_value_t = 0, requires = "vhost_user")]
    vhost_user_poll_us: u64,
    #[arg(long, value_enum, default_value_t = Fanout::Pair)]
    fanout: Fanout,
    #[arg(long, value_enum, default_value_t = Runtime::Epoll)]
    runtime: Runtime,
    /// Largest payload of a frame, as vswitch's `--mtu`.
    #[arg(long, default_value_t = DEFAULT_MTU as usize)]
    mtu: usize,
}

impl Fanout {
    fn wanted(self, from: usize, to: usize) -> bool {
        match self {
            Fanout::Pair => to == from ^ 1,
            Fanout::All => to != from,
        }
    }
}

fn attach(dir: &Path, mut stream: UnixStream, index: usize) -> Result<Endpoint> {
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf)?;
    let req = Request::parse(&buf[..n]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let data = socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_NONBLOCK, None)?;
    connect_raw(data.as_fd(), &req.addr)?;
    let path = dir.join(format!("{index:03}.floor"));
    let _ = fs::remove_file(&path);
    bind(data.as_raw_fd(), &UnixAddr::new(&path)?)?;
    let reply = reply_for_path(path.as_os_str().as_encoded_bytes()).context("path too long")?;
    nix::unistd::write(&stream, &reply.0)?;
    Ok(Endpoint { _control: stream, data })
}

/// Sends every frame, waiting while the destination's socket is full. A
/// destination that has gone away loses the rest.
fn send_all(fd: BorrowedFd, mut frames: &[&[u8]]) {
    while !frames.is_empty() {
        let (sent, error) = send_batch(fd, frames.iter().copied());
        frames = &frames[sent..];
        match error {
            Some(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let _ = poll(&mut [PollFd::new(fd, PollFlags::POLLOUT)], PollTimeout::NONE);
            }
            Some(_) => return,
            None => {}
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    // A session of its own, as the daemonised switches have: with
    // autogrouping the scheduler treats each session as a group, and the
    // floor must be scheduled like the switches it is compared with.
    let _ = nix::unistd::setsid();
    let Some(dir) = args.dir else { return run_vhost_user(&args.vhost_user, args.vhost_user_poll_us) };
    fs::create_dir_all(&dir)?;
    let ctl = dir.join("ctl");
    let _ = fs::remove_file(&ctl);
    let listener = UnixListener::bind(&ctl)?;
    let buffer = 2048.max(args.mtu + FRAME_OVERHEAD as usize + 1);
    match args.runtime {
        Runtime::Epoll => run_epoll(&dir, listener, args.fanout, buffer),
        Runtime::Tokio => run_tokio(&dir, listener, args.fanout, buffer),
    }
}

/// What an epoll event of the vhost-user floor is about: the kind in the
/// high half of the token, the socket's index in the low half.
const VHOST_LISTENER: u64 = 1 << 32;
const VHOST_CONTROL: u64 = 2 << 32;
const VHOST_TX_KICK: u64 = 3 << 32;

fn run_vhost_user(paths: &[PathBuf], poll_us: u64) -> Result<()> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    let listeners: Vec<VhostUserListener> = paths
        .iter()
        .map(|p| VhostUserListener::bind(p).with_context(|| format!("listening on {}", p.display())))
        .collect::<Result<_>>()?;
    for (i, l) in listeners.iter().enumerate() {
        epoll.add(l, EpollEvent::new(EpollFlags::EPOLLIN, VHOST_LISTENER | i as u64))?;
    }
    let mut ports: Vec<Option<VhostUserPort>> = listeners.iter().map(|_| None).collect();
    // Ports with frames left in their ring (or polling it), served in
    // turn without waiting for a kick.
    let mut pending = vec![false; ports.len()];
    let mut batch = RecvBatch::new(vhost_user::MAX_FRAME + 1);
    let mut events = vec![EpollEvent::empty(); 64];
    loop {
        let timeout = if pending.contains(&true) { EpollTimeout::ZERO } else { EpollTimeout::NONE };
        let n = wait(&epoll, &mut events, timeout)?;
        for ev in &events[..n] {
            let (kind, i) = (ev.data() & !0xffff_ffff, (ev.data() & 0xffff_ffff) as usize);
            match kind {
                VHOST_LISTENER => {
                    let Some(mut port) = listeners[i].accept()? else { continue };
                    // One frontend per socket; a second one is turned away.
                    if ports[i].is_none() {
                        let edge = EpollFlags::EPOLLIN | EpollFlags::EPOLLET;
                        epoll.add(port.control_fd(), EpollEvent::new(edge, VHOST_CONTROL | i as u64))?;
                        port.set_poll(Duration::from_micros(poll_us));
                        ports[i] = Some(port);
                    }
                }
                VHOST_CONTROL => {
                    let Some(port) = ports[i].as_mut() else { continue };
                    match port.handle_control() {
                        // A replaced kick's registration went with its
                        // descriptor.
                        Ok(Control::KicksChanged) => {
                            if let Some(kick) = port.tx_kick() {
                                let _ = epoll.add(kick, EpollEvent::new(EpollFlags::EPOLLIN, VHOST_TX_KICK | i as u64));
                            }
                        }
                        Ok(Control::Unchanged) => {}
                        Err(e) => {
                            eprintln!("vhost-user {}: closed: {e}", paths[i].display());
                            ports[i] = None;
                        }
                    }
                }
                VHOST_TX_KICK => pending[i] = ports[i].is_some(),
                _ => {}
            }
        }
        for (i, pending) in pending.iter_mut().enumerate() {
            if *pending {
                *pending = forward_vhost_user(&mut ports, i, &mut batch, paths);
            }
        }
    }
}

/// One batch from port `i` to its peer; true if port `i` has more.
fn forward_vhost_user(ports: &mut [Option<VhostUserPort>], i: usize, rx: &mut RecvBatch, paths: &[PathBuf]) -> bool {
    let Some(port) = ports[i].as_mut() else { return false };
    let mut into = IntoBatch { rx, filled: 0 };
    let got = port.receive(vhost_user::BATCH, &mut into);
    let n = into.filled;
    let got = match got {
        Ok(got) => got,
        Err(e) => {
            eprintln!("vhost-user {}: closed: {e}", paths[i].display());
            ports[i] = None;
            return false;
        }
    };
    let mut frames: [&[u8]; vhost_user::BATCH] = [&[]; vhost_user::BATCH];
    for (f, slot) in frames[..n].iter_mut().enumerate() {
        *slot = rx.frame(f);
    }
    if let Some(peer) = ports.get_mut(i ^ 1).and_then(Option::as_mut)
        && let Err(e) = send_all_vhost_user(peer, &frames[..n])
    {
        eprintln!("vhost-user {}: closed: {e}", paths[i ^ 1].display());
        ports[i ^ 1] = None;
    }
    got.more
}

/// Waits for events; an interrupted wait has none.
fn wait(epoll: &Epoll, events: &mut [EpollEvent], timeout: EpollTimeout) -> nix::Result<usize> {
    epoll.wait(events, timeout).or_else(|e| match e {
        nix::errno::Errno::EINTR => Ok(0),
        e => Err(e),
    })
}

/// Sends every frame, waiting while the guest's receive ring is full; a
/// guest that adds no buffers for a second loses the rest.
fn send_all_vhost_user(peer: &mut VhostUserPort, frames: &[&[u8]]) -> Result<(), vhost_user::PortError> {
    let mut left = frames;
    while !left.is_empty() {
        let sent = peer.send(left)?;
        left = &left[sent.frames..];
        if !sent.would_block {
            break;
        }
        let Some(kick) = peer.rx_kick() else { break };
        if !poll(&mut [PollFd::new(kick, PollFlags::POLLIN)], PollTimeout::from(1000u16)).is_ok_and(|n| n > 0) {
            break;
        }
    }
    Ok(())
}

fn run_epoll(dir: &Path, listener: UnixListener, fanout: Fanout, buffer: usize) -> Result<()> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(&listener, EpollEvent::new(EpollFlags::EPOLLIN, LISTENER))?;
    let mut endpoints: Vec<Endpoint> = Vec::new();
    let mut rx = RecvBatch::new(buffer);
    let mut events = vec![EpollEvent::empty(); 64];
    loop {
        let n = wait(&epoll, &mut events, EpollTimeout::NONE)?;
        for ev in &events[..n] {
            if ev.data() == LISTENER {
                let (stream, _) = listener.accept()?;
                // Probes that connect and hang up are not endpoints.
                let Ok(ep) = attach(dir, stream, endpoints.len()) else { continue };
                epoll.add(&ep.data, EpollEvent::new(EpollFlags::EPOLLIN, endpoints.len() as u64))?;
                endpoints.push(ep);
                continue;
            }
            let from = ev.data() as usize;
            let got = rx.recv(endpoints[from].data.as_fd(), BATCH)?;
            let mut frames: [&[u8]; BATCH] = [&[]; BATCH];
            for (i, slot) in frames.iter_mut().enumerate().take(got) {
                *slot = rx.frame(i);
            }
            for (i, peer) in endpoints.iter().enumerate() {
                if fanout.wanted(from, i) {
                    send_all(peer.data.as_fd(), &frames[..got]);
                }
            }
        }
    }
}

/// The data sockets of the tokio floor, by endpoint index.
type Peers = Rc<RefCell<Vec<Rc<UnixDatagram>>>>;

fn run_tokio(dir: &Path, listener: UnixListener, fanout: Fanout, buffer: usize) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    let tasks = tokio::task::LocalSet::new();
    tasks.block_on(&runtime, async move {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let peers = Peers::default();
        let mut controls = Vec::new();
        loop {
            let (stream, _) = listener.accept().await?;
            let stream = stream.into_std()?;
            stream.set_nonblocking(false)?;
            let index = peers.borrow().len();
            let Ok(Endpoint { _control, data }) = attach(dir, stream, index) else { continue };
            let data = Rc::new(UnixDatagram::from_std(std::os::unix::net::UnixDatagram::from(data))?);
            peers.borrow_mut().push(data.clone());
            controls.push(_control);
            tokio::task::spawn_local(forward(index, data, peers.clone(), fanout, buffer));
        }
    })
}

/// One endpoint's task: a batch from its socket, sent whole to every
/// destination, waiting for each while it is full.
async fn forward(from: usize, socket: Rc<UnixDatagram>, peers: Peers, fanout: Fanout, buffer: usize) -> io::Result<()> {
    let mut rx = RecvBatch::new(buffer);
    loop {
        socket.readable().await?;
        let got = match socket.try_io(Interest::READABLE, || match rx.recv(socket.as_fd(), BATCH)? {
            0 => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }) {
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut frames: [&[u8]; BATCH] = [&[]; BATCH];
        for (i, slot) in frames.iter_mut().enumerate().take(got) {
            *slot = rx.frame(i);
        }
        let count = peers.borrow().len();
        for to in (0..count).filter(|&to| fanout.wanted(from, to)) {
            let peer = peers.borrow()[to].clone();
            send_all_async(&peer, &frames[..got]).await?;
        }
    }
}

async fn send_all_async(to: &UnixDatagram, mut frames: &[&[u8]]) -> io::Result<()> {
    while !frames.is_empty() {
        to.writable().await?;
        let sent = to.try_io(Interest::WRITABLE, || {
            let (sent, error) = send_batch(to.as_fd(), frames.iter().copied());
            match error {
                Some(e) if sent == 0 => Err(e),
                _ => Ok(sent),
            }
        });
        match sent {
            Ok(sent) => frames = &frames[sent..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // A destination that has gone away loses the rest.
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}
