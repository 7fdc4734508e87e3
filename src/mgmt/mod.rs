//! The management console: one table of commands serving the management
//! socket, the stdin console and rc files alike, and the exact reply framing
//! of vde_switch.
//!
//! A transport hands complete lines to [`execute`] and writes back what it
//! returns. The reply already holds the debug events the command caused
//! that this session subscribed to, in the place vde_switch writes them
//! (before the command's own output); the transport hands the same events,
//! collected in [`Context::events`], to the other sessions, and engine
//! events caused by traffic through [`format_event`].

mod args;
mod commands;
mod events;

use std::collections::HashMap;
use std::fmt::{self, Write as _};

use nix::errno::Errno;

pub use commands::{Action, COMMANDS, Command, EXTENSIONS, read_script};
pub use events::{CATEGORIES, Category, format_event};

use crate::engine::{EndpointKey, Event, PortId, Switch};
use crate::wire::Mac;

pub const BANNER: &str = "VDE switch V.2.3.2\n(C) Virtual Square Team (coord. R. Davoli) 2005,2006,2007 - GPLv2\n";
pub const PROMPT: &str = "\nvde$ ";
pub const END_OF_SESSION: &str = "9999 END OF SESSION";
/// Longest console or script line accepted; longer lines are refused as a
/// whole with `1022 Invalid argument` (vde_switch would cut them into
/// 128-byte pieces and run each piece).
pub const MAX_LINE: usize = 4096;
const DATA_HEADER: &str = "0000 DATA END WITH '.'\n";
/// How deep `load` may nest before refusing, so a script loading itself ends.
const MAX_LOAD_DEPTH: usize = 8;
/// Most script lines one console command may run, nested scripts included.
const MAX_SCRIPT_LINES: usize = 100_000;
/// A `load` whose reply grows beyond this stops with `ENOBUFS`: a script of
/// `help` lines must not build a reply of gigabytes.
const MAX_SCRIPT_OUTPUT: usize = 16 << 20;
/// Most distinct scripts one `load` reads ahead, nested ones included.
const MAX_PREFETCHED_SCRIPTS: usize = 64;

/// Script texts read ahead of a `load` (see [`prefetch`]), by path as the
/// command names it, or why a script could not be read.
pub type Scripts = HashMap<String, Result<String, Errno>>;

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
    /// An rc file run at start-up: output is discarded, failures are logged.
    RcFile,
}

/// Per-session console state.
#[derive(Debug, Clone)]
pub struct Session {
    pub kind: SessionKind,
    /// Bit `i` set: debug category `CATEGORIES[i]` is on for this session.
    pub debug: u32,
    /// How many scripts are running inside each other right now.
    load_depth: usize,
    /// Script lines the current top-level command may still run: nested
    /// `load`s multiply, so depth alone does not bound the work.
    script_lines_left: usize,
}

impl Session {
    pub fn new(kind: SessionKind) -> Self {
        Session { kind, debug: 0, load_depth: 0, script_lines_left: 0 }
    }

    pub fn wants(&self, category: Category) -> bool {
        self.debug & (1 << category as u32) != 0
    }
}

/// What the transport must do after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Close this session (after sending the reply).
    Logout,
    /// Stop the switch.
    Shutdown,
    /// Close the control stream and data socket of an endpoint the command
    /// already detached from the engine.
    CloseEndpoint(EndpointKey),
}

/// The transport's frame captures, as the `capture/…` commands see them.
pub trait CaptureDesk {
    /// Starts capturing `port` (0: every port) to `path`; on failure the
    /// errno to answer and a one-line reason.
    fn start(&mut self, port: PortId, path: &str, overwrite: bool) -> Result<(), (Errno, String)>;
    /// Stops the capture of `port`; false if there is none.
    fn stop(&mut self, port: PortId) -> bool;
    /// One line per capture and per mirror port.
    fn print(&self, out: &mut Out);
}

/// Ports the console opens and closes itself (VXLAN), implemented by the
/// I/O layer: the commands stay in the one table, the sockets in `net`.
pub trait Uplinks {
    /// Opens a VXLAN port from its SPEC; returns the switch port it got.
    fn add(&mut self, switch: &mut Switch, spec: &str) -> Result<u32, String>;
    /// Closes the VXLAN port on switch port `port`.
    fn remove(&mut self, switch: &mut Switch, port: u32) -> Result<(), String>;
    /// Lists the VXLAN ports with the counters of each remote endpoint.
    fn print(&mut self, switch: &Switch, out: &mut Out);
}

/// A console reply. Bytes rather than text: client descriptions are
/// printed as the clients sent them, UTF-8 or not, as vde_switch does.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Out(Vec<u8>);

impl Out {
    pub fn push_str(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }

    pub fn push(&mut self, c: char) {
        self.push_str(c.encode_utf8(&mut [0; 4]));
    }

    pub fn push_bytes(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

impl fmt::Write for Out {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_str(s);
        Ok(())
    }
}

/// Everything a command may look at or change, and what it leaves for the
/// transport to do.
pub struct Context<'a> {
    pub switch: &'a mut Switch,
    pub info: &'a SwitchInfo,
    /// Seconds since the switch started.
    pub now: u64,
    pub session: &'a mut Session,
    pub effects: Vec<Effect>,
    /// Engine events the command caused, in order. This session's reply
    /// already shows those it subscribed to; the transport tells the others.
    pub events: Vec<Event>,
    /// Lines for the switch's log.
    pub log: Vec<String>,
    /// Frame captures, where the transport has them.
    pub capture: Option<&'a mut dyn CaptureDesk>,
    /// What `load` reads: the scripts read ahead for this command, or,
    /// when `None`, the file system directly (only where blocking is
    /// harmless: tests and fuzzing).
    pub scripts: Option<Scripts>,
    /// The VXLAN ports, when the console runs inside a switch.
    pub uplinks: Option<&'a mut dyn Uplinks>,
}

impl<'a> Context<'a> {
    pub fn new(switch: &'a mut Switch, info: &'a SwitchInfo, now: u64, session: &'a mut Session) -> Self {
        Context {
            switch,
            info,
            now,
            session,
            effects: Vec::new(),
            events: Vec::new(),
            log: Vec::new(),
            capture: None,
            scripts: None,
            uplinks: None,
        }
    }
}

/// The C library's text for an error number, as vde_switch prints it with
/// `strerror` (`nix`'s own table words some differently).
pub fn strerror(e: Errno) -> String {
    let text = std::io::Error::from_raw_os_error(e as i32).to_string();
    // The standard library appends the number to the C library's text.
    match text.strip_suffix(&format!(" (os error {})", e as i32)) {
        Some(text) => text.to_string(),
        None => text,
    }
}

/// A status line: `1000 Success`, or 1000 + errno and the error's text.
pub fn status(result: Result<(), Errno>) -> String {
    match result {
        Ok(()) => "1000 Success\n".to_string(),
        Err(e) => format!("{} {}\n", 1000 + e as i32, strerror(e)),
    }
}

fn status_line(out: &mut Out, result: Result<(), Errno>) {
    out.push_str(&status(result));
}

/// Finds the command a line invokes: the first in table order whose path is
/// a prefix of the line. The argument is the rest, without leading blanks.
fn lookup(line: &str) -> Option<(&'static Command, &str)> {
    COMMANDS.iter().chain(EXTENSIONS).filter(|c| !c.is_menu()).find_map(|c| {
        let rest = line.strip_prefix(c.path)?;
        Some((c, rest.trim_start_matches([' ', '\t'])))
    })
}

/// Moves the events the engine produced so far into `ctx.events`, writing
/// the lines this session subscribed to into `out`.
fn collect_events(ctx: &mut Context, out: &mut Out) {
    let events = ctx.switch.take_events();
    for event in events {
        notify(ctx, out, event);
    }
}

/// Reports one event: into `out` if this session subscribed to it, and to
/// `ctx.events` for the others. Commands call it for events they produce
/// themselves rather than through the engine.
fn notify(ctx: &mut Context, out: &mut Out, event: Event) {
    if let Some((category, line)) = format_event(&event)
        && ctx.session.wants(category)
    {
        out.push_bytes(&line);
    }
    ctx.events.push(event);
}

/// The part of a line a C string holds: everything before the first NUL.
fn c_string(line: &str) -> &str {
    line.split('\0').next().unwrap_or_default()
}

/// `line` cut to a length fit for a log line.
fn abbreviated(line: &str) -> String {
    const SHOWN: usize = 80;
    match line.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}...", &line[..end]),
        None => line.to_string(),
    }
}

/// The path a console or script line would `load`, if it is a `load`
/// command; read the same way [`run_line`] reads the line.
pub fn load_target(line: &str) -> Option<&str> {
    let line = c_string(line);
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.trim_start_matches([' ', '\t']);
    if line.starts_with('#') {
        return None;
    }
    lookup(line).filter(|(c, _)| c.path == "load").map(|(_, path)| path)
}

/// Reads the script `path` names and, inside it, every script its `load`
/// lines name, as deep as `load` may nest, with `read`: the whole set a
/// `load` command can need, so that it can be read where blocking is
/// harmless and run without touching the file system. Bounded in files and
/// bytes; a script left out is refused with `ENOBUFS` when its turn comes.
pub fn prefetch(path: &str, read: impl Fn(&str) -> Result<String, Errno>) -> Scripts {
    let mut scripts = Scripts::new();
    let mut bytes = 0;
    let mut level = vec![path.to_string()];
    for _ in 0..MAX_LOAD_DEPTH {
        let mut next = Vec::new();
        for path in level {
            if scripts.contains_key(&path) || scripts.len() >= MAX_PREFETCHED_SCRIPTS || bytes > MAX_SCRIPT_OUTPUT {
                continue;
            }
            let text = read(&path);
            if let Ok(text) = &text {
                bytes += text.len();
                let lines = text.split_inclusive('\n').map(|raw| c_string(raw.strip_suffix('\n').unwrap_or(raw)));
                next.extend(lines.filter(|l| l.len() <= MAX_LINE).filter_map(load_target).map(str::to_string));
            }
            scripts.insert(path, text);
        }
        level = next;
    }
    scripts
}

/// Runs one console line and returns the reply (without prompt).
pub fn execute(ctx: &mut Context, line: &str) -> Out {
    let mut out = Out::default();
    run_line(ctx, line, &mut out);
    out
}

/// Runs one line, appending its reply to `out`. Returns its status, or
/// `None` for lines that print none (blanks, comments, ending the session).
fn run_line(ctx: &mut Context, line: &str, out: &mut Out) -> Option<Result<(), Errno>> {
    let line = c_string(line);
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.trim_start_matches([' ', '\t']);
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let result = match lookup(line) {
        None => Err(Errno::ENOSYS),
        // vde_switch runs rc files without a descriptor to write to, and
        // commands that need one fail before printing anything.
        Some((command, _)) if command.needs_session && ctx.session.kind == SessionKind::RcFile => Err(Errno::EBADF),
        Some((command, args)) => match command.action {
            // Never found by `lookup`; as unknown as any other non-command.
            Action::Menu => Err(Errno::ENOSYS),
            Action::EndSession(effect) => {
                // A script runs inside another command's reply; vde_switch
                // ignores `logout` and `shutdown` lines there.
                if ctx.session.load_depth == 0 {
                    ctx.effects.push(effect);
                    if ctx.session.kind == SessionKind::Socket {
                        out.push_str(END_OF_SESSION);
                    }
                }
                return None;
            }
            Action::Status(handler) => {
                let mut body = Out::default();
                let result = handler(ctx, args, &mut body);
                collect_events(ctx, out);
                out.push_bytes(body.as_bytes());
                result
            }
            Action::Data(handler) => {
                let mut body = Out::default();
                let result = handler(ctx, args, &mut body);
                collect_events(ctx, out);
                out.push_str(DATA_HEADER);
                out.push_bytes(body.as_bytes());
                out.push_str(".\n");
                result
            }
        },
    };
    status_line(out, result);
    Some(result)
}

/// Runs a script's lines as `load` does, echoing each line before its
/// reply; for an rc file nothing is echoed, the output is dropped and each
/// failing command is logged as `FILE:LINE: command: error`. `name` is how
/// the script is named in the echo and the log.
pub fn run_script(ctx: &mut Context, name: &str, text: &str, out: &mut Out) -> Result<(), Errno> {
    may_nest_script(ctx)?;
    if ctx.session.load_depth == 0 {
        ctx.session.script_lines_left = MAX_SCRIPT_LINES;
    }
    ctx.session.load_depth += 1;
    let result = run_script_lines(ctx, name, text, out);
    ctx.session.load_depth -= 1;
    result
}

/// Whether one more script may start inside the running ones; checked
/// before a script is even read.
pub fn may_nest_script(ctx: &Context) -> Result<(), Errno> {
    if ctx.session.load_depth >= MAX_LOAD_DEPTH { Err(Errno::ELOOP) } else { Ok(()) }
}

fn run_script_lines(ctx: &mut Context, name: &str, text: &str, out: &mut Out) -> Result<(), Errno> {
    let rc_file = ctx.session.kind == SessionKind::RcFile;
    for (index, raw) in text.split_inclusive('\n').enumerate() {
        if ctx.session.script_lines_left == 0 {
            return Err(Errno::ENOBUFS);
        }
        ctx.session.script_lines_left -= 1;
        let content = raw.strip_suffix('\n').unwrap_or(raw);
        let command = c_string(content);
        if rc_file {
            out.clear();
        } else {
            let _ = writeln!(out, "vde[{name}]: {command}");
        }
        let status = if content.is_empty() {
            // vde_switch keeps the newline of a line that has nothing else,
            // and its parser answers that newline like an unknown command.
            // Not a command, so not worth a log line either.
            out.push('\n');
            status_line(out, Err(Errno::ENOSYS));
            None
        } else if command.len() > MAX_LINE {
            status_line(out, Err(Errno::EINVAL));
            Some(Err(Errno::EINVAL))
        } else {
            run_line(ctx, command, out)
        };
        if rc_file && let Some(Err(e)) = status {
            ctx.log.push(format!("{name}:{}: {}: {}", index + 1, abbreviated(command), strerror(e)));
        }
        if out.len() > MAX_SCRIPT_OUTPUT {
            return Err(Errno::ENOBUFS);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
