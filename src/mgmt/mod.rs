//! The management console: one table of commands serving the management
//! socket, the stdin console and rc files alike, and the exact reply framing
//! of vde_switch.
//!
//! A transport hands complete lines to [`execute`] and writes back what it
//! returns; events the engine produced meanwhile go through [`format_event`]
//! to the sessions that subscribed to them.

mod args;
mod commands;
mod events;

use std::fmt::Write as _;

use nix::errno::Errno;

pub use commands::{COMMANDS, Command, read_script};
pub use events::{CATEGORIES, Category, format_event};

use crate::engine::{EndpointKey, Switch};
use crate::wire::Mac;

pub const BANNER: &str = "VDE switch V.2.3.2\n(C) Virtual Square Team (coord. R. Davoli) 2005,2006,2007 - GPLv2\n";
pub const PROMPT: &str = "\nvde$ ";
pub const END_OF_SESSION: &str = "9999 END OF SESSION";
const DATA_HEADER: &str = "0000 DATA END WITH '.'\n";
/// How deep `load` may nest before refusing, so a script loading itself ends.
const MAX_LOAD_DEPTH: usize = 8;

/// Facts about the running switch that commands report but do not change.
#[derive(Debug, Clone)]
pub struct SwitchInfo {
    pub pid: u32,
    pub mac: Mac,
    /// Bridge priority for the spanning tree (`--priority`).
    pub priority: u16,
    /// The management socket path as given on the command line, and its mode.
    pub mgmt: Option<(String, u32)>,
    pub ctl_dir: String,
    pub ctl_mode: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// A connection to the management socket.
    Socket,
    /// The switch's own standard input.
    Stdin,
    /// An rc file run at start-up: output is discarded.
    RcFile,
}

/// Per-session console state.
#[derive(Debug, Clone)]
pub struct Session {
    pub kind: SessionKind,
    /// Bit `i` set: debug category `CATEGORIES[i]` is on for this session.
    pub debug: u32,
    load_depth: usize,
}

impl Session {
    pub fn new(kind: SessionKind) -> Self {
        Session { kind, debug: 0, load_depth: 0 }
    }

    pub fn wants(&self, category: Category) -> bool {
        self.debug & (1 << category as u32) != 0
    }
}

/// What the transport must do after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Logout,
    Shutdown,
    CloseEndpoint(EndpointKey),
}

/// Everything a command may look at or change.
pub struct Context<'a> {
    pub switch: &'a mut Switch,
    pub info: &'a SwitchInfo,
    /// Seconds since the switch started.
    pub now: u64,
    pub session: &'a mut Session,
    pub effects: Vec<Effect>,
}

impl<'a> Context<'a> {
    pub fn new(switch: &'a mut Switch, info: &'a SwitchInfo, now: u64, session: &'a mut Session) -> Self {
        Context { switch, info, now, session, effects: Vec::new() }
    }
}

fn status(out: &mut String, result: Result<(), Errno>) {
    match result {
        Ok(()) => out.push_str("1000 Success\n"),
        Err(e) => {
            let _ = writeln!(out, "{} {}", 1000 + e as i32, e.desc());
        }
    }
}

/// Finds the command a line invokes: the first in table order whose path is
/// a prefix of the line.
fn lookup(line: &str) -> Option<(&'static Command, &str)> {
    COMMANDS.iter().filter(|c| c.handler.is_some()).find_map(|c| {
        let rest = line.strip_prefix(c.path)?;
        Some((c, rest.trim_start_matches([' ', '\t'])))
    })
}

/// Runs one console line and returns the reply (without prompt).
pub fn execute(ctx: &mut Context, line: &str) -> String {
    let mut out = String::new();
    run_line(ctx, line, &mut out);
    out
}

fn run_line(ctx: &mut Context, line: &str, out: &mut String) {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.trim_start_matches([' ', '\t']);
    if line.is_empty() || line.starts_with('#') {
        return;
    }
    let Some((command, args)) = lookup(line) else {
        status(out, Err(Errno::ENOSYS));
        return;
    };
    let handler = command.handler.expect("lookup skips menus");
    if command.data {
        out.push_str(DATA_HEADER);
        let mut body = String::new();
        let result = handler(ctx, args, &mut body);
        out.push_str(&body);
        out.push_str(".\n");
        status(out, result);
    } else {
        let result = handler(ctx, args, out);
        match ctx.effects.last() {
            Some(Effect::Logout | Effect::Shutdown) if ctx.session.kind == SessionKind::Socket => {
                out.push_str(END_OF_SESSION)
            }
            Some(Effect::Logout | Effect::Shutdown) => {}
            _ => status(out, result),
        }
    }
}

/// Runs a script's lines as `load` does, echoing each line before its reply.
/// `name` is how the script is named in the echo.
pub fn run_script(ctx: &mut Context, name: &str, text: &str, out: &mut String) -> Result<(), Errno> {
    if ctx.session.load_depth >= MAX_LOAD_DEPTH {
        return Err(Errno::ELOOP);
    }
    ctx.session.load_depth += 1;
    for line in text.lines() {
        if ctx.session.kind != SessionKind::RcFile {
            let _ = writeln!(out, "vde[{name}]: {line}");
        }
        if line.is_empty() {
            // The reference hands an empty script line to the parser as-is,
            // and it answers like an unknown command.
            out.push('\n');
            status(out, Err(Errno::ENOSYS));
        } else {
            run_line(ctx, line, out);
        }
        if ctx.effects.iter().any(|e| matches!(e, Effect::Shutdown | Effect::Logout)) {
            break;
        }
    }
    ctx.session.load_depth -= 1;
    Ok(())
}
