//! File-system work that may block, done off the event loop: reading the
//! scripts a `load` needs and reaching a client's socket path. A path on a
//! hung NFS, FUSE or autofs mount (or a FIFO without a writer) can stall
//! `open` or `connect` for ever; the loop must go on switching meanwhile.
//!
//! Each job runs in a thread of its own, which takes the file-system
//! identity of whoever asked for the work (the identity is per thread, so
//! jobs of different users never see each other's), sends its outcome back
//! through a channel and wakes the loop through an eventfd. At most
//! [`MAX_JOBS`] threads exist at a time; beyond that new work waits (a
//! client's look-up, within its handshake time limit) or is refused (a
//! `load`).
//! A job not done within its time limit is abandoned: whoever waited for it
//! gets an error, and the thread's eventual outcome is thrown away (its
//! slot stays taken until it returns, so a hung mount costs at most
//! [`MAX_JOBS`] stuck threads, and the data sockets of the look-ups among
//! them). Jobs make no descriptors but the files a `load` opens: the
//! loop makes a look-up's socket and hands it over (see
//! [`super::ctl::data_socket`]).

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};

/// Most jobs running (or stuck) at once.
pub const MAX_JOBS: usize = 16;
/// How long a `load` may take to read its scripts.
pub const LOAD_TIME_LIMIT: Duration = Duration::from_secs(5);
/// How long reaching a client's socket path may take.
pub const LOOKUP_TIME_LIMIT: Duration = Duration::from_secs(5);

/// Who waits for a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiter {
    /// A control connection (slot, time it was accepted).
    Conn(usize, u64),
    /// A console session (slot, its serial number).
    Session(usize, u64),
    Stdin,
}

/// A finished (or abandoned) job, for its waiter.
pub struct Done<O> {
    pub waiter: Waiter,
    /// `None`: the job was abandoned after its time limit.
    pub outcome: Option<O>,
}

struct Running {
    waiter: Waiter,
    deadline: Instant,
}

/// The jobs, each bringing back an `O`.
pub struct Jobs<O> {
    pub wake: Arc<EventFd>,
    tx: Sender<(u64, O)>,
    rx: Receiver<(u64, O)>,
    /// Threads started and not yet heard back from, abandoned ones included.
    threads: usize,
    /// Jobs someone still waits for.
    waiting: HashMap<u64, Running>,
    next_id: u64,
}

impl<O: Send + 'static> Jobs<O> {
    pub fn new() -> io::Result<Jobs<O>> {
        let wake = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC).map_err(io::Error::from)?;
        let (tx, rx) = channel();
        Ok(Jobs { wake: Arc::new(wake), tx, rx, threads: 0, waiting: HashMap::new(), next_id: 0 })
    }

    /// Whether [`MAX_JOBS`] threads are busy: a job started now would not run.
    pub fn is_full(&self) -> bool {
        self.threads >= MAX_JOBS
    }

    /// Runs `work` in a thread of its own (where it may take another
    /// file-system identity). Returns false, starting nothing, when
    /// [`MAX_JOBS`] threads are busy or no thread can be made.
    pub fn start(&mut self, waiter: Waiter, limit: Duration, work: impl FnOnce() -> O + Send + 'static) -> bool {
        if self.is_full() {
            return false;
        }
        let id = self.next_id;
        let tx = self.tx.clone();
        let wake = Arc::clone(&self.wake);
        let spawned = std::thread::Builder::new().name("fs-job".into()).spawn(move || {
            let _ = tx.send((id, work()));
            let _ = wake.write(1);
        });
        if spawned.is_err() {
            return false;
        }
        self.next_id += 1;
        self.threads += 1;
        self.waiting.insert(id, Running { waiter, deadline: Instant::now() + limit });
        true
    }

    /// Jobs that finished since the last call, and those whose time ran
    /// out (with no outcome).
    pub fn collect(&mut self, now: Instant) -> Vec<Done<O>> {
        let _ = self.wake.read();
        let mut done = Vec::new();
        while let Ok((id, outcome)) = self.rx.try_recv() {
            self.threads -= 1;
            if let Some(r) = self.waiting.remove(&id) {
                done.push(Done { waiter: r.waiter, outcome: Some(outcome) });
            }
        }
        let late: Vec<u64> = self.waiting.iter().filter(|(_, r)| r.deadline <= now).map(|(&id, _)| id).collect();
        for id in late {
            if let Some(r) = self.waiting.remove(&id) {
                done.push(Done { waiter: r.waiter, outcome: None });
            }
        }
        done
    }

    /// Whoever `waiter` was is gone: its job's outcome is not wanted.
    pub fn forget(&mut self, waiter: Waiter) {
        self.waiting.retain(|_, r| r.waiter != waiter);
    }
}
