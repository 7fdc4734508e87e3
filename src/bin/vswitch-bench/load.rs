//! Load generators: real VDE clients moving frames with batched system
//! calls, counting every frame sent and received.

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use vswitch::client::Client;
use vswitch::net::sys::{BATCH, recv_batch, send_batch};

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

fn drain(clients: &[&Client]) -> u64 {
    let mut bufs = vec![[0u8; 2048]; BATCH];
    let mut lens = [0usize; BATCH];
    let mut total = 0;
    for c in clients {
        while let Ok(n @ 1..) = recv_batch(c.data().as_fd(), &mut bufs, &mut lens) {
            total += n as u64;
        }
    }
    total
}

/// Counts frames arriving at `receivers` until `stop` is set and they are
/// drained.
fn count_until(receivers: Vec<Client>, stop: Arc<AtomicBool>) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        let refs: Vec<&Client> = receivers.iter().collect();
        let mut received = 0;
        loop {
            let mut fds: Vec<PollFd> = refs.iter().map(|c| PollFd::new(c.data().as_fd(), PollFlags::POLLIN)).collect();
            let _ = poll(&mut fds, PollTimeout::from(20u16));
            let got = drain(&refs);
            received += got;
            if got == 0 && stop.load(Ordering::Relaxed) {
                return received;
            }
        }
    })
}

/// A batch of copies of one frame.
fn repeated(frame: Vec<u8>) -> Vec<Vec<u8>> {
    vec![frame; BATCH]
}

/// Sends the batch `batches[i]` from `senders[i]` over and over, as fast as
/// the switch takes it.
fn blast(senders: &[Client], batches: &[Vec<Vec<u8>>], duration: Duration) -> (u64, f64) {
    let batches: Vec<Vec<&[u8]>> = batches.iter().map(|b| b.iter().map(Vec::as_slice).collect()).collect();
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < duration {
        let mut progressed = false;
        for (s, batch) in senders.iter().zip(&batches) {
            let (n, _) = send_batch(s.data().as_fd(), batch);
            sent += n as u64;
            progressed |= n > 0;
        }
        if !progressed {
            let mut fds: Vec<PollFd> =
                senders.iter().map(|c| PollFd::new(c.data().as_fd(), PollFlags::POLLOUT)).collect();
            let _ = poll(&mut fds, PollTimeout::from(10u16));
        }
    }
    (sent, started.elapsed().as_secs_f64())
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
    // Each station speaks once so the switch learns where both live.
    for (i, (s, r)) in senders.iter().zip(&receivers).enumerate() {
        r.data().send(&frame(mac(i as u16, 1), mac(i as u16, 2), 60))?;
        s.data().send(&frame(mac(i as u16, 2), mac(i as u16, 1), 60))?;
    }
    thread::sleep(Duration::from_millis(50));
    drain(&senders.iter().chain(&receivers).collect::<Vec<_>>());
    let frames: Vec<Vec<Vec<u8>>> = (0..n).map(|i| repeated(frame(mac(i as u16, 2), mac(i as u16, 1), len))).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let counter = count_until(receivers, stop.clone());
    let (sent, seconds) = blast(&senders, &frames, duration);
    thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let received = counter.join().map_err(|_| anyhow!("receiver thread panicked"))?;
    Ok(Traffic { received, expected: sent, seconds })
}

/// One sender broadcasting 64-byte frames to `n` receivers.
pub fn broadcast(dir: &Path, n: usize, duration: Duration) -> Result<Traffic> {
    let sender = Client::connect(dir, 0, "tx")?;
    let receivers = attach(dir, n, "rx")?;
    let frames = vec![repeated(frame([0xff; 6], mac(0, 1), 64))];
    let stop = Arc::new(AtomicBool::new(false));
    let counter = count_until(receivers, stop.clone());
    let (sent, seconds) = blast(std::slice::from_ref(&sender), &frames, duration);
    thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let received = counter.join().map_err(|_| anyhow!("receiver thread panicked"))?;
    Ok(Traffic { received, expected: sent * n as u64, seconds })
}

/// One pair streaming 64-byte unicast frames with one broadcast in every
/// batch, and, when `stalled`, a third client attached that never reads:
/// the broadcasts fill its socket. Delivered frames/s at the receiver shows
/// what a dead listener costs everyone else.
pub fn pair_beside_stalled_client(dir: &Path, stalled: bool, duration: Duration) -> Result<Traffic> {
    let sender = Client::connect(dir, 0, "tx")?;
    let receiver = Client::connect(dir, 0, "rx")?;
    let _stalled = stalled.then(|| Client::connect(dir, 0, "never-reads")).transpose()?;
    receiver.data().send(&frame(mac(0, 1), mac(0, 2), 60))?;
    sender.data().send(&frame(mac(0, 2), mac(0, 1), 60))?;
    thread::sleep(Duration::from_millis(50));
    drain(&[&sender, &receiver]);
    let mut batch = repeated(frame(mac(0, 2), mac(0, 1), 64));
    batch[0] = frame([0xff; 6], mac(0, 1), 64);
    let stop = Arc::new(AtomicBool::new(false));
    let counter = count_until(vec![receiver], stop.clone());
    let (sent, seconds) = blast(std::slice::from_ref(&sender), &[batch], duration);
    thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let received = counter.join().map_err(|_| anyhow!("receiver thread panicked"))?;
    Ok(Traffic { received, expected: sent, seconds })
}

/// Round-trip times of `samples` ping-pongs between two clients, sorted.
pub fn round_trips(dir: &Path, samples: usize) -> Result<Vec<Duration>> {
    let a = Client::connect(dir, 0, "ping")?;
    let b = Client::connect(dir, 0, "pong")?;
    let ping = frame(mac(0, 2), mac(0, 1), 64);
    let pong = frame(mac(0, 1), mac(0, 2), 64);
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            b.data().set_read_timeout(Some(Duration::from_millis(50))).ok();
            while !stop.load(Ordering::Relaxed) {
                if b.data().recv(&mut buf).is_ok() {
                    let _ = b.data().send(&pong);
                }
            }
        })
    };
    a.data().set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = [0u8; 2048];
    let mut rtts = Vec::with_capacity(samples);
    // Warm up learning in both directions before timing.
    for _ in 0..samples + 10 {
        let started = Instant::now();
        a.data().send(&ping)?;
        if a.data().recv(&mut buf).is_ok() {
            rtts.push(started.elapsed());
        }
        thread::sleep(Duration::from_micros(500));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = echo.join();
    let keep = rtts.len().saturating_sub(10);
    let mut rtts = rtts.split_off(rtts.len() - keep);
    rtts.sort();
    Ok(rtts)
}
