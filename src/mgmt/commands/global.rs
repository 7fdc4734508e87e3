use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _};
use std::os::unix::fs::OpenOptionsExt;

use nix::errno::Errno;

use super::COMMANDS;
use crate::mgmt::{BANNER, Context, Out, may_nest_script, run_script};

/// Scripts larger than this are refused rather than read into memory.
const MAX_SCRIPT_BYTES: u64 = 1 << 20;

pub fn help(_: &mut Context, prefix: &str, out: &mut Out) -> Result<(), Errno> {
    let row = |out: &mut Out, a: &str, b: &str, c: &str| {
        let _ = writeln!(out, "{a:<18} {b:<15} {c}");
    };
    row(out, "COMMAND PATH", "SYNTAX", "HELP");
    row(out, "------------", "--------------", "------------");
    for c in COMMANDS.iter().filter(|c| c.path.starts_with(prefix)) {
        row(out, c.path, c.syntax, c.help);
    }
    Ok(())
}

pub fn showinfo(ctx: &mut Context, _: &str, out: &mut Out) -> Result<(), Errno> {
    let i = ctx.info;
    let _ = writeln!(out, "{BANNER}\npid {} MAC {} uptime {}", i.pid, i.mac, ctx.now);
    if let Some((path, mode)) = &i.mgmt {
        let _ = writeln!(out, "mgmt {path} perm 0{mode:03o}");
    }
    Ok(())
}

pub fn ds_showinfo(ctx: &mut Context, _: &str, out: &mut Out) -> Result<(), Errno> {
    let _ = writeln!(out, "ctl dir {}\nstd mode 0{:03o}", ctx.info.ctl_dir, ctx.info.ctl_mode);
    Ok(())
}

fn errno_of(e: &io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Reads a script, refusing what is not a regular file of at most
/// [`MAX_SCRIPT_BYTES`]: vde_switch would block forever on a FIFO or read
/// `/dev/zero` without end. Opened non-blocking, so opening a FIFO without
/// a writer does not block either.
pub fn read_script(path: &str) -> Result<String, Errno> {
    let file: File =
        OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(|e| errno_of(&e))?;
    let meta = file.metadata().map_err(|e| errno_of(&e))?;
    if meta.is_dir() {
        return Err(Errno::EISDIR);
    }
    if !meta.is_file() {
        return Err(Errno::EINVAL);
    }
    if meta.len() > MAX_SCRIPT_BYTES {
        return Err(Errno::EFBIG);
    }
    // Files in /proc report size 0 whatever they hold: bound the read too.
    let mut bytes = Vec::new();
    file.take(MAX_SCRIPT_BYTES + 1).read_to_end(&mut bytes).map_err(|e| errno_of(&e))?;
    if bytes.len() as u64 > MAX_SCRIPT_BYTES {
        return Err(Errno::EFBIG);
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

pub fn load(ctx: &mut Context, path: &str, out: &mut Out) -> Result<(), Errno> {
    may_nest_script(ctx)?;
    let text = match &ctx.scripts {
        Some(scripts) => scripts.get(path).cloned().unwrap_or(Err(Errno::ENOBUFS))?,
        None => read_script(path)?,
    };
    run_script(ctx, path, &text, out)
}

pub fn plugin_list(_: &mut Context, _: &str, out: &mut Out) -> Result<(), Errno> {
    out.push_str("NAME                   HELP\n------------           ----\n");
    Err(Errno::ENOENT)
}

/// vswitch loads no shared-object plugins; the commands answer as the
/// reference does when the plugin cannot be found.
pub fn plugin_unavailable(_: &mut Context, _: &str, _: &mut Out) -> Result<(), Errno> {
    Err(Errno::ENOENT)
}

/// Like [`plugin_unavailable`], except for an empty name: vde_switch's
/// `dlopen("")` opens the switch itself, which is no plugin (`EINVAL`).
pub fn plugin_add(ctx: &mut Context, name: &str, out: &mut Out) -> Result<(), Errno> {
    if name.is_empty() { Err(Errno::EINVAL) } else { plugin_unavailable(ctx, name, out) }
}
