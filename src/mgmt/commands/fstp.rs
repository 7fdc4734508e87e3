//! The FSTP menu: the spanning tree's switch, its per-VLAN settings and
//! its state, printed as vde_switch prints them.

use std::fmt::Write as _;

use nix::errno::Errno;

use super::errno;
use crate::engine::{PORT_COST, Switch, VLAN_MAX, VlanId};
use crate::mgmt::args::{atoi, ints, optional};
use crate::mgmt::{Context, Out};

pub fn showinfo(ctx: &mut Context, _: &str, out: &mut Out) -> Result<(), Errno> {
    let p = ctx.info.priority;
    let _ = writeln!(out, "MAC {} Priority {p} (0x{p:x})", ctx.info.mac);
    let _ = writeln!(out, "FSTP={}", ctx.switch.fstp().enabled());
    Ok(())
}

/// In hub mode vde_switch refuses in the data block (still `Success`),
/// whatever the argument, turning it off included.
pub fn setfstp(ctx: &mut Context, args: &str, out: &mut Out) -> Result<(), Errno> {
    let on = atoi(args)? != 0;
    if ctx.switch.is_hub() || !ctx.switch.set_fstp(on) {
        out.push_str("Can't use fstp in hub mode\n");
    }
    Ok(())
}

pub fn setedge(ctx: &mut Context, args: &str, _: &mut Out) -> Result<(), Errno> {
    let [vlan, port, edge] = ints::<3>(args)?;
    let vlan = VlanId::try_from(vlan).map_err(|_| Errno::EINVAL)?;
    ctx.switch.set_fstp_edge(vlan, port, edge != 0).map_err(errno)
}

pub fn bonus(ctx: &mut Context, args: &str, _: &mut Out) -> Result<(), Errno> {
    let [vlan, port, cost] = ints::<3>(args)?;
    let vlan = VlanId::try_from(vlan).map_err(|_| Errno::EINVAL)?;
    ctx.switch.set_fstp_bonus(vlan, port, cost).map_err(errno)
}

/// One VLAN's tree. The header words are separated by single spaces even
/// when empty, so a non-root switch with FSTP on prints two trailing
/// spaces. Numbers are printed as the reference's C `int`s.
fn vlan_block(out: &mut Out, sw: &Switch, id: VlanId, now: u64) {
    let fstp = sw.fstp();
    let Some(tree) = fstp.tree(id) else { return };
    let root_switch = if tree.root() == fstp.bridge_id() { "ROOTSWITCH" } else { "" };
    let disabled = if fstp.enabled() { "" } else { "FSTP IS DISABLED" };
    let _ = writeln!(out, "FST DATA VLAN {id:04} {root_switch} {disabled}");
    let _ = writeln!(out, " ++ root {}\n ++ designated {}", tree.root(), tree.designated());
    let (bonus_port, bonus_cost) = tree.bonus();
    let _ = writeln!(
        out,
        " ++ rootport {:04} cost {} age {} bonusport {bonus_port:04} bonuscost {}",
        tree.root_port(),
        tree.root_cost() as i32,
        now as i64 - tree.root_since() as i64,
        bonus_cost as i32
    );
    for (p, tagged, role) in tree.ports() {
        // The reference's role decoding only recognises untagged members.
        let role = if tagged { "Unknown" } else { role.name() };
        let _ = writeln!(out, " -- Port {p:04} tagged={} portcost={PORT_COST} role={role}", tagged as u8);
    }
}

pub fn print(ctx: &mut Context, args: &str, out: &mut Out) -> Result<(), Errno> {
    let sw = &ctx.switch;
    match optional(args)? {
        Some(v) if v > u32::from(VLAN_MAX) => Err(Errno::EINVAL),
        Some(v) => {
            sw.vlan(v as VlanId).ok_or(Errno::ENXIO)?;
            vlan_block(out, sw, v as VlanId, ctx.now);
            Ok(())
        }
        None => {
            for (id, _) in sw.vlans() {
                vlan_block(out, sw, id, ctx.now);
            }
            Ok(())
        }
    }
}
