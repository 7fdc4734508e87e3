use std::fmt::Write as _;

use nix::errno::Errno;
use nix::unistd::{Gid, Group, Uid, User};

use super::errno;
use crate::engine::{DropReason, Event, Port, PortId, Switch};
use crate::mgmt::args::{atoi, ints, optional, port_and_name};
use crate::mgmt::{Context, Effect, Out, notify};

pub fn showinfo(ctx: &mut Context, _: &str, out: &mut Out) -> Result<(), Errno> {
    let sw = &ctx.switch;
    let _ = writeln!(out, "Numports={}\nHUB={}\ncounters=true", sw.numports(), sw.is_hub());
    Ok(())
}

pub fn setnumports(ctx: &mut Context, args: &str, _: &mut Out) -> Result<(), Errno> {
    ctx.switch.set_numports(atoi(args)?).map_err(errno)
}

pub fn sethub(ctx: &mut Context, args: &str, _: &mut Out) -> Result<(), Errno> {
    ctx.switch.set_hub(atoi(args)? != 0);
    Ok(())
}

pub fn setvlan(ctx: &mut Context, args: &str, _: &mut Out) -> Result<(), Errno> {
    let [port, vlan] = ints::<2>(args)?;
    let vlan = u16::try_from(vlan).map_err(|_| Errno::EINVAL)?;
    ctx.switch.set_port_vlan(port, vlan).map_err(errno)
}

pub fn createauto(ctx: &mut Context, _: &str, out: &mut Out) -> Result<(), Errno> {
    let p = ctx.switch.create_auto_port().map_err(errno)?;
    let _ = writeln!(out, "Port {p:04}");
    Ok(())
}

/// `port/create 0` (also `0x14`, which `atoi` reads as 0) does not create
/// port 0: vde_switch's allocator takes 0 to mean "any", so it reserves the
/// lowest allocatable port like `port/createauto`, silently. Like any
/// other number, though, it is refused while port 0 exists.
pub fn create(ctx: &mut Context, args: &str, _: &mut Out) -> Result<(), Errno> {
    match atoi(args)? {
        0 if ctx.switch.port(0).is_some() => Err(Errno::EEXIST),
        0 => ctx.switch.create_auto_port().map(drop).map_err(errno),
        n => ctx.switch.create_explicit_port(n).map_err(errno),
    }
}

pub fn remove(ctx: &mut Context, args: &str, _: &mut Out) -> Result<(), Errno> {
    ctx.switch.remove_port(atoi(args)?).map_err(errno)
}

pub fn allocatable(ctx: &mut Context, args: &str, _: &mut Out) -> Result<(), Errno> {
    let [port, flag] = ints::<2>(args)?;
    ctx.switch.set_allocatable(port, flag != 0).map_err(errno)
}

/// vswitch's own `port/settrunk N 0/1` (also from rc files): tagged frames
/// of VLANs the switch has not configured cross the port's trunk siblings.
pub fn settrunk(ctx: &mut Context, args: &str, _: &mut Out) -> Result<(), Errno> {
    let [port, flag] = ints::<2>(args)?;
    ctx.switch.set_trunk(port, flag != 0).map_err(errno)
}

/// A user or group, resolved in vde_switch's order: a name; else, when it
/// starts with a digit, a number read by `atoi` (`12abc` is 12); else
/// `NONE`/`ANY`, which lift the restriction.
fn principal(name: &str, by_name: impl Fn(&str) -> Option<u32>) -> Result<Option<u32>, Errno> {
    if let Some(id) = by_name(name) {
        Ok(Some(id))
    } else if name.starts_with(|c: char| c.is_ascii_digit()) {
        atoi(name).map(Some)
    } else if name == "NONE" || name == "ANY" {
        Ok(None)
    } else {
        Err(Errno::EINVAL)
    }
}

/// The port is checked before the name is resolved, as in vde_switch.
pub fn setuser(ctx: &mut Context, args: &str, _: &mut Out) -> Result<(), Errno> {
    let (port, name) = port_and_name(args)?;
    ctx.switch.port(port).map(drop).ok_or_else(|| missing_port(ctx.switch, port))?;
    let user = principal(name, |n| User::from_name(n).ok().flatten().map(|u| u.uid.as_raw()))?;
    ctx.switch.set_acl_user(port, user).map_err(errno)
}

pub fn setgroup(ctx: &mut Context, args: &str, _: &mut Out) -> Result<(), Errno> {
    let (port, name) = port_and_name(args)?;
    ctx.switch.port(port).map(drop).ok_or_else(|| missing_port(ctx.switch, port))?;
    let group = principal(name, |n| Group::from_name(n).ok().flatten().map(|g| g.gid.as_raw()))?;
    ctx.switch.set_acl_group(port, group).map_err(errno)
}

/// Why port `p` cannot be used: out of range, or not created.
fn missing_port(sw: &Switch, p: PortId) -> Errno {
    if p >= sw.numports() { Errno::EINVAL } else { Errno::ENXIO }
}

pub fn epclose(ctx: &mut Context, args: &str, out: &mut Out) -> Result<(), Errno> {
    let [port, id] = ints::<2>(args)?;
    if port >= ctx.switch.numports() {
        return Err(Errno::EINVAL);
    }
    let Some(key) = ctx.switch.find_endpoint(port, id) else {
        // vde_switch announces an inactive port as closed again whenever
        // an endpoint is looked for on it in vain.
        if ctx.switch.port(port).is_some_and(|p| !p.is_active()) {
            notify(ctx, out, Event::PortDel(port));
        }
        return Err(Errno::ENXIO);
    };
    // Detached now, so its events come before this command's status; the
    // transport then closes the sockets.
    ctx.switch.detach(key);
    ctx.effects.push(Effect::CloseEndpoint(key));
    Ok(())
}

pub fn resetcounter(ctx: &mut Context, args: &str, _: &mut Out) -> Result<(), Errno> {
    ctx.switch.reset_counters(optional(args)?).map_err(errno)
}

fn user_name(uid: Option<u32>) -> String {
    match uid {
        None => "NONE".into(),
        Some(id) => User::from_uid(Uid::from_raw(id)).ok().flatten().map_or(id.to_string(), |u| u.name),
    }
}

fn group_name(gid: Option<u32>) -> String {
    match gid {
        None => "NONE".into(),
        Some(id) => Group::from_gid(Gid::from_raw(id)).ok().flatten().map_or(id.to_string(), |g| g.name),
    }
}

fn port_block(out: &mut Out, sw: &Switch, id: PortId, port: &Port) {
    let c = port.counters();
    let acl = port.acl();
    let _ = writeln!(
        out,
        "Port {id:04} untagged_vlan={:04} {} - {}Unnamed Allocatable",
        port.untagged_vlan().unwrap_or(crate::engine::VLAN_NONE),
        if port.is_active() { "ACTIVE" } else { "INACTIVE" },
        if port.allocatable() { "" } else { "NOT " },
    );
    let _ = writeln!(
        out,
        " Current User: {} Access Control: (User: {} - Group: {})",
        user_name(port.current_user()),
        user_name(acl.user),
        group_name(acl.group)
    );
    let _ = writeln!(out, " IN:  pkts {:10}          bytes {:20}", c.in_pkts, c.in_bytes);
    let _ = writeln!(out, " OUT: pkts {:10}          bytes {:20}", c.out_pkts, c.out_bytes);
    for ep in port.endpoints().filter_map(|k| sw.endpoint(k)) {
        let _ = write!(out, "  -- endpoint ID {:04} module {:<12}: ", ep.id, ep.module);
        out.push_bytes(&ep.description);
        out.push('\n');
    }
}

type PortWriter = fn(&mut Out, &Switch, PortId, &Port);

/// Writes port `[N]`, or every port, with `write`.
fn print_ports(
    ctx: &mut Context,
    args: &str,
    out: &mut Out,
    inactive_too: bool,
    write: PortWriter,
) -> Result<(), Errno> {
    let sw = &ctx.switch;
    let shown = |port: &Port| inactive_too || port.is_active();
    match optional(args)? {
        Some(p) if p >= sw.numports() => Err(Errno::EINVAL),
        Some(p) => {
            let port = sw.port(p).filter(|port| shown(port)).ok_or(Errno::ENXIO)?;
            write(out, sw, p, port);
            Ok(())
        }
        None => {
            for (id, port) in sw.ports().filter(|(_, port)| shown(port)) {
                write(out, sw, id, port);
            }
            Ok(())
        }
    }
}

pub fn print(ctx: &mut Context, args: &str, out: &mut Out) -> Result<(), Errno> {
    print_ports(ctx, args, out, false, port_block)
}

pub fn allprint(ctx: &mut Context, args: &str, out: &mut Out) -> Result<(), Errno> {
    print_ports(ctx, args, out, true, port_block)
}

fn drops_line(out: &mut Out, _: &Switch, id: PortId, port: &Port) {
    let _ = write!(out, "Port {id:04}");
    for reason in DropReason::ALL {
        let _ = write!(out, " {}={}", reason.name(), port.counters().drops(reason));
    }
    out.push('\n');
}

/// vswitch's own `port/drops [N]`: frames each port did not deliver, by
/// reason. Not listed by `help`, whose text must stay vde_switch's.
pub fn drops(ctx: &mut Context, args: &str, out: &mut Out) -> Result<(), Errno> {
    print_ports(ctx, args, out, true, drops_line)
}
