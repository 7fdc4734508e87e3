use std::fmt::Write as _;

use nix::errno::Errno;

use crate::engine::Station;
use crate::engine::bucket_count;
use crate::mgmt::args::{atoi, mac_and_vlan};
use crate::mgmt::{Context, Out};

pub fn showinfo(ctx: &mut Context, _: &str, out: &mut Out) -> Result<(), Errno> {
    let t = ctx.switch.mac_table();
    let _ = writeln!(
        out,
        "Hash size {}\nGC interval {} secs\nGC expire {} secs\nMin persistence {} secs",
        t.buckets(),
        t.gc_interval,
        t.expire,
        t.min_persistence
    );
    Ok(())
}

/// Resizes and flushes the table; like vde_switch, a size that is not a
/// power of two is rounded up with a log line saying so.
pub fn setsize(ctx: &mut Context, args: &str, _: &mut Out) -> Result<(), Errno> {
    let n = atoi(args)?;
    let rounded = bucket_count(n.into()).ok_or(Errno::EINVAL)?;
    if rounded != n {
        ctx.log.push(format!("Hash size must be a power of 2. {n} rounded to {rounded}"));
    }
    ctx.switch.resize_mac_table(rounded);
    Ok(())
}

pub fn setgcint(ctx: &mut Context, args: &str, _: &mut Out) -> Result<(), Errno> {
    ctx.switch.mac_table_mut().gc_interval = atoi(args)?.into();
    Ok(())
}

pub fn setexpire(ctx: &mut Context, args: &str, _: &mut Out) -> Result<(), Errno> {
    ctx.switch.mac_table_mut().expire = atoi(args)?.into();
    Ok(())
}

pub fn setminper(ctx: &mut Context, args: &str, _: &mut Out) -> Result<(), Errno> {
    ctx.switch.mac_table_mut().min_persistence = atoi(args)?.into();
    Ok(())
}

/// `shown_port` is what the line prints as the port: `hash/find` prints the
/// port plus one, as the reference does.
fn station_line(out: &mut Out, s: &Station, shown_port: u32) {
    let _ = writeln!(
        out,
        "Hash: {:04} Addr: {} VLAN {:04} to port: {:03}  age {} secs",
        s.bucket, s.mac, s.vlan, shown_port, s.age
    );
}

pub fn print(ctx: &mut Context, _: &str, out: &mut Out) -> Result<(), Errno> {
    for s in ctx.switch.mac_table().stations(ctx.now) {
        station_line(out, &s, s.port);
    }
    Ok(())
}

pub fn find(ctx: &mut Context, args: &str, out: &mut Out) -> Result<(), Errno> {
    let (mac, vlan) = mac_and_vlan(args)?;
    // No station is ever learned in a VLAN beyond 16 bits: simply not found.
    let vlan = u16::try_from(vlan).map_err(|_| Errno::ENODEV)?;
    let s = ctx.switch.mac_table().find(mac, vlan, ctx.now).ok_or(Errno::ENODEV)?;
    station_line(out, &s, s.port + 1);
    Ok(())
}
