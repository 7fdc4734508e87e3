//! vswitch's VXLAN commands (`vxlan/add`, `vxlan/del`, `vxlan/print`):
//! the sockets are the I/O layer's, reached through [`Uplinks`].

use std::fmt::Write as _;

use nix::errno::Errno;

use super::super::{Context, Out, Uplinks};

fn uplinks<'c>(ctx: &'c mut Context) -> Result<(&'c mut dyn Uplinks, &'c mut crate::engine::Switch), Errno> {
    match ctx.uplinks.as_deref_mut() {
        Some(u) => Ok((u, &mut *ctx.switch)),
        None => Err(Errno::ENOSYS),
    }
}

/// Prints the port it got, or the one-line reason it failed.
pub fn add(ctx: &mut Context, args: &str, out: &mut Out) -> Result<(), Errno> {
    let (u, switch) = uplinks(ctx)?;
    match u.add(switch, args.trim()) {
        Ok(port) => {
            let _ = writeln!(out, "Port {port:04}");
            Ok(())
        }
        Err(e) => {
            let _ = writeln!(out, "{e}");
            Err(Errno::EINVAL)
        }
    }
}

pub fn del(ctx: &mut Context, args: &str, out: &mut Out) -> Result<(), Errno> {
    let port = args.trim().parse().map_err(|_| Errno::EINVAL)?;
    let (u, switch) = uplinks(ctx)?;
    u.remove(switch, port).map_err(|e| {
        let _ = writeln!(out, "{e}");
        Errno::ENXIO
    })
}

pub fn print(ctx: &mut Context, _: &str, out: &mut Out) -> Result<(), Errno> {
    let (u, switch) = uplinks(ctx)?;
    u.print(switch, out);
    Ok(())
}
