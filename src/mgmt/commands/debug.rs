//! Per-session debug subscriptions. A prefix selects every category whose
//! path starts with it, taken literally (trailing blanks included), as in
//! vde_switch.

use std::fmt::Write as _;

use nix::errno::Errno;

use crate::mgmt::events::HIDDEN_CATEGORIES;
use crate::mgmt::{CATEGORIES, Context, Out};

/// Bit mask of the listed categories whose path starts with `prefix`.
fn matching(prefix: &str) -> u32 {
    CATEGORIES.iter().filter(|c| c.path.starts_with(prefix)).fold(0, |mask, c| mask | 1 << c.category as u32)
}

pub fn list(ctx: &mut Context, prefix: &str, out: &mut Out) -> Result<(), Errno> {
    out.push_str("CATEGORY               TAG STATUS HELP\n");
    out.push_str("------------           --- ------ ----\n");
    let mask = matching(prefix);
    for c in CATEGORIES.iter().filter(|c| mask & 1 << c.category as u32 != 0) {
        let status = if ctx.session.wants(c.category) { "ON" } else { "OFF" };
        let _ = writeln!(out, "{:<22} {:03o} {:<6} {}", c.path, c.tag, status, c.help);
    }
    if mask == 0 { Err(Errno::ENOENT) } else { Ok(()) }
}

/// No category matches → `EINVAL`; all matching ones already on → `EEXIST`.
pub fn add(ctx: &mut Context, prefix: &str, _: &mut Out) -> Result<(), Errno> {
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

/// No category matches → `EINVAL`; none of the matching ones on →
/// `ENOENT`. Unlike `add`, this also matches the hidden categories.
pub fn del(ctx: &mut Context, prefix: &str, _: &mut Out) -> Result<(), Errno> {
    let mask = matching(prefix);
    if mask == 0 && !HIDDEN_CATEGORIES.iter().any(|path| path.starts_with(prefix)) {
        return Err(Errno::EINVAL);
    }
    if ctx.session.debug & mask == 0 {
        return Err(Errno::ENOENT);
    }
    ctx.session.debug &= !mask;
    Ok(())
}
