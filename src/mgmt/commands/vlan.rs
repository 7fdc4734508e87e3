use std::fmt::Write as _;

use nix::errno::Errno;

use super::errno;
use crate::engine::{Switch, VLAN_MAX, VlanId};
use crate::mgmt::args::{atoi, ints, optional};
use crate::mgmt::{Context, Out};

fn vlan_id(n: u32) -> Result<VlanId, Errno> {
    VlanId::try_from(n).map_err(|_| Errno::EINVAL)
}

pub fn create(ctx: &mut Context, args: &str, _: &mut Out) -> Result<(), Errno> {
    ctx.switch.create_vlan(vlan_id(atoi(args)?)?).map_err(errno)
}

pub fn remove(ctx: &mut Context, args: &str, _: &mut Out) -> Result<(), Errno> {
    ctx.switch.remove_vlan(vlan_id(atoi(args)?)?).map_err(errno)
}

pub fn addport(ctx: &mut Context, args: &str, _: &mut Out) -> Result<(), Errno> {
    let [vlan, port] = ints::<2>(args)?;
    ctx.switch.add_tagged(vlan_id(vlan)?, port).map_err(errno)
}

pub fn delport(ctx: &mut Context, args: &str, _: &mut Out) -> Result<(), Errno> {
    let [vlan, port] = ints::<2>(args)?;
    ctx.switch.remove_tagged(vlan_id(vlan)?, port).map_err(errno)
}

fn vlan_block(out: &mut Out, sw: &Switch, id: VlanId, inactive_too: bool) {
    let Some(vlan) = sw.vlan(id) else { return };
    let _ = writeln!(out, "VLAN {id:04}");
    // vde_switch's `vlan/print` tests its hub flag where it meant to test
    // FSTP (both are bit 0 of a flag word) and then lists no ports.
    if sw.is_hub() && !inactive_too {
        return;
    }
    for (p, tagged) in vlan.members() {
        let active = sw.port(p).is_some_and(|port| port.is_active());
        if active || inactive_too {
            let status = vlan.state(p, active).name();
            let _ = writeln!(out, " -- Port {p:04} tagged={} active={} status={status}", tagged as u8, active as u8);
        }
    }
}

fn print_vlans(ctx: &mut Context, args: &str, out: &mut Out, lowest: u32, inactive_too: bool) -> Result<(), Errno> {
    let sw = &ctx.switch;
    match optional(args)? {
        Some(v) if v < lowest || v > u32::from(VLAN_MAX) => Err(Errno::EINVAL),
        Some(v) => {
            sw.vlan(v as VlanId).ok_or(Errno::ENXIO)?;
            vlan_block(out, sw, v as VlanId, inactive_too);
            Ok(())
        }
        None => {
            for (id, _) in sw.vlans() {
                vlan_block(out, sw, id, inactive_too);
            }
            Ok(())
        }
    }
}

pub fn print(ctx: &mut Context, args: &str, out: &mut Out) -> Result<(), Errno> {
    print_vlans(ctx, args, out, 0, false)
}

/// `vlan/allprint 0` is refused by the reference; kept for compatibility.
pub fn allprint(ctx: &mut Context, args: &str, out: &mut Out) -> Result<(), Errno> {
    print_vlans(ctx, args, out, 1, true)
}
