//! `vswitch-floor`: the benchmark's floor. It speaks the VDE handshake but
//! has no switching logic: endpoint 2k and 2k+1 are wired to each other
//! (`--fanout pair`), or every frame goes to every other endpoint
//! (`--fanout all`), with the same batched system calls vswitch uses. A
//! full destination is waited for rather than dropped, so the floor loses
//! nothing and paces its senders. What it achieves is what any switch on
//! this machine can hope for.
//!
//! Usage: `vswitch-floor DIR [--fanout pair|all] [--mtu N]` (runs in the
//! foreground until SIGTERM; creates DIR and DIR/ctl). `--mtu` sizes the
//! buffers for frames of N payload bytes, as vswitch's option does.

use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, bind, socket};

use vswitch::engine::{DEFAULT_MTU, FRAME_OVERHEAD};
use vswitch::net::sys::{BATCH, RecvBatch, connect_raw, send_batch};
use vswitch::wire::{Request, reply_for_path};

const LISTENER: u64 = u64::MAX;

struct Endpoint {
    _control: UnixStream,
    data: OwnedFd,
}

fn attach(dir: &std::path::Path, mut stream: UnixStream, index: usize) -> Result<Endpoint> {
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
    const USAGE: &str = "usage: vswitch-floor DIR [--fanout pair|all] [--mtu N]";
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().context(USAGE)?);
    let (mut pairwise, mut mtu) = (true, DEFAULT_MTU as usize);
    while let Some(option) = args.next() {
        match (option.as_str(), args.next().as_deref()) {
            ("--fanout", Some("pair")) => pairwise = true,
            ("--fanout", Some("all")) => pairwise = false,
            ("--mtu", Some(n)) => mtu = n.parse().context(USAGE)?,
            _ => bail!(USAGE),
        }
    }
    // A session of its own, as the daemonised switches have: with
    // autogrouping the scheduler treats each session as a group, and the
    // floor must be scheduled like the switches it is compared with.
    let _ = nix::unistd::setsid();
    fs::create_dir_all(&dir)?;
    let ctl = dir.join("ctl");
    let _ = fs::remove_file(&ctl);
    let listener = UnixListener::bind(&ctl)?;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(&listener, EpollEvent::new(EpollFlags::EPOLLIN, LISTENER))?;
    let mut endpoints: Vec<Endpoint> = Vec::new();
    let mut rx = RecvBatch::new(2048.max(mtu + FRAME_OVERHEAD as usize + 1));
    let mut events = vec![EpollEvent::empty(); 64];
    loop {
        let n = epoll.wait(&mut events, EpollTimeout::NONE).or_else(|e| match e {
            nix::errno::Errno::EINTR => Ok(0),
            e => Err(e),
        })?;
        for ev in &events[..n] {
            if ev.data() == LISTENER {
                let (stream, _) = listener.accept()?;
                // Probes that connect and hang up are not endpoints.
                let Ok(ep) = attach(&dir, stream, endpoints.len()) else { continue };
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
                let wanted = if pairwise { i == from ^ 1 } else { i != from };
                if wanted {
                    send_all(peer.data.as_fd(), &frames[..got]);
                }
            }
        }
    }
}
