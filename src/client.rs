//! A minimal VDE client: the handshake of a `vde_plug`, for tools and tests
//! that need to attach to a switch (vswitch or vde_switch) without
//! libvdeplug.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::wire::{Request, RequestKind, SOCKADDR_UN_LEN, reply_for_path};

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// An attached endpoint: the control stream that keeps it alive and the
/// connected datagram socket frames travel on.
pub struct Client {
    control: UnixStream,
    data: UnixDatagram,
    /// The switch-side data socket named in the reply.
    remote: PathBuf,
}

impl Client {
    /// Attaches to the switch whose control directory is `dir`. `port` 0
    /// asks for any free port.
    pub fn connect(dir: &Path, port: u32, description: &str) -> io::Result<Client> {
        let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let own = dir.join(format!(".vsc-{:05}-{seq:05}", std::process::id()));
        let _ = fs::remove_file(&own);
        let data = UnixDatagram::bind(&own)?;
        let result = Self::handshake(dir, &own, port, description, data);
        // The switch has connected to our socket by now (or failed): the
        // name is no longer needed, as vdeplug4 does.
        let _ = fs::remove_file(&own);
        result
    }

    fn handshake(dir: &Path, own: &Path, port: u32, description: &str, data: UnixDatagram) -> io::Result<Client> {
        let mut control = UnixStream::connect(dir.join("ctl"))?;
        let addr = reply_for_path(own.as_os_str().as_bytes())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "socket path too long"))?;
        control.write_all(&Request::encode_v3(RequestKind::NewControl, port, &addr, description.as_bytes()))?;
        control.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut reply = [0u8; SOCKADDR_UN_LEN];
        control.read_exact(&mut reply)?;
        let path = &reply[2..];
        let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
        let remote = PathBuf::from(std::ffi::OsStr::from_bytes(&path[..end]));
        data.connect(&remote)?;
        Ok(Client { control, data, remote })
    }

    pub fn data(&self) -> &UnixDatagram {
        &self.data
    }

    pub fn control(&self) -> &UnixStream {
        &self.control
    }

    pub fn remote(&self) -> &Path {
        &self.remote
    }
}
