//! vswitch's frame capture and mirror ports: `capture/start`,
//! `capture/stop`, `capture/print` and `port/setmirror`.

use std::fmt::Write as _;

use nix::errno::Errno;

use super::errno;
use crate::engine::PortId;
use crate::mgmt::args::ints;
use crate::mgmt::{Context, Out};

/// The word after a capture's file name that allows replacing a regular
/// file already there.
const OVERWRITE: &str = "overwrite";

pub fn setmirror(ctx: &mut Context, args: &str, _: &mut Out) -> Result<(), Errno> {
    let [port, flag] = ints::<2>(args)?;
    ctx.switch.set_mirror(port, flag != 0).map_err(errno)
}

/// A port number for a capture: decimal, 0 (every port) up to the last
/// port the switch may have.
fn capture_port(ctx: &Context, word: &str) -> Result<PortId, Errno> {
    let port: PortId = word.parse().map_err(|_| Errno::EINVAL)?;
    if port >= ctx.switch.numports() {
        return Err(Errno::EINVAL);
    }
    Ok(port)
}

/// `capture/start PORT FILE [overwrite]`: the file name is the rest of the
/// line, so it may hold blanks; a final word `overwrite` (after a name)
/// allows replacing an existing regular file.
pub fn start(ctx: &mut Context, args: &str, out: &mut Out) -> Result<(), Errno> {
    let args = args.trim_end();
    let (word, rest) = args.split_once([' ', '\t']).ok_or(Errno::EINVAL)?;
    let port = capture_port(ctx, word)?;
    let path = rest.trim_start_matches([' ', '\t']);
    let (path, overwrite) = match path.strip_suffix(OVERWRITE).map(|p| p.trim_end_matches([' ', '\t'])) {
        Some(p) if !p.is_empty() && p.len() < path.len() - OVERWRITE.len() => (p, true),
        _ => (path, false),
    };
    if path.is_empty() {
        return Err(Errno::EINVAL);
    }
    let desk = ctx.capture.as_mut().ok_or(Errno::ENOSYS)?;
    desk.start(port, path, overwrite).map_err(|(e, reason)| {
        let _ = writeln!(out, "{reason}");
        e
    })
}

pub fn stop(ctx: &mut Context, args: &str, _: &mut Out) -> Result<(), Errno> {
    let port = capture_port(ctx, args.trim())?;
    let desk = ctx.capture.as_mut().ok_or(Errno::ENOSYS)?;
    if desk.stop(port) { Ok(()) } else { Err(Errno::ENOENT) }
}

pub fn print(ctx: &mut Context, _: &str, out: &mut Out) -> Result<(), Errno> {
    if let Some(desk) = &ctx.capture {
        desk.print(out);
    }
    for (id, port) in ctx.switch.ports() {
        if port.is_mirror() {
            let _ = writeln!(out, "Port {id:04} mirror");
        }
    }
    Ok(())
}
