//! Load generators: real VDE clients moving frames with batched system
//! calls, counting every frame sent and received.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Result;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use vswitch::client::Client;
use vswitch::net::sys::{BATCH, RecvBatch, send_batch};

/// Receive buffer size: frames are only counted, so longer ones may be cut.
const RX_SIZE: usize = 2048;

/// What one measured run moved.
#[derive(Debug, Clone, Copy, Default)]
pub struct Traffic {
    pub received: u64,
    /// Frames the receivers would have got without loss.
    pub expected: u64,
    pub seconds: f64,
}

pub fn mac(station: u16, role: u8) -> [u8; 6] {
    let [hi, lo] = station.to_be_bytes();
    [2, 0, 0, hi, lo, role]
}

pub fn frame(dst: [u8; 6], src: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    f
}

pub fn attach(dir: &Path, n: usize, description: &str) -> Result<Vec<Client>> {
    (0..n).map(|i| Ok(Client::connect(dir, 0, &format!("{description}{i}"))?)).collect()
}

/// One non-blocking pass over `clients`: a batch from each, counted.
fn drain_once(clients: &[Client], rx: &mut RecvBatch) -> u64 {
    clients.iter().map(|c| rx.recv(c.data().as_fd(), BATCH).unwrap_or(0) as u64).sum()
}

fn drain(clients: &[Client]) {
    let mut rx = RecvBatch::new(RX_SIZE);
    while drain_once(clients, &mut rx) > 0 {}
}

/// Pair `i`'s receiver and sender each speak once (as `mac(i, 2)` and
/// `mac(i, 1)`) so the switch learns where both live; what that flooded is
/// drained.
fn introduce(senders: &[Client], receivers: &[Client]) -> Result<()> {
    for (i, (s, r)) in senders.iter().zip(receivers).enumerate() {
        r.data().send(&frame(mac(i as u16, 1), mac(i as u16, 2), 60))?;
        s.data().send(&frame(mac(i as u16, 2), mac(i as u16, 1), 60))?;
    }
    thread::sleep(Duration::from_millis(50));
    drain(senders);
    drain(receivers);
    Ok(())
}

/// A batch of copies of one frame.
fn repeated(frame: Vec<u8>) -> Vec<Vec<u8>> {
    vec![frame; BATCH]
}

/// Sends `batches[i]` from `senders[i]` over and over for `duration`, as
/// fast as the switch takes it, while counting what reaches `receivers`;
/// then counts stragglers until the switch has been quiet for 100 ms.
///
/// One thread does both and only sleeps when neither side can move: a
/// sender and a receiver in threads of their own sleep and wake each other
/// per batch, and that cost more CPU than the switch being measured.
fn exchange(senders: &[Client], batches: &[Vec<Vec<u8>>], receivers: &[Client], duration: Duration) -> Traffic {
    let batches: Vec<Vec<&[u8]>> = batches.iter().map(|b| b.iter().map(Vec::as_slice).collect()).collect();
    let mut rx = RecvBatch::new(RX_SIZE);
    let (mut sent, mut received) = (0u64, 0u64);
    let started = Instant::now();
    let mut seconds = None;
    let mut quiet_since = None;
    loop {
        let sending = seconds.is_none();
        let mut progressed = false;
        if sending {
            for (s, batch) in senders.iter().zip(&batches) {
                let (n, _) = send_batch(s.data().as_fd(), batch.iter().copied());
                sent += n as u64;
                progressed |= n > 0;
            }
            if started.elapsed() >= duration {
                seconds = Some(started.elapsed().as_secs_f64());
            }
        }
        let got = drain_once(receivers, &mut rx);
        received += got;
        progressed |= got > 0;
        if progressed {
            quiet_since = None;
            continue;
        }
        if !sending && quiet_long_enough(&mut quiet_since) {
            return Traffic { received, expected: sent, seconds: seconds.unwrap_or_default() };
        }
        let outgoing = senders.iter().filter(|_| sending).map(|c| PollFd::new(c.data().as_fd(), PollFlags::POLLOUT));
        let incoming = receivers.iter().map(|c| PollFd::new(c.data().as_fd(), PollFlags::POLLIN));
        let mut fds: Vec<PollFd> = outgoing.chain(incoming).collect();
        let _ = poll(&mut fds, PollTimeout::from(10u16));
    }
}

/// Whether nothing has arrived for 100 ms since `quiet_since`, which the
/// first quiet round sets (and progress clears): the switch has delivered
/// all it will.
fn quiet_long_enough(quiet_since: &mut Option<Instant>) -> bool {
    *quiet_since.get_or_insert_with(Instant::now) + Duration::from_millis(100) < Instant::now()
}

/// Waits (10 ms at most) until `sender` can send or `receiver` has data.
fn wait_for_either(sender: BorrowedFd, receiver: BorrowedFd) {
    let mut fds = [PollFd::new(sender, PollFlags::POLLOUT), PollFd::new(receiver, PollFlags::POLLIN)];
    let _ = poll(&mut fds, PollTimeout::from(10u16));
}

/// `n` senders each streaming unicast frames of `len` bytes to their own
/// receiver. Clients attach as sender, receiver, sender, … so the floor's
/// pairwise wiring matches.
pub fn unicast_pairs(dir: &Path, n: usize, len: usize, duration: Duration) -> Result<Traffic> {
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for i in 0..n {
        senders.push(Client::connect(dir, 0, &format!("tx{i}"))?);
        receivers.push(Client::connect(dir, 0, &format!("rx{i}"))?);
    }
    introduce(&senders, &receivers)?;
    let frames: Vec<Vec<Vec<u8>>> = (0..n).map(|i| repeated(frame(mac(i as u16, 2), mac(i as u16, 1), len))).collect();
    Ok(exchange(&senders, &frames, &receivers, duration))
}

/// One sender on the switch at `from` streaming `len`-byte frames to a
/// receiver on the switch at `to` that never speaks (so the frames are
/// unknown unicast all the way).
pub fn one_way(from: &Path, to: &Path, len: usize, duration: Duration) -> Result<Traffic> {
    let sender = Client::connect(from, 0, "tx")?;
    let receiver = Client::connect(to, 0, "rx")?;
    let frames = vec![repeated(frame(mac(0, 2), mac(0, 1), len))];
    Ok(exchange(std::slice::from_ref(&sender), &frames, std::slice::from_ref(&receiver), duration))
}

/// One sender broadcasting 64-byte frames to `n` receivers.
pub fn broadcast(dir: &Path, n: usize, duration: Duration) -> Result<Traffic> {
    let sender = Client::connect(dir, 0, "tx")?;
    let receivers = attach(dir, n, "rx")?;
    let frames = vec![repeated(frame([0xff; 6], mac(0, 1), 64))];
    let t = exchange(std::slice::from_ref(&sender), &frames, &receivers, duration);
    Ok(Traffic { expected: t.expected * n as u64, ..t })
}

/// One pair streaming 64-byte unicast frames with one broadcast in every
/// batch, and, when `stalled`, a third client attached that never reads:
/// the broadcasts fill its socket. Delivered frames/s at the receiver shows
/// what a dead listener costs everyone else.
pub fn pair_beside_stalled_client(dir: &Path, stalled: bool, duration: Duration) -> Result<Traffic> {
    let senders = [Client::connect(dir, 0, "tx")?];
    let receivers = [Client::connect(dir, 0, "rx")?];
    let _stalled = stalled.then(|| Client::connect(dir, 0, "never-reads")).transpose()?;
    introduce(&senders, &receivers)?;
    let mut batch = repeated(frame(mac(0, 2), mac(0, 1), 64));
    batch[0] = frame([0xff; 6], mac(0, 1), 64);
    Ok(exchange(&senders, &[batch], &receivers, duration))
}

/// Round-trip times between a pinging and an echoing client on each of
/// `dirs`, `samples` per switch, sorted. The switches take turns ping by
/// ping, so whatever else the machine does in the meantime lands on all of
/// them alike.
pub fn round_trips(dirs: &[PathBuf], samples: usize) -> Result<Vec<Vec<Duration>>> {
    let ping = frame(mac(0, 2), mac(0, 1), 64);
    let pong = frame(mac(0, 1), mac(0, 2), 64);
    let stop = Arc::new(AtomicBool::new(false));
    let mut pingers = Vec::new();
    let mut echoes = Vec::new();
    for dir in dirs {
        let pinger = Client::connect(dir, 0, "ping")?;
        pinger.data().set_read_timeout(Some(Duration::from_millis(200)))?;
        pingers.push(pinger);
        let echo = Client::connect(dir, 0, "pong")?;
        let (stop, pong) = (stop.clone(), pong.clone());
        echoes.push(thread::spawn(move || {
            let mut buf = [0u8; 2048];
            echo.data().set_read_timeout(Some(Duration::from_millis(50))).ok();
            while !stop.load(Ordering::Relaxed) {
                if echo.data().recv(&mut buf).is_ok() {
                    let _ = echo.data().send(&pong);
                }
            }
        }));
    }
    let mut buf = [0u8; 2048];
    let mut rtts = vec![Vec::with_capacity(samples); dirs.len()];
    // The first rounds let the switches learn both stations; untimed.
    const WARM_UP: usize = 10;
    for round in 0..samples + WARM_UP {
        for turn in 0..dirs.len() {
            let i = (round + turn) % dirs.len();
            let pinger = pingers[i].data();
            let started = Instant::now();
            pinger.send(&ping)?;
            if pinger.recv(&mut buf).is_ok() && round >= WARM_UP {
                rtts[i].push(started.elapsed());
            }
            // Long enough for every switch to go back to sleep.
            thread::sleep(Duration::from_micros(20));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for echo in echoes {
        let _ = echo.join();
    }
    for r in &mut rtts {
        r.sort();
    }
    Ok(rtts)
}

/// One `-netdev stream` peer sending 64-byte frames to another, records
/// written 64 at a time and read back in large reads.
pub fn stream_pair(path: &Path, duration: Duration) -> Result<Traffic> {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let record = |f: Vec<u8>| {
        let mut r = (f.len() as u32).to_be_bytes().to_vec();
        r.extend(f);
        r
    };
    let sender = UnixStream::connect(path)?;
    let receiver = UnixStream::connect(path)?;
    (&receiver).write_all(&record(frame(mac(0, 1), mac(0, 2), 64)))?;
    (&sender).write_all(&record(frame(mac(0, 2), mac(0, 1), 64)))?;
    thread::sleep(Duration::from_millis(50));
    sender.set_nonblocking(true)?;
    receiver.set_nonblocking(true)?;
    let mut buf = vec![0u8; 1 << 16];
    while (&sender).read(&mut buf).is_ok_and(|n| n > 0) {}
    while (&receiver).read(&mut buf).is_ok_and(|n| n > 0) {}
    let one = record(frame(mac(0, 2), mac(0, 1), 64));
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * BATCH).collect();
    // Bytes of the batch not yet written, and received bytes counted in
    // whole records.
    let (mut pending, mut sent, mut received_bytes) = (0usize, 0u64, 0u64);
    let started = Instant::now();
    let mut seconds = None;
    let mut quiet_since = None;
    loop {
        let mut progressed = false;
        if seconds.is_none() {
            let from = (batch.len() - pending) % batch.len();
            if let Ok(n) = (&sender).write(&batch[from..]) {
                pending = (batch.len() - from - n) % batch.len();
                sent += ((from + n) / one.len() - from / one.len()) as u64;
                progressed = n > 0;
            }
            if started.elapsed() >= duration {
                seconds = Some(started.elapsed().as_secs_f64());
            }
        }
        if let Ok(n) = (&receiver).read(&mut buf) {
            received_bytes += n as u64;
            progressed |= n > 0;
        }
        if progressed {
            quiet_since = None;
            continue;
        }
        if seconds.is_some() && quiet_long_enough(&mut quiet_since) {
            let received = received_bytes / one.len() as u64;
            return Ok(Traffic { received, expected: sent, seconds: seconds.unwrap_or_default() });
        }
        wait_for_either(sender.as_fd(), receiver.as_fd());
    }
}

/// One `-netdev dgram` peer sending 64-byte frames to another with
/// `sendmmsg`, read back with `recvmmsg`. The sender connects its socket
/// once the switch knows it, to send in batches; the receiver, like QEMU,
/// does not (the switch answers from another address).
pub fn dgram_pair(path: &Path, duration: Duration) -> Result<Traffic> {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir()?;
    let sender = UnixDatagram::bind(dir.path().join("tx"))?;
    let receiver = UnixDatagram::bind(dir.path().join("rx"))?;
    receiver.send_to(&frame(mac(0, 1), mac(0, 2), 64), path)?;
    sender.send_to(&frame(mac(0, 2), mac(0, 1), 64), path)?;
    thread::sleep(Duration::from_millis(50));
    sender.connect(path)?;
    sender.set_nonblocking(true)?;
    receiver.set_nonblocking(true)?;
    let mut rx = RecvBatch::new(RX_SIZE);
    while rx.recv(receiver.as_fd(), BATCH).unwrap_or(0) > 0 {}
    let one = frame(mac(0, 2), mac(0, 1), 64);
    let batch: Vec<&[u8]> = vec![&one[..]; BATCH];
    let (mut sent, mut received) = (0u64, 0u64);
    let started = Instant::now();
    let mut seconds = None;
    let mut quiet_since = None;
    loop {
        let mut progressed = false;
        if seconds.is_none() {
            let (n, _) = send_batch(sender.as_fd(), batch.iter().copied());
            sent += n as u64;
            progressed = n > 0;
            if started.elapsed() >= duration {
                seconds = Some(started.elapsed().as_secs_f64());
            }
        }
        let got = rx.recv(receiver.as_fd(), BATCH).unwrap_or(0) as u64;
        received += got;
        progressed |= got > 0;
        if progressed {
            quiet_since = None;
            continue;
        }
        if seconds.is_some() && quiet_long_enough(&mut quiet_since) {
            return Ok(Traffic { received, expected: sent, seconds: seconds.unwrap_or_default() });
        }
        wait_for_either(sender.as_fd(), receiver.as_fd());
    }
}
