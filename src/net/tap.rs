//! Tap interfaces (`-t NAME`): kernel network interfaces whose frames the
//! switch reads and writes through `/dev/net/tun`, attached as endpoints at
//! start-up. The interface exists while its descriptor is open.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use nix::unistd::{Gid, Uid};

use super::data::LinkKind;
use super::{Server, log, sys};
use crate::engine::{Attach, Credentials, Module, PortRequest};

/// Creates the tap interface `name` (or takes over an existing, unused
/// one) and returns its non-blocking, close-on-exec descriptor.
fn open(name: &str) -> Result<OwnedFd, String> {
    // std opens with O_CLOEXEC already.
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .map_err(|e| format!("Failed to open /dev/net/tun {}", log::error_text(&e)))?;
    sys::attach_tap(tun.as_fd(), name)
        .map_err(|e| format!("Cannot create tap interface {name}: {}", log::error_text(&e)))?;
    Ok(tun.into())
}

impl Server {
    /// Attaches each `-t` interface on the next automatically allocated
    /// port, as vde_switch does between the management socket and the rc
    /// file. One that cannot be opened or has no port is logged and skipped.
    pub(super) fn attach_taps(&mut self, names: &[String]) {
        for name in names {
            if let Err(reason) = self.attach_tap(name) {
                log::log(&reason);
                log::log(&format!("ERROR OPENING tap interface: {name}"));
            }
        }
    }

    fn attach_tap(&mut self, name: &str) -> Result<(), String> {
        let fd = open(name)?;
        let (key, _) = self
            .switch
            .attach(Attach {
                request: PortRequest::Any,
                // vde_switch shows the tap's descriptor as the endpoint ID.
                id: fd.as_raw_fd() as u32,
                module: Module::TunTap,
                description: name.as_bytes().to_vec(),
                // Nobody owns the port (`Current User: NONE`); the kernel
                // identity sharing checks compare with is the switch's own.
                user: None,
                credentials: Credentials { uid: Uid::effective().as_raw(), gids: vec![Gid::effective().as_raw()] },
            })
            .map_err(|e| format!("Cannot attach tap interface {name}: {e}"))?;
        self.data.add(&self.epoll, key, fd, LinkKind::Tap).map_err(|e| {
            self.switch.detach(key);
            format!("epoll add tap interface {name}: {}", log::error_text(&e))
        })
    }
}
