//! The consoles without a management socket: rc files (`-f`), scripts run
//! with `load`, and the switch's own standard input.
//!
//! Compared with vde_switch where it behaves sanely. Where it wedges
//! (`load` of `/dev/zero` or of a FIFO without writer) only vswitch is run,
//! and it must refuse quickly and stay responsive. vswitch also reports
//! each failing rc-file command in its log as `FILE:LINE: command: error`,
//! which vde_switch does not do.

mod common;
#[path = "fixtures/console/support.rs"]
mod support;

use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::pty::openpty;
use nix::sys::stat::Mode;
use nix::unistd::mkfifo;

use common::{Switch, Target};
use support::{Console, Foreground, REPLY_TIMEOUT, SWITCH_MAC, assert_same_text, mask};

/// An rc file that configures something visible, produces output, fails
/// in several ways and ends without a newline.
const RC: &str = "# start-up configuration\nvlan/create 10\nport/create 5\n\nport/setvlan 5 10\nhelp\n\
                  vlan/create 0\ndebug/add port\nload /etc/hostname\nbogus arg\n  port/setuser 5 root";

fn rc_file_applied(target: Target) {
    let rc_dir = tempfile::tempdir().expect("temporary directory");
    let rc = rc_dir.path().join("switch.rc");
    fs::write(&rc, RC).expect("write rc file");
    let sw = Switch::start(target, &["-f", rc.to_str().expect("path")]);
    let mut console = Console::open(&sw.mgmt_path());
    assert_eq!(
        console.cmd("vlan/allprint 10"),
        "0000 DATA END WITH '.'\nVLAN 0010\n -- Port 0005 tagged=0 active=0 status=Learning\n.\n1000 Success\n"
    );
    let port = console.cmd("port/allprint 5");
    assert!(port.contains(" Current User: NONE Access Control: (User: root - Group: NONE)\n"), "{port}");
    // `debug/add` failed there: this session's subscriptions are its own.
    assert_eq!(console.cmd("port/create 6"), "1000 Success\n");
}

fn missing_rc_file_ignored(target: Target) {
    let sw = Switch::start(target, &["-f", "/nonexistent/switch.rc"]);
    assert_eq!(Console::open(&sw.mgmt_path()).cmd("vlan/print 0").lines().last(), Some("1000 Success"));
}

test_both_targets!(rc_file_applied, missing_rc_file_ignored);

/// vswitch only: the log names file, line, command and error.
#[test]
fn rc_file_failures_are_logged_with_line_numbers() {
    let rc_dir = tempfile::tempdir().expect("temporary directory");
    let rc = rc_dir.path().join("switch.rc");
    fs::write(&rc, RC).expect("write rc file");
    let sw = Foreground::start(env!("CARGO_BIN_EXE_vswitch"), &["-f", rc.to_str().expect("path")]);
    // Answered only once the event loop runs, so after the rc file.
    assert_eq!(sw.console().cmd("vlan/print 10").lines().last(), Some("1000 Success"));
    let rc = rc.display();
    let logged: Vec<String> = sw
        .stderr()
        .lines()
        .filter_map(|l| l.split_once(": ").map(|(_, message)| message.to_owned()))
        .filter(|message| message.starts_with(&rc.to_string()))
        .collect();
    assert_eq!(
        logged,
        [
            format!("{rc}:7: vlan/create 0: Invalid argument"),
            format!("{rc}:8: debug/add port: Bad file descriptor"),
            format!("{rc}:9: load /etc/hostname: Bad file descriptor"),
            format!("{rc}:10: bogus arg: Function not implemented"),
        ],
        "stderr: {:?}",
        sw.stderr()
    );
    assert_eq!(sw.stdout(), "", "rc-file output is discarded");
}

/// vswitch only: an rc file that is a FIFO or a directory is reported and
/// skipped; the switch starts.
#[test]
fn unusable_rc_file_is_reported_and_skipped() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let fifo = dir.path().join("fifo.rc");
    mkfifo(&fifo, Mode::S_IRWXU).expect("mkfifo");
    for (rc, error) in [(fifo.as_path(), "Invalid argument"), (dir.path(), "Is a directory")] {
        let sw = Foreground::start(env!("CARGO_BIN_EXE_vswitch"), &["-f", rc.to_str().expect("path")]);
        assert_eq!(sw.console().cmd("vlan/print 0").lines().last(), Some("1000 Success"));
        let expected = format!("{}: {error}", rc.display());
        assert!(sw.stderr().contains(&expected), "{expected:?} not in {:?}", sw.stderr());
    }
}

/// Comments, blank and empty lines, a `\r`, NUL bytes, nesting, a missing
/// nested script and a last line without newline; `logout`/`shutdown` are
/// ignored inside scripts.
const SCRIPT: &str = "# comment line\nport/create 6\n\n \t \n\tport/allprint 6\n   # indented comment\nbogus command\n\
                      help port/sh\r\nlogout\nshutdown\nx\0y\n\0hidden\nload {DIR}/nested.rc\nport/showinfo";
const NESTED: &str = "vlan/create 7\nvlan/allprint 7\nload {DIR}/missing.rc\n";

fn load_transcript(target: Target) -> String {
    let sw = Switch::start(target, &["--macaddr", SWITCH_MAC]);
    let dir = sw.dir().display().to_string();
    fs::write(sw.dir().join("script.rc"), SCRIPT.replace("{DIR}", &dir)).expect("write script");
    fs::write(sw.dir().join("nested.rc"), NESTED.replace("{DIR}", &dir)).expect("write nested script");
    let mut console = Console::open(&sw.mgmt_path());
    let mut transcript = String::new();
    for line in ["debug/add port", "load {DIR}/script.rc", "load {DIR}/missing.rc", "load", "port/allprint"] {
        let line = line.replace("{DIR}", &dir);
        transcript.push_str(&format!("vde$ {line}\n{}", console.cmd(&line)));
    }
    mask(&transcript, Path::new(&dir))
}

#[test]
fn load_echo_matches_vde_switch() {
    let reference = load_transcript(Target::VdeSwitch);
    assert!(reference.contains("vde[<DIR>/script.rc]: \n\n1038 Function not implemented\n"), "{reference}");
    assert_same_text("vswitch's load transcript (vs vde_switch's)", &reference, &load_transcript(Target::Vswitch));
}

/// vswitch only (vde_switch blocks forever on the first two): each is
/// refused at once, and the switch keeps answering.
#[test]
fn load_refuses_devices_fifos_directories_and_huge_files() {
    let sw = Switch::start(Target::Vswitch, &[]);
    let fifo = sw.dir().join("fifo");
    mkfifo(&fifo, Mode::S_IRWXU).expect("mkfifo");
    let huge = sw.dir().join("huge.rc");
    let mut file = File::create(&huge).expect("create huge script");
    for _ in 0..(2 << 10) {
        file.write_all(&[b'#'; 1024]).expect("write huge script");
    }
    let mut console = Console::open(&sw.mgmt_path());
    for (path, expected) in [
        ("/dev/zero".into(), "1022 Invalid argument\n"),
        (fifo.display().to_string(), "1022 Invalid argument\n"),
        (sw.dir().display().to_string(), "1021 Is a directory\n"),
        (huge.display().to_string(), "1027 File too large\n"),
    ] {
        let started = Instant::now();
        assert_eq!(console.cmd(&format!("load {path}")), expected, "load {path}");
        assert!(started.elapsed() < Duration::from_secs(2), "load {path} took {:?}", started.elapsed());
        assert_eq!(console.cmd("port/showinfo").lines().last(), Some("1000 Success"));
    }
    sw.assert_alive();
}

/// The terminal side of a pseudo-terminal, read without blocking.
struct Terminal {
    master: File,
    seen: Vec<u8>,
}

impl Terminal {
    fn new(master: OwnedFd) -> Terminal {
        fcntl(&master, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).expect("non-blocking terminal");
        Terminal { master: File::from(master), seen: Vec::new() }
    }

    /// Reads for `wait`, or until the screen shows `prompts` prompts.
    fn read(&mut self, wait: Duration, prompts: usize) {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline && count(&self.seen, b"vde$ ") < prompts {
            let mut chunk = [0u8; 4096];
            match self.master.read(&mut chunk) {
                Ok(n) if n > 0 => self.seen.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() != ErrorKind::WouldBlock => return, // the switch is gone
                _ => thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    fn type_line(&mut self, line: &str) {
        self.master.write_all(format!("{line}\n").as_bytes()).expect("type on the terminal");
    }
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle).count()
}

/// What one run of the stdin console left behind.
struct StdinRun {
    /// What the terminal showed (input echo and prompts).
    screen: String,
    stdout: String,
    /// Log messages, without the `program: ` prefix.
    log: Vec<String>,
    status: Option<i32>,
}

/// Log messages from stderr, without the `program: ` prefix (the program
/// path differs between the switches).
fn log_messages(stderr: &str) -> Vec<String> {
    stderr.lines().map(|l| l.split_once(": ").map_or(l, |(_, message)| message).to_owned()).collect()
}

/// Runs commands on the switch's stdin (a terminal).
fn stdin_console(target: Target) -> StdinRun {
    let pty = openpty(None, None).expect("openpty");
    let mut sw = Foreground::start_with_stdin(target.program(), &["--macaddr", SWITCH_MAC], Stdio::from(pty.slave));
    let mut terminal = Terminal::new(pty.master);
    terminal.read(Duration::from_millis(200), 1);
    assert_eq!(terminal.seen, b"", "{target:?}: no banner and no prompt before the first command");
    let mut prompts = 0;
    let lines = [
        "port/showinfo",
        "vlan/create 5",
        "bogus",
        "",
        "logout",
        "vlan/print 5",
        "debug/add port",
        "port/create 3",
        "hash/setsize 100",
    ];
    for line in lines {
        terminal.type_line(line);
        if line == "logout" {
            // Nothing is printed, not even a prompt; the console stays.
            terminal.read(Duration::from_millis(300), prompts + 1);
        } else {
            prompts += 1;
            terminal.read(REPLY_TIMEOUT, prompts);
        }
    }
    sw.wait_stdout("1000 Success\n", 6);
    terminal.type_line("shutdown");
    let status = sw.wait_exit();
    terminal.read(Duration::from_millis(100), usize::MAX);
    StdinRun {
        screen: String::from_utf8_lossy(&terminal.seen).into_owned(),
        stdout: sw.stdout(),
        log: log_messages(&sw.stderr()),
        status,
    }
}

#[test]
fn stdin_console_matches_vde_switch() {
    let reference = stdin_console(Target::VdeSwitch);
    // What the reference does, spelled out (spec §8.1/§8.2): replies on
    // stdout, the prompt on descriptor 0 (the terminal), nothing after
    // `logout`, events on stdout, no prompt after `shutdown`, and the
    // rounding of `hash/setsize` in the log.
    let screen = &reference.screen;
    assert_eq!(reference.status, Some(0));
    assert_eq!(screen.matches("\r\nvde$ ").count(), 8, "{screen:?}");
    assert!(screen.contains("logout\r\nvlan/print 5\r\n"), "no prompt after logout: {screen:?}");
    assert!(screen.ends_with("shutdown\r\n"), "{screen:?}");
    assert!(reference.stdout.starts_with("0000 DATA END WITH '.'\nNumports=32\n"), "{:?}", reference.stdout);
    assert!(reference.stdout.ends_with("3021 port/+ 03\n1000 Success\n1000 Success\n"), "{:?}", reference.stdout);
    assert_eq!(reference.log, ["Hash size must be a power of 2. 100 rounded to 128", "Shutdown from mgmt command"]);
    let ours = stdin_console(Target::Vswitch);
    assert_same_text("the terminal", screen, &ours.screen);
    assert_same_text("stdout", &reference.stdout, &ours.stdout);
    assert_eq!(ours.log, reference.log);
    assert_eq!(ours.status, reference.status);
}

fn stdin_eof_stops_the_switch(target: Target) {
    let mut sw = Foreground::start(target.program(), &[]);
    sw.close_stdin();
    assert_eq!(sw.wait_exit(), Some(0));
    assert_eq!(log_messages(&sw.stderr()), ["EOF on stdin, cleaning up and exiting"]);
}

test_both_targets!(stdin_eof_stops_the_switch);
