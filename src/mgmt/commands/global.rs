use std::fmt::Write as _;
use std::io::Read as _;

use nix::errno::Errno;

use super::COMMANDS;
use crate::mgmt::{BANNER, Context, Effect, SessionKind, run_script};

/// Scripts larger than this are refused rather than read into memory.
const MAX_SCRIPT_BYTES: u64 = 1 << 20;

pub fn help(_: &mut Context, prefix: &str, out: &mut String) -> Result<(), Errno> {
    let row = |out: &mut String, a: &str, b: &str, c: &str| {
        let _ = writeln!(out, "{a:<18} {b:<15} {c}");
    };
    row(out, "COMMAND PATH", "SYNTAX", "HELP");
    row(out, "------------", "--------------", "------------");
    for c in COMMANDS.iter().filter(|c| c.path.starts_with(prefix)) {
        row(out, c.path, c.syntax, c.help);
    }
    Ok(())
}

pub fn logout(ctx: &mut Context, _: &str, _: &mut String) -> Result<(), Errno> {
    ctx.effects.push(Effect::Logout);
    Ok(())
}

pub fn shutdown(ctx: &mut Context, _: &str, _: &mut String) -> Result<(), Errno> {
    ctx.effects.push(Effect::Shutdown);
    Ok(())
}

pub fn showinfo(ctx: &mut Context, _: &str, out: &mut String) -> Result<(), Errno> {
    let i = ctx.info;
    let _ = writeln!(out, "{BANNER}\npid {} MAC {} uptime {}", i.pid, i.mac, ctx.now);
    if let Some((path, mode)) = &i.mgmt {
        let _ = writeln!(out, "mgmt {path} perm 0{mode:03o}");
    }
    Ok(())
}

pub fn ds_showinfo(ctx: &mut Context, _: &str, out: &mut String) -> Result<(), Errno> {
    let _ = writeln!(out, "ctl dir {}\nstd mode 0{:03o}", ctx.info.ctl_dir, ctx.info.ctl_mode);
    Ok(())
}

/// Reads a script, refusing anything that is not a bounded regular file
/// (devices, FIFOs and directories would block or never end).
pub fn read_script(path: &str) -> Result<String, Errno> {
    let file = std::fs::File::open(path).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    let meta = file.metadata().map_err(|_| Errno::EIO)?;
    if !meta.is_file() {
        return Err(Errno::EINVAL);
    }
    if meta.len() > MAX_SCRIPT_BYTES {
        return Err(Errno::EFBIG);
    }
    let mut bytes = Vec::new();
    file.take(MAX_SCRIPT_BYTES).read_to_end(&mut bytes).map_err(|_| Errno::EIO)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

pub fn load(ctx: &mut Context, path: &str, out: &mut String) -> Result<(), Errno> {
    if ctx.session.kind == SessionKind::RcFile {
        return Err(Errno::EBADF);
    }
    let text = read_script(path)?;
    run_script(ctx, path, &text, out)
}

pub fn plugin_list(_: &mut Context, _: &str, out: &mut String) -> Result<(), Errno> {
    out.push_str("NAME                   HELP\n------------           ----\n");
    Err(Errno::ENOENT)
}

/// vswitch loads no shared-object plugins; the commands answer as the
/// reference does when the plugin cannot be found.
pub fn plugin_unavailable(_: &mut Context, _: &str, _: &mut String) -> Result<(), Errno> {
    Err(Errno::ENOENT)
}
