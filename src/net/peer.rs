//! Who is at the other end of a Unix stream (a control connection, a
//! console session), and acting as them: what the switch does on a
//! client's behalf in the file system, it does with the client's identity.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use nix::unistd::{Gid, Uid};

use super::sys;
use crate::engine::Credentials;

/// The process at the other end of a Unix stream (a control connection or
/// a console session), as the kernel knows it.
#[derive(Debug, Clone)]
pub struct Peer {
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
}

impl Peer {
    pub fn of(stream: &UnixStream) -> Peer {
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
        let Ok(cred) = getsockopt(stream, PeerCredentials) else {
            // Unknown peers get an identity that owns nothing.
            return Peer { uid: Uid::from_raw(u32::MAX - 1), gid: Gid::from_raw(u32::MAX - 1), groups: Vec::new() };
        };
        let gid = Gid::from_raw(cred.gid());
        let groups = sys::peer_groups(stream.as_fd()).map(|g| g.into_iter().map(Gid::from_raw).collect());
        Peer { uid: Uid::from_raw(cred.uid()), gid, groups: groups.unwrap_or_default() }
    }

    pub fn credentials(&self) -> Credentials {
        let mut gids: Vec<u32> = self.groups.iter().map(|g| g.as_raw()).collect();
        gids.push(self.gid.as_raw());
        Credentials { uid: self.uid.as_raw(), gids }
    }

    /// Gives the calling thread the peer's file-system identity (user,
    /// group, supplementary groups) for good: only job threads call it,
    /// and the identity is per thread, so the loop and other jobs keep
    /// theirs. Only a root switch has another identity to lend; otherwise
    /// the kernel already checks with the switch's own, which is never more
    /// than the peer could reach through the switch anyway.
    pub fn assume(&self) -> io::Result<()> {
        use nix::unistd::{setfsgid, setfsuid};
        if !Uid::effective().is_root() || self.uid.is_root() {
            return Ok(());
        }
        sys::set_thread_groups(&self.groups.iter().map(|g| g.as_raw()).collect::<Vec<_>>())?;
        setfsgid(self.gid);
        setfsuid(self.uid);
        // Both calls answer with the previous id, never an error: ask again
        // to learn whether the change took.
        if setfsuid(self.uid) != self.uid || setfsgid(self.gid) != self.gid {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        Ok(())
    }
}
