//! Console clients against both switches. `vsterm`: script mode (`-c`
//! and commands on stdin, with their exit statuses) and an interactive
//! session driven through tmux (prompt, completion, a reply, a debug event
//! printed above the input line, `logout`). vde2's own `vdeterm` and
//! `unixterm`, in tmux too: what a vde_switch user sees must not change.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

const VSTERM: &str = env!("CARGO_BIN_EXE_vsterm");
/// Longest a vsterm run or a screen change may take, busy machine included.
const RUN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `vsterm ARGS` with `stdin` piped in and returns its output, killing
/// it (by process group) if it has not finished within `RUN_TIMEOUT`.
fn vsterm(args: &[&str], stdin: &str) -> Output {
    // A reply timeout well inside RUN_TIMEOUT, unless the test sets one.
    let timeout: &[&str] = if args.contains(&"--timeout") { &[] } else { &["--timeout", "5"] };
    let mut child = Command::new(VSTERM)
        .args(timeout)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("run vsterm");
    let mut input = child.stdin.take().expect("piped stdin");
    let stdin = stdin.to_owned();
    // Written from a thread: vsterm may stop reading its stdin early.
    let writer = thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let stdout = collect(child.stdout.take().expect("piped stdout"));
    let stderr = collect(child.stderr.take().expect("piped stderr"));
    let status = wait_or_kill(&mut child, RUN_TIMEOUT).unwrap_or_else(|| panic!("vsterm {args:?} hung"));
    let _ = writer.join();
    Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

fn collect(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// Waits for `child`; after `timeout`, kills its process group and returns
/// `None`.
fn wait_or_kill(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn mgmt_arg(sw: &Switch) -> String {
    sw.mgmt_path().to_str().expect("UTF-8 temporary path").to_owned()
}

fn c_mode(target: Target) {
    let sw = Switch::start(target, &[]);
    let sock = mgmt_arg(&sw);

    // Scripts get the bodies only, as from vdecmd.
    let out = vsterm(&[&sock, "-c", "help", "-c", "port/showinfo"], "");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stdout {stdout:?} stderr {:?}", text(&out.stderr));
    assert!(stdout.starts_with("COMMAND PATH       SYNTAX"), "{stdout:?}");
    assert!(stdout.contains("port/print         [N]             print the port/endpoint table\n"), "{stdout:?}");
    assert!(stdout.ends_with("\nNumports=32\nHUB=false\ncounters=true\n"), "{stdout:?}");
    for framing in ["0000 DATA", "\n.\n", "1000 Success", "vde$"] {
        assert!(!stdout.contains(framing), "{framing:?} in {stdout:?}");
    }
    assert_eq!(text(&out.stderr), "");

    // --raw keeps the protocol lines.
    let out = vsterm(&[&sock, "--raw", "-c", "help", "-c", "port/showinfo"], "");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stdout {stdout:?} stderr {:?}", text(&out.stderr));
    assert!(stdout.starts_with("0000 DATA END WITH '.'\nCOMMAND PATH       SYNTAX"), "{stdout:?}");
    assert!(stdout.ends_with(
        ".\n1000 Success\n0000 DATA END WITH '.'\nNumports=32\nHUB=false\ncounters=true\n.\n1000 Success\n"
    ));
    assert!(!stdout.contains("vde$"), "the prompt is not part of a reply: {stdout:?}");

    // Every command runs; the error lines go to stderr and the first
    // failure's code sets the exit status (1038: ENOSYS, 38).
    let args: [&str; 7] = [&sock, "-c", "nosuchcommand", "-c", "port/print 40", "-c", "port/showinfo"];
    let out = vsterm(&args, "");
    assert_eq!(out.status.code(), Some(38), "{:?}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Numports=32\nHUB=false\ncounters=true\n");
    assert_eq!(text(&out.stderr), "1038 Function not implemented\n1022 Invalid argument\n");
    let out = vsterm(&[&[&sock, "--raw"][..], &args[1..]].concat(), "");
    assert_eq!(out.status.code(), Some(38));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("1038 Function not implemented\n0000 DATA END WITH '.'\n.\n1022 Invalid argument\n"));
    assert!(stdout.ends_with("counters=true\n.\n1000 Success\n"), "{stdout:?}");

    // logout ends the session: fine as the last command, an error before others.
    let out = vsterm(&[&sock, "-c", "logout"], "");
    assert_eq!((out.status.code(), text(&out.stdout).as_str()), (Some(0), ""));
    let out = vsterm(&[&sock, "--raw", "-c", "logout"], "");
    assert_eq!((out.status.code(), text(&out.stdout).as_str()), (Some(0), "9999 END OF SESSION\n"));
    let out = vsterm(&[&sock, "-c", "logout", "-c", "port/showinfo"], "");
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out.stderr).contains("port/showinfo"), "{:?}", text(&out.stderr));
    sw.assert_alive();
}

fn stdin_script(target: Target) {
    let sw = Switch::start(target, &[]);
    let sock = mgmt_arg(&sw);

    let out = vsterm(&[&sock], "port/create 7\n# a comment\n\nport/allprint 7\n");
    assert_eq!(out.status.code(), Some(0), "stderr {:?}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "Port 0007 untagged_vlan=0000 INACTIVE - NOT Unnamed Allocatable\n \
         Current User: NONE Access Control: (User: NONE - Group: NONE)\n \
         IN:  pkts          0          bytes                    0\n \
         OUT: pkts          0          bytes                    0\n"
    );

    let out = vsterm(&[&sock], "port/create 7\nport/remove 7\n");
    assert_eq!(out.status.code(), Some(17));
    assert_eq!((text(&out.stdout).as_str(), text(&out.stderr).as_str()), ("", "1017 File exists\n"));
    let out = vsterm(&[&sock, "--raw"], "port/create 8\nport/create 8\nport/remove 8\n");
    assert_eq!(out.status.code(), Some(17));
    assert_eq!(text(&out.stdout), "1000 Success\n1017 File exists\n1000 Success\n");
}

test_both_targets!(c_mode, stdin_script);

#[test]
fn unreachable_switch_is_one_line_and_status_255() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("nothing.mgmt");
    let out = vsterm(&[missing.to_str().unwrap(), "-c", "help"], "");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255));
    assert!(stderr.starts_with("vsterm: cannot connect to ") && stderr.lines().count() == 1, "{stderr:?}");

    // A socket that never sends a prompt (here a switch's control socket).
    let sw = Switch::start(Target::Vswitch, &[]);
    let ctl = sw.ctl_dir().join("ctl");
    let out = vsterm(&["--timeout", "1", ctl.to_str().unwrap(), "-c", "help"], "");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255));
    assert!(stderr.contains("no prompt") && stderr.lines().count() == 1, "{stderr:?}");
}

/// Serves one connection on a socket in `dir` with `script`, standing in for
/// a broken or hostile switch. Accepting, reading and writing are bounded, so
/// a vsterm that never connects or stops reading cannot hang the test.
fn fake_switch(dir: &Path, script: fn(UnixStream)) -> (String, thread::JoinHandle<()>) {
    let path = dir.join("fake.mgmt");
    let listener = UnixListener::bind(&path).expect("bind fake switch");
    listener.set_nonblocking(true).expect("non-blocking listener");
    let server = thread::spawn(move || {
        let deadline = Instant::now() + RUN_TIMEOUT;
        let stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Err(e) => panic!("vsterm did not connect: {e}"),
            }
        };
        stream.set_nonblocking(false).expect("blocking stream");
        stream.set_read_timeout(Some(RUN_TIMEOUT)).expect("read timeout");
        stream.set_write_timeout(Some(RUN_TIMEOUT)).expect("write timeout");
        script(stream);
    });
    (path.to_str().unwrap().to_owned(), server)
}

/// Reads one command (vsterm sends each in one write).
fn read_command(stream: &mut UnixStream) {
    let _ = stream.read(&mut [0u8; 256]);
}

#[test]
fn hostile_switch_replies_are_survived() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let run = |name: &str, script: fn(UnixStream)| {
        let case = dir.path().join(name);
        fs::create_dir(&case).unwrap();
        let (sock, server) = fake_switch(&case, script);
        let out = vsterm(&[&sock, "--raw", "-c", "port/print"], "");
        server.join().unwrap();
        out
    };

    // Non-UTF-8 and a 14 MiB reply are passed through byte for byte.
    let out = run("big", |mut s| {
        let _ = s.write_all(b"banner\n\nvde$ ");
        read_command(&mut s);
        let _ = s.write_all(&b"\xff\xfe\x1b[2J\n".repeat(2 << 20));
        let _ = s.write_all(b"1000 Success\n\nvde$ ");
    });
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(out.stdout.len(), 7 * (2 << 20) + b"1000 Success\n".len());
    assert!(out.stdout.starts_with(b"\xff\xfe\x1b[2J\n"));

    // EOF in the middle of a reply: what came is shown, then one line.
    let out = run("eof", |mut s| {
        let _ = s.write_all(b"banner\n\nvde$ ");
        read_command(&mut s);
        let _ = s.write_all(b"0000 DATA END WITH '.'\nPort");
    });
    assert_eq!((out.status.code(), text(&out.stdout).as_str()), (Some(255), "0000 DATA END WITH '.'\nPort\n"));
    assert_eq!(text(&out.stderr), "vsterm: the switch closed the connection\n");

    // EOF before the prompt, and a prompt that never comes.
    let out = run("nobanner", |mut s| {
        let _ = s.write_all(b"VDE switch");
    });
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out.stderr).contains("closed the connection before its prompt"), "{}", text(&out.stderr));
    let out = run("endless", |mut s| {
        let _ = s.write_all(b"banner\n\nvde$ ");
        read_command(&mut s);
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..100 {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out.stderr).contains("without a prompt"), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("panicked"));
}

/// A private tmux server (socket in a temporary directory) with one pane
/// running vsterm; the server and the pane are killed on drop.
struct Tmux {
    socket: PathBuf,
    server: Option<Pid>,
}

impl Tmux {
    fn start(dir: &Path, shell_command: &str) -> Tmux {
        let mut tmux = Tmux { socket: dir.join("tmux"), server: None };
        tmux.run(&["-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", "150", "-y", "50", shell_command]);
        tmux.server = tmux.run(&["display-message", "-p", "-t", "t", "#{pid}"]).trim().parse().ok().map(Pid::from_raw);
        tmux
    }

    /// Runs one tmux client command, bounded by coreutils `timeout`.
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("timeout")
            .args(["5", "tmux", "-S"])
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tmux");
        assert!(out.status.success(), "tmux {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// The pane's text, trailing spaces kept.
    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-N", "-t", "t"])
    }

    /// Waits until the screen satisfies `probe`; returns that screen.
    fn wait_for(&self, what: &str, probe: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + RUN_TIMEOUT;
        loop {
            let screen = self.screen();
            if probe(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; screen:\n{screen}");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("timeout")
            .args(["5", "tmux", "-S"])
            .arg(&self.socket)
            .arg("kill-server")
            .stderr(Stdio::null())
            .status();
        if let Some(pid) = self.server {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
}

/// The lines of `screen` without trailing blanks, empty lines dropped.
fn lines(screen: &str) -> Vec<&str> {
    screen.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect()
}

fn interactive(target: Target) {
    let sw = Switch::start(target, &[]);
    let sock = mgmt_arg(&sw);
    let home = sw.dir().join("home");
    // vswitch's run keeps history in a fresh HOME; vde_switch's run checks
    // that a HOME that does not exist is tolerated.
    if target == Target::Vswitch {
        fs::create_dir(&home).expect("create HOME");
    }
    let prompt = format!("vde[{sock}]: ");
    let tmux = Tmux::start(
        sw.dir(),
        &format!("env HOME='{}' '{VSTERM}' --timeout 5 '{sock}'; echo VSTERM-EXIT=$?; sleep 60", home.display()),
    );

    let screen = tmux.wait_for("the prompt", |s| s.contains(&prompt));
    assert!(screen.starts_with("VDE switch V.2.3.2\n(C) Virtual Square Team"), "banner missing:\n{screen}");

    tmux.keys(&["port/pr", "Tab"]);
    tmux.wait_for("port/print completed", |s| s.contains(&format!("{prompt}port/print \n")));
    tmux.keys(&["Enter"]);
    tmux.wait_for("the reply", |s| s.contains("port/print \n0000 DATA END WITH '.'\n.\n1000 Success\n"));

    // vswitch's extensions are not in `help` but complete all the same.
    if target == Target::Vswitch {
        tmux.keys(&["capture/pr", "Tab", "Enter"]);
        tmux.wait_for("capture/print's reply", |s| {
            s.contains("capture/print \n0000 DATA END WITH '.'\n.\n1000 Success\n")
        });
        tmux.keys(&["vxlan/pr", "Tab", "Enter"]);
        tmux.wait_for("vxlan/print's reply", |s| s.contains("vxlan/print \n0000 DATA END WITH '.'\n.\n1000 Success\n"));
    }

    tmux.keys(&["debug/add port", "Enter"]);
    tmux.wait_for("debug/add's reply", |s| s.contains("debug/add port\n1000 Success\n"));

    // Half a command typed when the event arrives: the event goes above it.
    tmux.keys(&["hash/sh"]);
    tmux.wait_for("the typed text", |s| s.contains(&format!("{prompt}hash/sh")));
    let mut plug = ProcessGuard::spawn(
        Command::new("vde_plug")
            .arg(sw.ctl_dir())
            .arg("null://")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    // Polled as one condition: rustyline repaints the input line just after
    // printing the event.
    let input_line = format!("{prompt}hash/sh");
    let screen = tmux.wait_for("the new endpoint event above the input line", |s| {
        s.contains("port/descr Port 01") && lines(s).last() == Some(&input_line.as_str())
    });
    assert!(lines(&screen).iter().any(|l| l.starts_with("3031 port/ep/+ Port 01 FD ")), "{screen}");
    plug.kill();
    tmux.wait_for("the closed endpoint event", |s| s.contains("3032 port/ep/- Port 01 FD "));

    // The typed text is still there and completes.
    tmux.keys(&["Tab", "Enter"]);
    tmux.wait_for("hash/showinfo's reply", |s| s.contains("Hash size 128\n"));

    tmux.keys(&["logout", "Enter"]);
    let screen = tmux.wait_for("vsterm to exit", |s| s.contains("VSTERM-EXIT="));
    assert!(screen.contains("logout\n9999 END OF SESSION\nVSTERM-EXIT=0\n"), "{screen}");

    if target == Target::Vswitch {
        let history = fs::read_to_string(home.join(".vsterm_history")).expect("history file");
        assert!(history.ends_with("debug/add port\nhash/showinfo \nlogout\n"), "{history:?}");
    }
    sw.assert_alive();
}

test_both_targets!(interactive);

#[test]
fn interactive_session_ends_cleanly_when_the_switch_goes_away() {
    let sw = Switch::start(Target::Vswitch, &[]);
    let sock = mgmt_arg(&sw);
    let prompt = format!("vde[{sock}]: ");
    // After vsterm, show whether the terminal is back in canonical echo mode.
    let tmux = Tmux::start(
        sw.dir(),
        &format!(
            "'{VSTERM}' --timeout 5 '{sock}'; echo VSTERM-EXIT=$?; \
             stty -a | tr ' ' '\\n' | grep -x -e icanon -e echo | tr '\\n' ' '; echo; sleep 60"
        ),
    );
    tmux.wait_for("the prompt", |s| s.contains(&prompt));
    tmux.keys(&["port/sh"]);
    tmux.wait_for("the typed text", |s| s.contains(&format!("{prompt}port/sh")));
    kill(sw.pid(), Signal::SIGTERM).expect("stop the switch");
    let screen = tmux.wait_for("vsterm to exit", |s| s.contains("VSTERM-EXIT="));
    assert!(
        screen.contains(&format!("{prompt}port/sh\nvsterm: the switch closed the connection\nVSTERM-EXIT=255\n")),
        "{screen}"
    );
    tmux.wait_for("the terminal modes", |s| s.contains("icanon echo"));
}

/// A screen probe: `command` typed at `prompt` is answered by `answer` on
/// the next line. vdeterm redraws its input line, leaving blank lines and
/// trailing blanks, so only non-empty lines are compared.
fn answered(prompt: &str, command: &str, answer: &'static str) -> impl Fn(&str) -> bool {
    let command = format!("{prompt}{command}");
    move |s| lines(s).windows(2).any(|w| w[0] == command && w[1] == answer)
}

/// vde2's `vdeterm`: it learns its completions from `help`, shows statuses
/// as text and events as `** DBG MSG:` lines, and needs the prompt framing
/// exactly right to show anything at all.
fn vdeterm(target: Target) {
    let sw = Switch::start(target, &[]);
    let sock = mgmt_arg(&sw);
    let prompt = format!("vde[{sock}]: ");
    let tmux = Tmux::start(sw.dir(), &format!("vdeterm '{sock}'; echo VDETERM-EXIT=$?; sleep 60"));
    let screen = tmux.wait_for("the prompt", |s| s.contains(&prompt));
    assert!(screen.starts_with("VDE switch V.2.3.2\n(C) Virtual Square Team"), "banner missing:\n{screen}");

    tmux.keys(&["port/pr", "Tab"]);
    tmux.wait_for("port/print completed", |s| s.contains(&format!("{prompt}port/print ")));
    tmux.keys(&["Enter"]);
    tmux.wait_for("port/print's status", answered(&prompt, "port/print", "Success"));
    tmux.keys(&["vlan/create 4094", "Enter"]);
    tmux.wait_for("the error text", answered(&prompt, "vlan/create 4094", "Invalid argument"));
    tmux.keys(&["debug/add port", "Enter"]);
    tmux.wait_for("debug/add's status", answered(&prompt, "debug/add port", "Success"));

    let mut plug = ProcessGuard::spawn(
        Command::new("vde_plug")
            .args(["-D", "vdetermtest"])
            .arg(sw.ctl_dir())
            .arg("null://")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let events = |s: &str| {
        let l = lines(s);
        let at = |prefix: &str| l.iter().position(|line| line.starts_with(prefix));
        match (at("** DBG MSG: port/+ 01"), at("** DBG MSG: port/ep/+ Port 01 FD "), at("** DBG MSG: port/descr")) {
            (Some(a), Some(b), Some(c)) => a < b && b < c && l[c].contains(" -> \"vdetermtest user=root pid="),
            _ => false,
        }
    };
    tmux.wait_for("the events", events);
    plug.kill();
    tmux.wait_for("the closing events", |s| lines(s).contains(&"** DBG MSG: port/- 01"));

    tmux.keys(&["logout", "Enter"]);
    tmux.wait_for("vdeterm to exit", |s| lines(s).contains(&"VDETERM-EXIT=0"));
    sw.assert_alive();
}

test_both_targets!(vdeterm);

/// vde2's `unixterm` relays raw bytes: the switch's own framing reaches the
/// screen, and `logout` ends it.
fn unixterm(target: Target) {
    let sw = Switch::start(target, &[]);
    let sock = mgmt_arg(&sw);
    let tmux = Tmux::start(sw.dir(), &format!("unixterm '{sock}'; echo UNIXTERM-EXIT=$?; sleep 60"));
    tmux.wait_for("the prompt", |s| s.contains("GPLv2\n\nvde$"));
    tmux.keys(&["port/showinfo", "Enter"]);
    tmux.wait_for("the reply", |s| {
        s.contains("0000 DATA END WITH '.'\nNumports=32\nHUB=false\ncounters=true\n.\n1000 Success\n")
    });
    tmux.keys(&["logout", "Enter"]);
    // unixterm may exit on the hang-up before printing `9999 END OF SESSION`.
    tmux.wait_for("unixterm to exit", |s| lines(s).iter().any(|l| l.ends_with("UNIXTERM-EXIT=0")));
    sw.assert_alive();
}

test_both_targets!(unixterm);
