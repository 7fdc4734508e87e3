//! The FSTP menu. vswitch does not run the spanning tree yet, so these
//! commands report it disabled, exactly as the reference does when off.

use std::fmt::Write as _;

use nix::errno::Errno;

use crate::engine::VLAN_MAX;
use crate::mgmt::Context;
use crate::mgmt::args::{atoi, ints};

pub fn showinfo(ctx: &mut Context, _: &str, out: &mut String) -> Result<(), Errno> {
    let p = ctx.info.priority;
    let _ = writeln!(out, "MAC {} Priority {p} (0x{p:04x})\nFSTP=false", ctx.info.mac);
    Ok(())
}

pub fn setfstp(ctx: &mut Context, args: &str, out: &mut String) -> Result<(), Errno> {
    if atoi(args)? == 0 {
        return Ok(());
    }
    if ctx.switch.is_hub() {
        out.push_str("Can't use fstp in hub mode\n");
        return Ok(());
    }
    Err(Errno::ENOSYS)
}

pub fn setedge(ctx: &mut Context, args: &str, _: &mut String) -> Result<(), Errno> {
    let [vlan, port, _] = ints::<3>(args)?;
    check_vlan_port(ctx, vlan, port)
}

pub fn bonus(ctx: &mut Context, args: &str, _: &mut String) -> Result<(), Errno> {
    let [vlan, port, _] = ints::<3>(args)?;
    check_vlan_port(ctx, vlan, port)
}

fn check_vlan_port(ctx: &Context, vlan: u32, port: u32) -> Result<(), Errno> {
    if vlan > u32::from(VLAN_MAX) || port >= ctx.switch.numports() {
        return Err(Errno::EINVAL);
    }
    if ctx.switch.vlan(vlan as u16).is_none() || ctx.switch.port(port).is_none() {
        return Err(Errno::ENXIO);
    }
    Err(Errno::ENOSYS)
}

pub fn print(ctx: &mut Context, args: &str, out: &mut String) -> Result<(), Errno> {
    let only = crate::mgmt::args::optional(args)?;
    if let Some(v) = only {
        if v > u32::from(VLAN_MAX) {
            return Err(Errno::EINVAL);
        }
        if ctx.switch.vlan(v as u16).is_none() {
            return Err(Errno::ENXIO);
        }
    }
    let [p_hi, p_lo] = ctx.info.priority.to_be_bytes();
    let root = format!("{p_hi:02x}:{p_lo:02x}:{}", ctx.info.mac);
    for (id, vlan) in ctx.switch.vlans().filter(|(id, _)| only.is_none_or(|v| v == u32::from(*id))) {
        let _ = writeln!(out, "FST DATA VLAN {id:04} ROOTSWITCH FSTP IS DISABLED");
        let _ = writeln!(out, " ++ root {root}\n ++ designated ff:ff:ff:ff:ff:ff:ff:ff");
        let _ = writeln!(out, " ++ rootport 0000 cost 0 age {} bonusport 0000 bonuscost 0", ctx.now);
        for (p, tagged) in vlan.members() {
            if ctx.switch.port(p).is_some_and(|port| port.is_active()) {
                let _ = writeln!(out, " -- Port {p:04} tagged={} portcost=20000000 role=Designated", tagged as u8);
            }
        }
    }
    Ok(())
}
