//! Start-up as launchers see it: the control directory, its `ctl` socket,
//! the pid file and the management socket appear in an order a script can
//! rely on; a failed start leaves nothing behind; `--nostdin` (upstream
//! vde-2) runs without a stdin console.

mod common;

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Instant;

use common::station::exchange;
use common::{Mgmt, ProcessGuard, STARTUP_TIMEOUT, Target, VdePlug, read_pid, station_mac, stop, wait_until};

/// Starts per switch in the race test.
const STARTS: usize = 100;

/// Spins (no sleep: the point is to look the instant something appears)
/// until `path` exists; false after the start-up timeout.
fn spin_until_exists(path: &Path) -> bool {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while fs::symlink_metadata(path).is_err() {
        if Instant::now() >= deadline {
            return false;
        }
        thread::yield_now();
    }
    true
}

#[derive(Default, Debug)]
struct Tally {
    /// Connecting to `ctl` the instant the directory (or, in an existing
    /// directory, `ctl`) appeared.
    ctl_ok: usize,
    ctl_tries: usize,
    /// Connecting to `ctl` and the management socket the instant the pid
    /// file appeared.
    pid_ok: usize,
    pid_tries: usize,
    /// Connecting to the management socket the instant it appeared.
    mgmt_ok: usize,
}

/// One start of `target` watched by a client that connects as soon as it
/// sees the directory (`existing`: the directory is there before, and the
/// client watches `ctl` itself), then as soon as it sees the pid file.
fn watched_start(target: Target, existing: bool, tally: &mut Tally) {
    let dir = tempfile::Builder::new().prefix("vswitch-race-").tempdir().expect("temporary directory");
    let sw = dir.path().join("sw");
    let ctl = sw.join("ctl");
    let mgmt = dir.path().join("sw.mgmt");
    let pidfile = dir.path().join("sw.pid");
    if existing {
        fs::create_dir(&sw).expect("create the control directory beforehand");
    }
    let watched = if existing { ctl.clone() } else { sw.clone() };
    let watcher = {
        let (ctl, mgmt, pidfile) = (ctl.clone(), mgmt.clone(), pidfile.clone());
        thread::spawn(move || {
            let dir_seen = spin_until_exists(&watched);
            let ctl_ok = dir_seen && UnixStream::connect(&ctl).is_ok();
            let pid_seen = spin_until_exists(&pidfile);
            let pid_ok = pid_seen && UnixStream::connect(&ctl).is_ok() && UnixStream::connect(&mgmt).is_ok();
            (dir_seen, ctl_ok, pid_seen, pid_ok)
        })
    };
    let mgmt_watcher = {
        let mgmt = mgmt.clone();
        thread::spawn(move || spin_until_exists(&mgmt) && UnixStream::connect(&mgmt).is_ok())
    };
    let status = Command::new(target.program())
        .arg("-s")
        .arg(&sw)
        .arg("-M")
        .arg(&mgmt)
        .arg("-p")
        .arg(&pidfile)
        .arg("-d")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run the switch");
    let (dir_seen, ctl_ok, pid_seen, pid_ok) = watcher.join().expect("watcher thread");
    let mgmt_ok = mgmt_watcher.join().expect("management socket watcher");
    if pid_seen {
        // vde_switch may not have written the pid into its file yet.
        let pid = wait_until(STARTUP_TIMEOUT, "a pid in the pid file", || read_pid(&pidfile));
        stop(pid);
    }
    assert!(status.success() && dir_seen && pid_seen, "{} did not start: {status}", target.program());
    tally.ctl_tries += 1;
    tally.ctl_ok += usize::from(ctl_ok);
    tally.pid_tries += 1;
    tally.pid_ok += usize::from(pid_ok);
    tally.mgmt_ok += usize::from(mgmt_ok);
}

fn race(target: Target) -> (Tally, Tally) {
    let (mut fresh, mut existing) = (Tally::default(), Tally::default());
    for i in 0..STARTS {
        if i % 2 == 0 {
            watched_start(target, false, &mut fresh);
        } else {
            watched_start(target, true, &mut existing);
        }
    }
    println!(
        "{}: connect at first sight of the new directory {}/{}, of ctl in an existing directory {}/{}, \
         ctl and mgmt at first sight of the pid file {}/{}, mgmt at first sight of it {}/{}",
        target.program(),
        fresh.ctl_ok,
        fresh.ctl_tries,
        existing.ctl_ok,
        existing.ctl_tries,
        fresh.pid_ok + existing.pid_ok,
        fresh.pid_tries + existing.pid_tries,
        fresh.mgmt_ok + existing.mgmt_ok,
        STARTS,
    );
    (fresh, existing)
}

#[test]
fn clients_connecting_the_instant_files_appear_always_succeed() {
    // vde_switch has these races; its figures are printed for comparison only.
    race(Target::VdeSwitch);
    let (fresh, existing) = race(Target::Vswitch);
    assert_eq!(fresh.ctl_ok, fresh.ctl_tries, "new directory visible before ctl listened: {fresh:?}");
    assert_eq!(existing.ctl_ok, existing.ctl_tries, "ctl visible before it listened: {existing:?}");
    assert_eq!(fresh.pid_ok + existing.pid_ok, STARTS, "pid file before the listeners: {fresh:?} {existing:?}");
    assert_eq!(fresh.mgmt_ok + existing.mgmt_ok, STARTS, "mgmt visible before it listened: {fresh:?} {existing:?}");
}

/// Starts `target -d` and, the instant the launcher returns, connects to
/// `ctl` and the management socket and reads the pid file, as scripts do
/// (QemuNet talks to the console right after the command). How many of
/// `STARTS` found all three ready.
fn ready_on_return(target: Target) -> usize {
    let mut ready = 0;
    for _ in 0..STARTS {
        let dir = tempfile::Builder::new().prefix("vswitch-launch-").tempdir().expect("temporary directory");
        let (sw, mgmt, pidfile) = (dir.path().join("sw"), dir.path().join("sw.mgmt"), dir.path().join("sw.pid"));
        let status = Command::new(target.program())
            .arg("-d")
            .arg("-s")
            .arg(&sw)
            .arg("-M")
            .arg(&mgmt)
            .arg("-p")
            .arg(&pidfile)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run the switch");
        assert!(status.success(), "{} -d: {status}", target.program());
        let pid_now = read_pid(&pidfile);
        let all =
            UnixStream::connect(sw.join("ctl")).is_ok() && UnixStream::connect(&mgmt).is_ok() && pid_now.is_some();
        ready += usize::from(all);
        let pid = wait_until(STARTUP_TIMEOUT, "a pid in the pid file", || read_pid(&pidfile));
        stop(pid);
    }
    println!("{}: ctl, mgmt and pid file ready when `-d` returned: {ready}/{STARTS}", target.program());
    ready
}

#[test]
fn the_daemon_launcher_returns_once_everything_is_ready() {
    // vde_switch's launcher returns before its console listens: printed only.
    ready_on_return(Target::VdeSwitch);
    assert_eq!(ready_on_return(Target::Vswitch), STARTS);
}

/// Every entry of `dir`, sorted, with the content of regular files.
fn listing(dir: &Path) -> Vec<(String, Option<String>)> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("read directory")
        .map(|e| {
            let e = e.expect("directory entry");
            (e.file_name().to_string_lossy().into_owned(), fs::read_to_string(e.path()).ok())
        })
        .collect();
    entries.sort();
    entries
}

fn failed_start(dir: &Path, args: &[&Path]) -> String {
    let out = Command::new(Target::Vswitch.program()).args(args).stdin(Stdio::null()).output().expect("run vswitch");
    assert!(!out.status.success(), "vswitch {args:?} should fail in {}", dir.display());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_failed_start_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let d = dir.path();
    let (sw, mgmt, pidfile) = (d.join("sw"), d.join("sw.mgmt"), d.join("sw.pid"));
    let s = Path::new("-s");
    let m = Path::new("-M");
    let p = Path::new("-p");

    // The management socket cannot be created.
    let err = failed_start(d, &[s, &sw, m, &d.join("missing/sw.mgmt"), p, &pidfile]);
    assert!(err.contains("mgmt socket"), "{err}");
    assert!(listing(d).is_empty(), "{err}: {:?}", listing(d));

    // The pid file exists: it is another instance's and stays as it was.
    fs::write(&pidfile, "12345\n").unwrap();
    let err = failed_start(d, &[s, &sw, m, &mgmt, p, &pidfile]);
    assert!(err.contains("Error in pidfile creation: File exists"), "{err}");
    assert_eq!(listing(d), [("sw.pid".to_owned(), Some("12345\n".to_owned()))], "{err}");
    fs::remove_file(&pidfile).unwrap();

    // The pid file's directory does not exist.
    let err = failed_start(d, &[s, &sw, m, &mgmt, p, &d.join("missing/sw.pid")]);
    assert!(err.contains("Error in pidfile creation"), "{err}");
    assert!(listing(d).is_empty(), "{err}: {:?}", listing(d));

    // An existing control directory keeps what it had.
    fs::create_dir(&sw).unwrap();
    fs::write(sw.join("notes"), "kept").unwrap();
    let err = failed_start(d, &[s, &sw, m, &d.join("missing/sw.mgmt")]);
    assert!(err.contains("mgmt socket"), "{err}");
    assert_eq!(listing(&sw), [("notes".to_owned(), Some("kept".to_owned()))], "{err}");
}

/// How the switch's stdin is set up.
#[derive(Debug, Clone, Copy)]
enum Stdin {
    DevNull,
    Closed,
    /// A pipe whose writing end is closed at once.
    AtEof,
}

/// A foreground switch with `-s DIR/sw -M DIR/sw.mgmt` and `extra`.
fn foreground(dir: &Path, stdin: Stdin, extra: &[&str]) -> ProcessGuard {
    let program = Target::Vswitch.program();
    let mut command = match stdin {
        // The shell closes descriptor 0, then becomes the switch.
        Stdin::Closed => {
            let mut c = Command::new("sh");
            c.arg("-c").arg("exec \"$0\" \"$@\" <&-").arg(program);
            c
        }
        Stdin::DevNull | Stdin::AtEof => Command::new(program),
    };
    command
        .arg("-s")
        .arg(dir.join("sw"))
        .arg("-M")
        .arg(dir.join("sw.mgmt"))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match stdin {
        Stdin::DevNull => command.stdin(Stdio::null()),
        Stdin::AtEof => command.stdin(Stdio::piped()),
        Stdin::Closed => command.stdin(Stdio::inherit()),
    };
    let mut guard = ProcessGuard::spawn(&mut command);
    // Dropping the writing end delivers EOF.
    drop(guard.take_stdin());
    guard
}

fn nostdin_keeps_serving(stdin: Stdin) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut switch = foreground(dir.path(), stdin, &["--nostdin"]);
    let mgmt_path = dir.path().join("sw.mgmt");
    wait_until(STARTUP_TIMEOUT, "the management socket", || {
        if let Some(status) = switch.exit_status() {
            panic!("vswitch --nostdin with stdin {stdin:?} exited: {status}");
        }
        Mgmt::try_connect(&mgmt_path).ok()
    });
    let mut mgmt = Mgmt::connect(&mgmt_path);
    let sw = dir.path().join("sw");
    let url = sw.to_str().expect("UTF-8 path");
    let mut a = VdePlug::spawn(url, "a");
    a.wait_attached(&mut mgmt, "a");
    let mut b = VdePlug::spawn(url, "b");
    b.wait_attached(&mut mgmt, "b");
    exchange(&a, station_mac(1), &b, station_mac(2));
    assert!(switch.exit_status().is_none(), "vswitch --nostdin exited with stdin {stdin:?}");
    assert!(mgmt.cmd("port/showinfo").ends_with("1000 Success\n"));
}

#[test]
fn nostdin_with_stdin_at_dev_null() {
    nostdin_keeps_serving(Stdin::DevNull);
}

#[test]
fn nostdin_with_stdin_closed() {
    nostdin_keeps_serving(Stdin::Closed);
}

#[test]
fn nostdin_with_stdin_at_eof() {
    nostdin_keeps_serving(Stdin::AtEof);
}

/// Without `--nostdin`, EOF on stdin ends the switch, as it ends
/// vde_switch: what `--nostdin` is for. vde_switch 2.3.2 itself refuses
/// the option (it came later upstream).
#[test]
fn without_nostdin_eof_on_stdin_stops_the_switch() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut switch = foreground(dir.path(), Stdin::AtEof, &[]);
    let status = wait_until(STARTUP_TIMEOUT, "vswitch to exit on EOF", || switch.exit_status());
    assert!(status.success(), "{status}");
    assert!(!dir.path().join("sw").exists() && !dir.path().join("sw.mgmt").exists());
    let out = Command::new("vde_switch").args(["--nostdin", "-s"]).arg(dir.path().join("ref")).output().unwrap();
    println!("vde_switch 2.3.2 --nostdin: {}", String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or(""));
}
