//! Guest memory that a vhost-user frontend can take away. The switch maps
//! files the frontend owns (a memfd, a hugetlbfs file); if the frontend
//! truncates one, the switch's next touch of a page past the new end
//! raises SIGBUS, which would kill the switch and every port with it.
//!
//! Mappings registered here are guarded: a SIGBUS inside one is answered
//! by putting a private zero-filled page where the vanished one was, so
//! the copy that faulted completes with zeros, and by marking the mapping
//! faulted; the port that owns it sees the mark after the copy and closes.
//! A SIGBUS anywhere else gets the default action, as without the guard.
//!
//! The handler only reads and writes atomics and calls `mmap`, a plain
//! system call; the table is fixed-size so that it never allocates.
#![allow(unsafe_code)]

use std::io;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Mappings guarded at once: a frontend maps at most eight regions.
const SLOTS: usize = 1024;

static STARTS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static ENDS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
/// What to replace at a time: the mapping's page size (a hugetlbfs
/// mapping can only be replaced a whole huge page at a time).
static GRANULES: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static FAULTED: [AtomicBool; SLOTS] = [const { AtomicBool::new(false) }; SLOTS];

static INSTALL: Once = Once::new();

/// A guarded mapping; dropping it (before unmapping the memory) ends the
/// guard.
#[derive(Debug)]
pub struct Guard {
    slot: usize,
}

impl Guard {
    /// Guards `len` bytes mapped at `start`, whose pages are `granule`
    /// bytes. Fails when every slot is taken.
    pub fn new(start: *const u8, len: usize, granule: usize) -> io::Result<Guard> {
        install();
        let start = start as usize;
        for slot in 0..SLOTS {
            // A slot is taken by setting its end; its start, set last,
            // makes it visible to the handler.
            if ENDS[slot].compare_exchange(0, start + len, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                GRANULES[slot].store(granule.max(page_size()), Ordering::Release);
                FAULTED[slot].store(false, Ordering::Release);
                STARTS[slot].store(start, Ordering::Release);
                return Ok(Guard { slot });
            }
        }
        Err(io::Error::other("too many guest memory regions"))
    }

    /// Whether a page of the mapping vanished under the switch.
    pub fn faulted(&self) -> bool {
        FAULTED[self.slot].load(Ordering::Acquire)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        STARTS[self.slot].store(0, Ordering::Release);
        ENDS[self.slot].store(0, Ordering::Release);
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf reads a configuration value.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

fn install() {
    INSTALL.call_once(|| {
        use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
        let action = SigAction::new(SigHandler::SigAction(on_sigbus), SaFlags::SA_SIGINFO, SigSet::empty());
        // SAFETY: the handler is async-signal-safe (atomics and mmap only).
        let _ = unsafe { sigaction(Signal::SIGBUS, &action) };
    });
}

extern "C" fn on_sigbus(_signal: libc::c_int, info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for a SA_SIGINFO handler.
    let address = unsafe { (*info).si_addr() } as usize;
    for slot in 0..SLOTS {
        let start = STARTS[slot].load(Ordering::Acquire);
        if start == 0 || address < start || address >= ENDS[slot].load(Ordering::Acquire) {
            continue;
        }
        let granule = GRANULES[slot].load(Ordering::Acquire);
        let page = address & !(granule - 1);
        // SAFETY: the range is inside a mapping the switch made and still
        // holds (the guard is dropped before it is unmapped).
        let replaced = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                granule,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if replaced != libc::MAP_FAILED {
            FAULTED[slot].store(true, Ordering::Release);
            return;
        }
        break;
    }
    // Not guest memory: what SIGBUS would have done without the guard
    // (returning re-runs the access, which faults again, unhandled).
    // SAFETY: restoring the default disposition installs no code.
    unsafe {
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    /// A truncated memfd mapping reads as zeros past the new end and is
    /// marked faulted, instead of killing the process.
    #[test]
    fn a_truncated_mapping_reads_zeros_and_is_marked() {
        let file = std::fs::File::from(
            nix::sys::memfd::memfd_create("sigbus-test", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap(),
        );
        let len = 4 * page_size();
        file.set_len(len as u64).unwrap();
        // SAFETY: a fresh shared mapping of the whole file.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let bytes = base as *mut u8;
        // SAFETY: inside the mapping.
        unsafe { bytes.add(3 * page_size()).write_volatile(7) };
        let guard = Guard::new(bytes, len, page_size()).unwrap();
        assert!(!guard.faulted());
        file.set_len(page_size() as u64).unwrap();
        // SAFETY: inside the mapping; the page is gone from the file.
        let read = unsafe { bytes.add(3 * page_size()).read_volatile() };
        assert_eq!(read, 0);
        assert!(guard.faulted());
        drop(guard);
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(base, len) };
    }
}
