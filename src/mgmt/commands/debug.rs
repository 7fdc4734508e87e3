use std::fmt::Write as _;

use nix::errno::Errno;

use crate::mgmt::{CATEGORIES, Context, SessionKind};

/// Bit mask of the categories whose path starts with `prefix`.
fn matching(prefix: &str) -> u32 {
    CATEGORIES.iter().filter(|c| c.path.starts_with(prefix.trim())).fold(0, |mask, c| mask | 1 << c.category as u32)
}

pub fn list(ctx: &mut Context, prefix: &str, out: &mut String) -> Result<(), Errno> {
    out.push_str("CATEGORY               TAG STATUS HELP\n");
    out.push_str("------------           --- ------ ----\n");
    let mask = matching(prefix);
    for c in CATEGORIES.iter().filter(|c| mask & 1 << c.category as u32 != 0) {
        let status = if ctx.session.wants(c.category) { "ON" } else { "OFF" };
        let _ = writeln!(out, "{:<22} {:03o} {:<6} {}", c.path, c.tag, status, c.help);
    }
    if mask == 0 { Err(Errno::ENOENT) } else { Ok(()) }
}

pub fn add(ctx: &mut Context, prefix: &str, _: &mut String) -> Result<(), Errno> {
    if ctx.session.kind == SessionKind::RcFile {
        return Err(Errno::EBADF);
    }
    let mask = matching(prefix);
    if mask == 0 {
        return Err(Errno::EINVAL);
    }
    if ctx.session.debug & mask == mask {
        return Err(Errno::EEXIST);
    }
    ctx.session.debug |= mask;
    Ok(())
}

pub fn del(ctx: &mut Context, prefix: &str, _: &mut String) -> Result<(), Errno> {
    if ctx.session.kind == SessionKind::RcFile {
        return Err(Errno::EBADF);
    }
    let mask = matching(prefix);
    if mask == 0 {
        return Err(Errno::EINVAL);
    }
    if ctx.session.debug & mask == 0 {
        return Err(Errno::ENOENT);
    }
    ctx.session.debug &= !mask;
    Ok(())
}
