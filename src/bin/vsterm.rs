//! `vsterm SOCKET`: console client for the management socket of vswitch or
//! vde_switch (spec §8.2 and §11), the line-editing counterpart of vdeterm.
//!
//! Protocol, as the client sees it: on connect the switch sends a banner and
//! the prompt `"\nvde$ "`; each command goes in one write and is answered by
//! its reply and the next prompt; `logout` is answered by
//! `9999 END OF SESSION` and EOF; `3NNN …` debug lines may arrive at any time.
//!
//! Interactive mode (stdin is a terminal, no `-c`): rustyline editing with
//! history and completion of the command paths listed by the switch's own
//! `help`; a reader thread owns the socket's input and hands replies to the
//! editing thread, or prints notifications above the input line.
//!
//! Script mode (`-c COMMAND`…, or commands on a non-terminal stdin) prints
//! what `vdecmd` and `unixcmd` print: the body of each reply (the lines
//! between `0000 DATA END WITH '.'` and `.`) on stdout, a failure's status
//! line (`1022 Invalid argument`) and any `3NNN` notification on stderr.
//! `--raw` prints each reply as sent instead, minus the prompt. Exit status
//! 0 when every command succeeded (or had no status, like a comment), else
//! the first failure's code less 1000 (the error number, as `vdecmd`
//! exits), 255 when the switch cannot be reached or the session broke.

use std::ffi::OsString;
use std::io::{self, BufRead, ErrorKind, IsTerminal, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use nix::sys::termios::{SetArg, Termios, tcgetattr, tcsetattr};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::FileHistory;
use rustyline::validate::Validator;
use rustyline::{CompletionType, Config, Editor, ExternalPrinter, Helper};

const PROMPT: &[u8] = b"\nvde$ ";
/// vde_switch takes each read() of at most 128 bytes as one command: a longer
/// line would run as several commands, each answered with its own prompt,
/// and every later reply would be off by one.
const MAX_COMMAND: usize = 127;
/// A reply is kept whole until its prompt arrives (the status is its last
/// line); a switch sending more than this without a prompt is broken.
const MAX_REPLY: usize = 64 << 20;
const HISTORY_FILE: &str = ".vsterm_history";
const HISTORY_SIZE: usize = 1000;

const EXIT_CONNECTION: u8 = 255;
/// The line that opens a reply's body; a line holding only `.` closes it.
const DATA_START: &[u8] = b"0000 DATA END WITH '.'";

#[derive(Parser)]
#[command(version, about = "Console client for the management socket of vswitch or vde_switch")]
struct Args {
    /// The switch's management socket (the path given to its -M option).
    socket: PathBuf,
    /// Run COMMAND and exit (repeatable). Without -c, commands are read from
    /// standard input when it is not a terminal.
    #[arg(short = 'c', long = "command", value_name = "COMMAND")]
    commands: Vec<OsString>,
    /// Seconds to wait for the banner and for each reply.
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    timeout: u64,
    /// In script mode, print each reply as the switch sent it (the
    /// `0000 DATA END WITH '.'`, `.` and status lines included).
    #[arg(long)]
    raw: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = if !args.commands.is_empty() {
        // A -c argument holding several lines is several commands: sent in
        // one write they would be one command to vde_switch.
        let commands: Vec<Vec<u8>> =
            args.commands.iter().flat_map(|c| c.as_bytes().split(|&b| b == b'\n')).map(<[u8]>::to_vec).collect();
        run_script(&args, commands.into_iter().map(Ok))
    } else if !io::stdin().is_terminal() {
        run_script(&args, io::stdin().lock().split(b'\n'))
    } else {
        run_interactive(&args)
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vsterm: {e:#}");
            ExitCode::from(EXIT_CONNECTION)
        }
    }
}

/// Bytes received from the switch, cut into replies (everything before the
/// next prompt) and, between commands, into notification lines.
#[derive(Default)]
struct Inbox {
    buf: Vec<u8>,
    /// No prompt starts before this offset of `buf`: a long reply arriving in
    /// many reads is scanned once, not once per read.
    scanned: usize,
}

impl Inbox {
    fn push(&mut self, bytes: &[u8]) -> Result<()> {
        if self.buf.len() + bytes.len() > MAX_REPLY {
            bail!("the switch sent more than {} MiB without a prompt", MAX_REPLY >> 20);
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// The text before the next prompt, once the whole prompt has arrived.
    fn take_reply(&mut self) -> Option<Vec<u8>> {
        let from = self.scanned;
        match self.buf[from..].windows(PROMPT.len()).position(|w| w == PROMPT) {
            Some(at) => {
                let reply = self.buf[..from + at].to_vec();
                self.buf.drain(..from + at + PROMPT.len());
                self.scanned = 0;
                Some(reply)
            }
            None => {
                // A prompt may have begun in the last few bytes.
                self.scanned = self.buf.len().saturating_sub(PROMPT.len() - 1);
                None
            }
        }
    }

    /// The next complete line, newline included (notifications between
    /// commands).
    fn take_line(&mut self) -> Option<Vec<u8>> {
        let end = self.buf.iter().position(|&b| b == b'\n')?;
        self.scanned = 0;
        Some(self.buf.drain(..=end).collect())
    }

    fn take_all(&mut self) -> Vec<u8> {
        self.scanned = 0;
        std::mem::take(&mut self.buf)
    }
}

/// One reply: the text before the prompt, or before EOF when the switch
/// closed the session (`closed`).
struct Reply {
    text: Vec<u8>,
    closed: bool,
}

/// A reply cut as scripts want it: the body, and the status and
/// notification lines that are not part of it.
#[derive(Debug, Default, PartialEq, Eq)]
struct Parts {
    body: Vec<u8>,
    status: Option<Vec<u8>>,
    notes: Vec<u8>,
}

fn parts(reply: &[u8]) -> Parts {
    let mut parts = Parts::default();
    let mut in_body = false;
    for line in reply.split_inclusive(|&b| b == b'\n') {
        let bare = line.strip_suffix(b"\n").unwrap_or(line);
        if in_body {
            if bare == b"." {
                in_body = false;
            } else {
                parts.body.extend_from_slice(line);
            }
            continue;
        }
        match code(bare) {
            _ if bare == DATA_START => in_body = true,
            Some(3000..=3999) => parts.notes.extend_from_slice(line),
            Some(_) => parts.status = Some(bare.to_vec()),
            None => {}
        }
    }
    parts
}

#[derive(Debug, PartialEq, Eq)]
enum Status {
    Success,
    /// The reply's code (1001 to 1999).
    Failed(u16),
    EndOfSession,
    /// No status line: a comment or an empty command.
    None,
}

/// An extension command without effects, run to tell vswitch from
/// vde_switch.
const EXTENSION_PROBE: &str = "capture/print";

/// The 4-digit code opening a line (`1000 Success`, `3021 port/+ 07`).
fn code(line: &[u8]) -> Option<u16> {
    let digits = line.get(..4)?;
    if line.get(4) != Some(&b' ') || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The reply's status: its last line, not counting `3NNN` notifications,
/// which may come before or after it.
fn status(reply: &[u8]) -> Status {
    let last = reply
        .split(|&b| b == b'\n')
        .rev()
        .filter(|line| !line.is_empty())
        .find(|line| !matches!(code(line), Some(3000..=3999)));
    match last.and_then(code) {
        Some(1000) => Status::Success,
        Some(9999) => Status::EndOfSession,
        Some(code @ 1001..=1999) => Status::Failed(code),
        _ => Status::None,
    }
}

/// The command paths of a `help` reply, parsed like vdeterm does: the first
/// word of each line between the `------------` separator and `.`, without
/// the menu headers (`port  ============  PORT STATUS MENU`).
fn command_paths(help: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(help);
    let mut entries: Vec<(&str, bool)> = Vec::new();
    for line in text.lines().skip_while(|l| !l.starts_with("------------")).skip(1) {
        if line == "." {
            break;
        }
        let mut words = line.split_whitespace();
        if let Some(path) = words.next() {
            entries.push((path, words.next() == Some("============")));
        }
    }
    let is_menu = |path: &str| {
        entries.iter().any(|(other, _)| {
            other.len() > path.len() + 1 && other.starts_with(path) && other.as_bytes()[path.len()] == b'/'
        })
    };
    let mut paths: Vec<String> =
        entries.iter().filter(|(p, header)| !header && !is_menu(p)).map(|(p, _)| p.to_string()).collect();
    paths.sort();
    paths.dedup();
    paths
}

/// Text from the switch made safe for a terminal: it can carry strings chosen
/// by any VDE client (port descriptions), so control characters other than
/// newline and tab are shown escaped instead of reaching the terminal.
fn for_terminal(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for c in String::from_utf8_lossy(bytes).chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// A blocking session used for the banner, the completion list and script
/// mode: every wait is bounded by `timeout`.
struct Connection {
    stream: UnixStream,
    inbox: Inbox,
    timeout: Duration,
}

impl Connection {
    /// Connects and returns the session with the banner (text before the
    /// first prompt).
    fn open(path: &Path, timeout: Duration) -> Result<(Connection, Vec<u8>)> {
        let stream = UnixStream::connect(path).with_context(|| format!("cannot connect to {}", path.display()))?;
        let mut connection = Connection { stream, inbox: Inbox::default(), timeout };
        let banner = connection.read_reply().with_context(|| format!("{}: no console banner", path.display()))?;
        if banner.closed {
            bail!("{}: the switch closed the connection before its prompt", path.display());
        }
        Ok((connection, banner.text))
    }

    /// Sends one command in one write.
    fn send(&mut self, command: &[u8]) -> Result<()> {
        let mut line = Vec::with_capacity(command.len() + 1);
        line.extend_from_slice(command);
        line.push(b'\n');
        self.stream.write_all(&line).context("the switch closed the connection")
    }

    fn read_reply(&mut self) -> Result<Reply> {
        let deadline = Instant::now() + self.timeout;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(text) = self.inbox.take_reply() {
                return Ok(Reply { text, closed: false });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no prompt from the switch within {} s", self.timeout.as_secs());
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut buf) {
                Ok(0) => return Ok(Reply { text: self.inbox.take_all(), closed: true }),
                Ok(n) => self.inbox.push(&buf[..n])?,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                    return Ok(Reply { text: self.inbox.take_all(), closed: true });
                }
                Err(e) => return Err(e).context("reading from the switch"),
            }
        }
    }

    fn command(&mut self, command: &[u8]) -> Result<Reply> {
        self.send(command)?;
        self.read_reply()
    }
}

/// Writes a reply (plus a final newline if the switch sent none, as after
/// `9999 END OF SESSION`); raw bytes for a pipe, escaped for a terminal.
fn print_reply(out: &mut impl Write, text: &[u8], terminal: bool) -> io::Result<()> {
    if terminal {
        out.write_all(for_terminal(text).as_bytes())?;
    } else {
        out.write_all(text)?;
    }
    if !text.is_empty() && !text.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    out.flush()
}

fn run_script(args: &Args, commands: impl Iterator<Item = io::Result<Vec<u8>>>) -> Result<ExitCode> {
    let (mut connection, _banner) = Connection::open(&args.socket, Duration::from_secs(args.timeout))?;
    let terminal = io::stdout().is_terminal();
    let mut stdout = io::stdout().lock();
    let mut failure: Option<u8> = None;
    let mut ended = false;
    for command in commands {
        let command = command.context("reading commands from standard input")?;
        if command.is_empty() {
            continue;
        }
        if ended {
            bail!("the session has ended; not sent: {}", String::from_utf8_lossy(&command));
        }
        if command.len() > MAX_COMMAND {
            eprintln!("vsterm: not sent, longer than {MAX_COMMAND} bytes: {}", String::from_utf8_lossy(&command));
            failure.get_or_insert(libc::E2BIG as u8);
            continue;
        }
        let reply = connection.command(&command)?;
        let broken = reply.closed && status(&reply.text) != Status::EndOfSession;
        if args.raw || broken {
            print_reply(&mut stdout, &reply.text, terminal).context("writing to standard output")?;
        } else {
            print_body(&mut stdout, &reply.text, terminal).context("writing to standard output")?;
        }
        match status(&reply.text) {
            Status::Failed(code) => {
                failure.get_or_insert(u8::try_from(code - 1000).unwrap_or(1));
            }
            Status::EndOfSession => ended = true,
            Status::Success | Status::None => {}
        }
        if reply.closed && !ended {
            bail!("the switch closed the connection");
        }
    }
    Ok(ExitCode::from(failure.unwrap_or(0)))
}

/// Prints a reply's body on stdout, its notifications and a failed status
/// line on stderr.
fn print_body(out: &mut impl Write, text: &[u8], terminal: bool) -> io::Result<()> {
    let parts = parts(text);
    if terminal {
        out.write_all(for_terminal(&parts.body).as_bytes())?;
    } else {
        out.write_all(&parts.body)?;
    }
    out.flush()?;
    let mut stderr = io::stderr().lock();
    stderr.write_all(for_terminal(&parts.notes).as_bytes())?;
    if let Some(line) = parts.status.filter(|line| matches!(status(line), Status::Failed(_))) {
        writeln!(stderr, "{}", for_terminal(&line))?;
    }
    Ok(())
}

/// Completes the command path (the first word) from the switch's `help`.
struct CommandCompleter {
    paths: Vec<String>,
}

impl Completer for CommandCompleter {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, _: &rustyline::Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let start = before.len() - before.trim_start().len();
        let word = &before[start..];
        if word.contains(char::is_whitespace) {
            return Ok((pos, Vec::new()));
        }
        // The trailing space ends a unique completion like vdeterm's does;
        // several candidates still share their common prefix without it.
        let candidates = self
            .paths
            .iter()
            .filter(|p| p.starts_with(word))
            .map(|p| Pair { display: p.clone(), replacement: format!("{p} ") })
            .collect();
        Ok((start, candidates))
    }
}

impl Hinter for CommandCompleter {
    type Hint = String;
}
impl Highlighter for CommandCompleter {}
impl Validator for CommandCompleter {}
impl Helper for CommandCompleter {}

/// Where the reader thread stands with the editing thread's command.
enum Exchange {
    /// No command outstanding: complete lines are notifications.
    Idle,
    /// A command was sent; its reply is collected up to the prompt.
    Waiting,
    /// The reply, for the editing thread to take.
    Replied(Reply),
    /// The editing thread prints the reply; notifications wait until after.
    Printing,
}

/// State shared by the editing thread and the socket reader thread.
struct Shared {
    inbox: Inbox,
    exchange: Exchange,
    /// The editing thread is inside readline(), which nothing can interrupt.
    editing: bool,
    /// Why the session ended, once the socket is closed or broken.
    closed: Option<String>,
}

type SharedState = Arc<(Mutex<Shared>, Condvar)>;

fn lock(shared: &SharedState) -> MutexGuard<'_, Shared> {
    shared.0.lock().unwrap_or_else(PoisonError::into_inner)
}

fn history_path() -> Option<PathBuf> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(HISTORY_FILE))
}

fn run_interactive(args: &Args) -> Result<ExitCode> {
    let timeout = Duration::from_secs(args.timeout);
    let (mut connection, banner) = Connection::open(&args.socket, timeout)?;
    print_reply(&mut io::stdout(), &banner, true)?;

    // The completion list comes from this switch's own help, as in vdeterm.
    let help = connection.command(b"help")?;
    if help.closed {
        bail!("the switch closed the connection");
    }
    let mut paths = command_paths(&help.text);
    // vswitch's own commands stay out of `help`; a switch that runs one of
    // them (a listing, which changes nothing) has them all.
    let probe = connection.command(EXTENSION_PROBE.as_bytes())?;
    if !paths.is_empty() && status(&probe.text) == Status::Success {
        paths.extend(vswitch::mgmt::EXTENSIONS.iter().map(|c| c.path.to_string()));
    }
    if paths.is_empty() {
        eprintln!("vsterm: no command list in the switch's help reply; completion is off");
    }

    // Saved before rustyline switches the terminal to raw mode, so that the
    // reader thread can restore it when the switch goes away mid-edit.
    let saved_terminal = tcgetattr(io::stdin()).ok();
    let config = Config::builder()
        .completion_type(CompletionType::List)
        .max_history_size(HISTORY_SIZE)?
        .history_ignore_dups(true)?
        .history_ignore_space(true)
        // Nothing to restore on a forced exit beyond termios.
        .bracketed_paste(false)
        .build();
    let mut editor: Editor<CommandCompleter, FileHistory> = Editor::with_config(config)?;
    editor.set_helper(Some(CommandCompleter { paths }));
    let history = history_path();
    if let Some(path) = &history {
        // A missing or unreadable history only means starting afresh.
        let _ = editor.load_history(path);
    }

    let shared: SharedState = Arc::new((
        Mutex::new(Shared {
            inbox: std::mem::take(&mut connection.inbox),
            exchange: Exchange::Idle,
            editing: false,
            closed: None,
        }),
        Condvar::new(),
    ));
    // Notifications go through their own thread: the external printer can
    // block until the next readline(), and the socket must be read meanwhile.
    let (notes, notes_rx) = mpsc::channel::<String>();
    match editor.create_external_printer() {
        Ok(mut printer) => {
            thread::spawn(move || {
                for note in notes_rx {
                    if printer.print(note).is_err() {
                        break;
                    }
                }
            });
        }
        // No raw-mode terminal (e.g. TERM=dumb): print them as they come.
        Err(_) => {
            thread::spawn(move || {
                for note in notes_rx {
                    let mut stdout = io::stdout().lock();
                    let _ = stdout.write_all(note.as_bytes()).and_then(|()| stdout.flush());
                }
            });
        }
    }
    let input = connection.stream.try_clone().context("cannot clone the socket")?;
    input.set_read_timeout(None)?;
    {
        let (shared, notes) = (shared.clone(), notes.clone());
        thread::spawn(move || read_socket(input, &shared, &notes, saved_terminal));
    }

    let prompt = format!("vde[{}]: ", args.socket.display());
    loop {
        {
            let mut state = lock(&shared);
            if let Some(why) = &state.closed {
                eprintln!("vsterm: {why}");
                return Ok(ExitCode::from(EXIT_CONNECTION));
            }
            state.editing = true;
        }
        let line = editor.readline(&prompt);
        lock(&shared).editing = false;
        let line = match line {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => {
                eprintln!("vsterm: end of input, closing the session");
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => return Err(e).context("reading the terminal"),
        };
        if line.is_empty() {
            continue;
        }
        if editor.add_history_entry(line.as_str()).unwrap_or(false)
            && let Some(path) = &history
        {
            // Appended at once: a session can end by a forced exit.
            let _ = editor.append_history(path);
        }
        if line.len() > MAX_COMMAND {
            eprintln!("vsterm: not sent, longer than {MAX_COMMAND} bytes");
            continue;
        }
        lock(&shared).exchange = Exchange::Waiting;
        if connection.send(line.as_bytes()).is_err() {
            eprintln!("vsterm: the switch closed the connection");
            return Ok(ExitCode::from(EXIT_CONNECTION));
        }
        let reply = wait_reply(&shared, timeout)?;
        print_reply(&mut io::stdout(), &reply.text, true)?;
        if reply.closed {
            if status(&reply.text) == Status::EndOfSession {
                return Ok(ExitCode::SUCCESS);
            }
            let why = lock(&shared).closed.take().unwrap_or_default();
            eprintln!("vsterm: {why}");
            return Ok(ExitCode::from(EXIT_CONNECTION));
        }
        // Notifications that followed the prompt were held back so that they
        // print after the reply, not amid it.
        let mut state = lock(&shared);
        state.exchange = Exchange::Idle;
        forward_notes(&mut state.inbox, &notes);
    }
}

fn wait_reply(shared: &SharedState, timeout: Duration) -> Result<Reply> {
    let deadline = Instant::now() + timeout;
    let mut state = lock(shared);
    loop {
        match std::mem::replace(&mut state.exchange, Exchange::Printing) {
            Exchange::Replied(reply) => return Ok(reply),
            other => state.exchange = other,
        }
        if let Some(why) = &state.closed {
            return Err(anyhow!("{why}"));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no reply from the switch within {} s", timeout.as_secs());
        }
        state = shared.1.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0;
    }
}

/// Sends the complete lines waiting in `inbox` to the notification printer.
fn forward_notes(inbox: &mut Inbox, notes: &mpsc::Sender<String>) {
    while let Some(line) = inbox.take_line() {
        let _ = notes.send(for_terminal(&line));
    }
}

/// The socket reader thread: completes the outstanding reply, forwards
/// notifications between commands, and reports the end of the session.
fn read_socket(mut input: UnixStream, shared: &SharedState, notes: &mpsc::Sender<String>, terminal: Option<Termios>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = input.read(&mut buf);
        let mut state = lock(shared);
        let closed = match read {
            Ok(0) => Some("the switch closed the connection".to_string()),
            Ok(n) => state.inbox.push(&buf[..n]).err().map(|e| e.to_string()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => Some(format!("reading from the switch: {e}")),
        };
        if let Exchange::Waiting = state.exchange
            && let Some(text) = state.inbox.take_reply()
        {
            state.exchange = Exchange::Replied(Reply { text, closed: false });
        }
        if let Exchange::Idle = state.exchange {
            forward_notes(&mut state.inbox, notes);
        }
        let Some(why) = closed else {
            shared.1.notify_all();
            continue;
        };
        match state.exchange {
            Exchange::Waiting => {
                let text = state.inbox.take_all();
                state.exchange = Exchange::Replied(Reply { text, closed: true });
            }
            // An unterminated last line is still worth showing.
            Exchange::Idle if !state.editing && !state.inbox.buf.is_empty() => {
                let _ = notes.send(for_terminal(&state.inbox.take_all()) + "\n");
            }
            _ => {}
        }
        if state.editing {
            // readline() cannot be interrupted: restore the terminal and
            // leave from here, after what the switch sent last.
            let rest = for_terminal(&state.inbox.take_all());
            // Let the printer thread show notifications already queued.
            thread::sleep(Duration::from_millis(50));
            if let Some(saved) = &terminal {
                let _ = tcsetattr(io::stdin(), SetArg::TCSADRAIN, saved);
            }
            // Off the input line, then whatever the switch sent last.
            let mut text = format!("\n{rest}");
            if !text.ends_with('\n') {
                text.push('\n');
            }
            let _ = io::stdout().write_all(text.as_bytes());
            eprintln!("vsterm: {why}");
            std::process::exit(EXIT_CONNECTION.into());
        }
        state.closed = Some(why);
        shared.1.notify_all();
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_cuts_replies_at_prompts_split_across_reads() {
        let mut inbox = Inbox::default();
        inbox.push(b"VDE switch V.2.3.2\n\nvd").unwrap();
        assert_eq!(inbox.take_reply(), None);
        inbox.push(b"e$ 1000 Success\n\nvde$ 3021 port/+ 07\n").unwrap();
        assert_eq!(inbox.take_reply().as_deref(), Some(&b"VDE switch V.2.3.2\n"[..]));
        assert_eq!(inbox.take_reply().as_deref(), Some(&b"1000 Success\n"[..]));
        assert_eq!(inbox.take_reply(), None);
        assert_eq!(inbox.take_line().as_deref(), Some(&b"3021 port/+ 07\n"[..]));
        assert_eq!(inbox.take_line(), None);
    }

    #[test]
    fn inbox_refuses_endless_replies() {
        let mut inbox = Inbox::default();
        let chunk = vec![b'x'; 1 << 20];
        let pushed = (0..=MAX_REPLY >> 20).map(|_| inbox.push(&chunk)).take_while(Result::is_ok).count();
        assert_eq!(pushed, MAX_REPLY >> 20);
    }

    #[test]
    fn status_is_the_last_line_that_is_not_a_notification() {
        assert_eq!(status(b"0000 DATA END WITH '.'\n.\n1000 Success\n"), Status::Success);
        assert_eq!(status(b"3021 port/+ 29\n1000 Success\n3022 port/- 29\n"), Status::Success);
        assert_eq!(status(b"0000 DATA END WITH '.'\n.\n1022 Invalid argument\n"), Status::Failed(1022));
        assert_eq!(status(b"9999 END OF SESSION"), Status::EndOfSession);
        assert_eq!(status(b""), Status::None);
        assert_eq!(status(b"3031 port/ep/+ Port 01 FD  7\n"), Status::None);
        assert_eq!(status(b"\xff\xfe garbage 1000\n"), Status::None);
    }

    #[test]
    fn parts_split_body_status_and_notifications() {
        let reply = b"3021 port/+ 29\n0000 DATA END WITH '.'\nNumports=32\n3022 port/- 29\n.\n1000 Success\n";
        let p = parts(reply);
        assert_eq!(p.body, b"Numports=32\n3022 port/- 29\n");
        assert_eq!(p.status.as_deref(), Some(&b"1000 Success"[..]));
        assert_eq!(p.notes, b"3021 port/+ 29\n");
        let p = parts(b"1017 File exists\n");
        assert!(p.body.is_empty());
        assert_eq!(p.status.as_deref(), Some(&b"1017 File exists"[..]));
    }

    #[test]
    fn completion_list_drops_menu_headers() {
        let help = b"0000 DATA END WITH '.'\nCOMMAND PATH       SYNTAX          HELP\n\
            ------------       --------------  ------------\n\
            ds                 ============    DATA SOCKET MENU\n\
            ds/showinfo                        show ds info\n\
            help               [arg]           Help\n\
            port               ============    PORT STATUS MENU\n\
            port/print         [N]             print\n\
            sub                                a menu without the header marker\n\
            sub/cmd                            x\n\
            .\n1000 Success\n";
        assert_eq!(command_paths(help), ["ds/showinfo", "help", "port/print", "sub/cmd"]);
        assert!(command_paths(b"1038 Function not implemented\n").is_empty());
    }

    #[test]
    fn control_characters_are_escaped_for_terminals() {
        assert_eq!(for_terminal(b"a\tb\n\x1b[2J\xff"), "a\tb\n\\u{1b}[2J\u{fffd}");
    }
}
