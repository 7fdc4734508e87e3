//! Ports the switch opens on its own host rather than at a client's
//! request: tap interfaces (`-t`) and VXLAN ports (`--vxlan`, and
//! `vxlan/add` on the console). Each is opened by its transport, attached
//! to the engine on the next free port, and handed to the data plane.

use std::io;
use std::os::fd::AsRawFd;

use nix::sys::epoll::Epoll;
use nix::unistd::{Gid, Uid};

use super::data::DataPlane;
use super::transport::tap::{self, Tap};
use super::transport::vxlan::{self, Spec, Vxlan};
use super::transport::{DescId, Registry, TAP, Transport, TransportId, VXLAN};
use super::{Server, log};
use crate::engine::{Attach, AttachError, Credentials, EndpointKey, PortRequest, Switch};
use crate::mgmt::{Out, Uplinks};

impl Server {
    /// Attaches each `-t` interface on the next automatically allocated
    /// port, as vde_switch does between the management socket and the rc
    /// file. One that cannot be opened or has no port is logged and skipped.
    pub(in crate::net) fn attach_taps(&mut self, names: &[String]) {
        for name in names {
            if let Err(reason) = self.attach_tap(name) {
                log::log(&reason);
                log::log(&format!("ERROR OPENING tap interface: {name}"));
            }
        }
    }

    fn attach_tap(&mut self, name: &str) -> Result<(), String> {
        let fd = tap::open(name)?;
        // vde_switch shows the tap's descriptor as the endpoint ID.
        let id = fd.as_raw_fd() as u32;
        let description = name.as_bytes().to_vec();
        let epoll = &self.epoll;
        let add = |tap: &mut Tap, registry: &mut Registry, key| tap.add(registry, epoll, key, fd);
        let attached = attach_host_port(&mut self.switch, &mut self.data, (TAP, tap::MODULE), id, description, add);
        match attached {
            Ok(_) => Ok(()),
            Err(Failed::Attach(e)) => Err(format!("Cannot attach tap interface {name}: {e}")),
            Err(Failed::Watch(e)) => Err(format!("epoll add tap interface {name}: {}", log::error_text(&e))),
        }
    }
}

/// Which step of attaching a host port failed.
enum Failed {
    /// No switch port for it.
    Attach(AttachError),
    /// The data plane could not watch it (the switch port is free again).
    Watch(io::Error),
}

/// Attaches a port the switch opened on its own host on the next free
/// switch port, and hands it to its transport (`add`). Nobody owns such a
/// port (`Current User: NONE`); the kernel identity sharing checks compare
/// with is the switch's own.
fn attach_host_port<T: Transport + 'static>(
    switch: &mut Switch,
    data: &mut DataPlane,
    (transport, module): (TransportId, &'static str),
    id: u32,
    description: Vec<u8>,
    add: impl FnOnce(&mut T, &mut Registry, EndpointKey) -> io::Result<(u32, DescId)>,
) -> Result<u32, Failed> {
    let (key, port) = switch
        .attach(Attach {
            request: PortRequest::Any,
            id,
            module,
            description,
            user: None,
            credentials: Credentials { uid: Uid::effective().as_raw(), gids: vec![Gid::effective().as_raw()] },
        })
        .map_err(Failed::Attach)?;
    let added = data.with_transport(transport, |t: &mut T, registry| add(t, registry, key));
    match added.unwrap_or_else(|| Err(io::Error::other(format!("no {module} transport")))) {
        Ok((local, desc)) => {
            data.attach(key, transport, local, desc, desc);
            Ok(port)
        }
        Err(e) => {
            switch.detach(key);
            Err(Failed::Watch(e))
        }
    }
}

/// The VXLAN ports as the console sees them.
pub struct VxlanPorts<'a> {
    pub data: &'a mut DataPlane,
    pub epoll: &'a Epoll,
}

impl Uplinks for VxlanPorts<'_> {
    fn add(&mut self, switch: &mut Switch, spec: &str) -> Result<u32, String> {
        let spec: Spec = spec.parse()?;
        attach(switch, self.data, self.epoll, &spec)
    }

    fn remove(&mut self, switch: &mut Switch, port: u32) -> Result<(), String> {
        let key = self
            .data
            .with_transport(VXLAN, |v: &mut Vxlan, _| {
                v.endpoints().map(|(_, k)| k).find(|&k| switch.endpoint(k).is_some_and(|e| e.port == port))
            })
            .flatten()
            .ok_or_else(|| format!("vxlan: port {port} is not a VXLAN port"))?;
        switch.detach(key);
        self.data.remove(self.epoll, key);
        Ok(())
    }

    fn print(&mut self, switch: &Switch, out: &mut Out) {
        self.data.with_transport(VXLAN, |v: &mut Vxlan, _| {
            for (local, key) in v.endpoints() {
                if let Some(e) = switch.endpoint(key) {
                    v.print(local, e.port, out);
                }
            }
        });
    }
}

/// Opens a VXLAN port and attaches it on the next free switch port.
fn attach(switch: &mut Switch, data: &mut DataPlane, epoll: &Epoll, spec: &Spec) -> Result<u32, String> {
    let opened = data.with_transport(VXLAN, |v: &mut Vxlan, _| v.open(spec)).ok_or("vxlan: no vxlan transport")??;
    // Like a tap's, the endpoint ID is the descriptor.
    let id = opened.id;
    let description = spec.to_string().into_bytes();
    let add = |v: &mut Vxlan, registry: &mut Registry, key| v.add(registry, epoll, key, opened);
    let attached = attach_host_port(switch, data, (VXLAN, vxlan::MODULE), id, description, add);
    attached.map_err(|failed| match failed {
        Failed::Attach(e) => format!("vxlan: cannot attach {spec}: {e}"),
        Failed::Watch(e) => format!("vxlan: epoll add {spec}: {}", log::error_text(&e)),
    })
}

impl Server {
    /// Attaches each `--vxlan` port on the next automatically allocated
    /// port, after the tap interfaces. One that cannot be opened or has no
    /// port is logged and skipped.
    pub(in crate::net) fn attach_vxlans(&mut self, specs: &[Spec]) {
        for spec in specs {
            if let Err(reason) = attach(&mut self.switch, &mut self.data, &self.epoll, spec) {
                log::log(&reason);
            }
        }
    }
}
