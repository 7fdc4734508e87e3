//! The command table. Order matters: it is both the `help` listing order
//! and the lookup order (first path that prefixes the input line wins).

mod capture;
mod debug;
mod fstp;
mod global;
mod hash;
mod port;
mod vlan;
mod vxlan;

use nix::errno::Errno;

pub use global::read_script;

use super::{Context, Effect, Out};

/// Runs a command with its argument text, writing output to the buffer.
pub type Handler = fn(&mut Context, &str, &mut Out) -> Result<(), Errno>;

/// What running a command does.
#[derive(Clone, Copy)]
pub enum Action {
    /// A menu header: listed by `help`, never run (`port` alone is an
    /// unknown command).
    Menu,
    /// Runs the handler and answers its status after whatever it wrote.
    Status(Handler),
    /// Runs the handler; its output goes in a `0000 DATA END WITH '.'`
    /// block, printed even when the command fails.
    Data(Handler),
    /// Ends the session (or the whole switch): answered on the management
    /// socket by `9999 END OF SESSION` and no status.
    EndSession(Effect),
}

pub struct Command {
    pub path: &'static str,
    pub syntax: &'static str,
    pub help: &'static str,
    pub action: Action,
    /// Writes to the session itself (debug subscriptions, nested scripts),
    /// so an rc file, which has no session to write to, gets `EBADF`.
    pub needs_session: bool,
}

impl Command {
    pub fn is_menu(&self) -> bool {
        matches!(self.action, Action::Menu)
    }
}

const fn menu(path: &'static str, help: &'static str) -> Command {
    Command { path, syntax: "============", help, action: Action::Menu, needs_session: false }
}

const fn cmd(path: &'static str, syntax: &'static str, help: &'static str, handler: Handler) -> Command {
    Command { path, syntax, help, action: Action::Status(handler), needs_session: false }
}

const fn data(path: &'static str, syntax: &'static str, help: &'static str, handler: Handler) -> Command {
    Command { path, syntax, help, action: Action::Data(handler), needs_session: false }
}

const fn end(path: &'static str, help: &'static str, effect: Effect) -> Command {
    Command { path, syntax: "", help, action: Action::EndSession(effect), needs_session: false }
}

/// Marks a command as needing a session to write to.
const fn session_only(command: Command) -> Command {
    Command { needs_session: true, ..command }
}

pub static COMMANDS: &[Command] = &[
    menu("ds", "DATA SOCKET MENU"),
    data("ds/showinfo", "", "show ds info", global::ds_showinfo),
    data("help", "[arg]", "Help (limited to arg when specified)", global::help),
    end("logout", "logout from this mgmt terminal", Effect::Logout),
    end("shutdown", "shutdown of the switch", Effect::Shutdown),
    data("showinfo", "", "show switch version and info", global::showinfo),
    session_only(cmd("load", "path", "load a configuration script", global::load)),
    menu("debug", "DEBUG MENU"),
    session_only(data("debug/list", "", "list debug categories", debug::list)),
    session_only(cmd("debug/add", "dbgpath", "enable debug info for a given category", debug::add)),
    session_only(cmd("debug/del", "dbgpath", "disable debug info for a given category", debug::del)),
    menu("plugin", "PLUGINS MENU"),
    data("plugin/list", "", "list plugins", global::plugin_list),
    cmd("plugin/add", "library", "load a plugin", global::plugin_add),
    cmd("plugin/del", "name", "unload a plugin", global::plugin_unavailable),
    menu("hash", "HASH TABLE MENU"),
    data("hash/showinfo", "", "show hash info", hash::showinfo),
    cmd("hash/setsize", "N", "change hash size", hash::setsize),
    cmd("hash/setgcint", "N", "change garbage collector interval", hash::setgcint),
    cmd("hash/setexpire", "N", "change hash entries expire time", hash::setexpire),
    cmd("hash/setminper", "N", "minimum persistence time", hash::setminper),
    data("hash/print", "", "print the hash table", hash::print),
    data("hash/find", "MAC [VLAN]", "MAC lookup", hash::find),
    menu("fstp", "FAST SPANNING TREE MENU"),
    data("fstp/showinfo", "", "show fstp info", fstp::showinfo),
    data("fstp/setfstp", "0/1", "Fast spanning tree protocol 1=ON 0=OFF", fstp::setfstp),
    cmd("fstp/setedge", "VLAN PORT 1/0", "Define an edge port for a vlan 1=Y 0=N", fstp::setedge),
    cmd("fstp/bonus", "VLAN PORT COST", "set the port bonus for a vlan", fstp::bonus),
    data("fstp/print", "[N]", "print fst data for the defined vlan", fstp::print),
    menu("port", "PORT STATUS MENU"),
    data("port/showinfo", "", "show port info", port::showinfo),
    cmd("port/setnumports", "N", "set the number of ports", port::setnumports),
    cmd("port/sethub", "0/1", "1=HUB 0=switch", port::sethub),
    cmd("port/setvlan", "N VLAN", "set port VLAN (untagged)", port::setvlan),
    data(
        "port/createauto",
        "",
        "create a port with an automatically allocated id (inactive|notallocatable)",
        port::createauto,
    ),
    cmd("port/create", "N", "create the port N (inactive|notallocatable)", port::create),
    cmd("port/remove", "N", "remove the port N", port::remove),
    cmd("port/allocatable", "N 0/1", "Is the port allocatable as unnamed? 1=Y 0=N", port::allocatable),
    cmd("port/setuser", "N user", "access control: set user", port::setuser),
    cmd("port/setgroup", "N user", "access control: set group", port::setgroup),
    cmd("port/epclose", "N ID", "remove the endpoint port N/id ID", port::epclose),
    cmd("port/resetcounter", "[N]", "reset the port (N) counters", port::resetcounter),
    data("port/print", "[N]", "print the port/endpoint table", port::print),
    data("port/allprint", "[N]", "print the port/endpoint table (including inactive port)", port::allprint),
    menu("vlan", "VLAN MANAGEMENT MENU"),
    cmd("vlan/create", "N", "create the VLAN with tag N", vlan::create),
    cmd("vlan/remove", "N", "remove the VLAN with tag N", vlan::remove),
    cmd("vlan/addport", "N PORT", "add port to the vlan N (tagged)", vlan::addport),
    // The reference's help text for delport really says "add".
    cmd("vlan/delport", "N PORT", "add port to the vlan N (tagged)", vlan::delport),
    data("vlan/print", "[N]", "print the list of defined vlan", vlan::print),
    data("vlan/allprint", "[N]", "print the list of defined vlan (including inactive port)", vlan::allprint),
];

/// vswitch's additions, looked up after the reference's commands and kept
/// out of `help`, whose output clients compare byte for byte.
pub static EXTENSIONS: &[Command] = &[
    data("port/drops", "[N]", "frames not delivered, by reason", port::drops),
    cmd("port/setmirror", "N 0/1", "send port N a copy of every forwarded frame 1=Y 0=N", capture::setmirror),
    cmd("capture/start", "PORT FILE [overwrite]", "capture port PORT (0=all) to pcapng FILE", capture::start),
    cmd("capture/stop", "PORT", "stop capturing port PORT", capture::stop),
    data("capture/print", "", "list captures and mirror ports", capture::print),
    data("vxlan/add", "SPEC", "join a VXLAN: id=VNI,remote=ADDR|group=MCAST,dev=IFACE,...", vxlan::add),
    cmd("vxlan/del", "N", "close the VXLAN port N", vxlan::del),
    data("vxlan/print", "", "VXLAN ports and their remote endpoints", vxlan::print),
    cmd("port/settrunk", "N 0/1", "transparent trunk for unconfigured VLANs 1=Y 0=N", port::settrunk),
];

/// Maps engine configuration errors to the errno the reference reports.
fn errno(e: crate::engine::ConfigError) -> Errno {
    use crate::engine::ConfigError::*;
    match e {
        Invalid => Errno::EINVAL,
        Missing => Errno::ENXIO,
        Exists => Errno::EEXIST,
        InUse => Errno::EADDRINUSE,
        Full => Errno::ENOSPC,
    }
}
