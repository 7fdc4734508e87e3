//! How public projects drive vde_switch, replayed against vde_switch and
//! vswitch: each project's command line, its way of waiting for the switch,
//! its console exchange and its way of stopping it, as found in its sources.
//! Each replay returns what the project could observe (transcripts with
//! pids and MACs masked, file modes, exit statuses, files left behind);
//! vswitch must give the same as vde_switch. Virtual machines are stood in
//! for by raw VDE clients attached where the project attaches its guests.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, symlink};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Group, Pid};

use common::station::exchange;
use common::{
    Client, EVENT_TIMEOUT, Mgmt, ProcessGuard, STARTUP_TIMEOUT, Station, Target, assert_silent, process_gone, read_pid,
    station_mac, wait_until,
};

/// Masks what differs from run to run: pids, MAC addresses, uptimes,
/// descriptor numbers, temporary paths and the program's name.
fn mask(text: &str, dir: &Path, target: Target) -> String {
    let mut out = text.replace(&dir.display().to_string(), "DIR").replace(target.program(), "PROGRAM");
    for key in ["pid=", "pid ", "uptime ", "MAC ", "endpoint ID "] {
        let mut masked = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(at) = rest.find(key) {
            let (head, tail) = rest.split_at(at + key.len());
            masked.push_str(head);
            let end = tail.find(|c: char| !(c.is_ascii_hexdigit() || c == ':')).unwrap_or(tail.len());
            masked.push('N');
            rest = &tail[end..];
        }
        masked.push_str(rest);
        out = masked;
    }
    out
}

fn describe_status(status: Option<ExitStatus>) -> String {
    match status {
        None => "running".into(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            _ => format!("{s}"),
        },
    }
}

/// Entries left in `dir` (recursively, sorted), as paths relative to it;
/// data sockets `NNN.FD` as `NNN.N` (descriptor numbers differ).
fn left_in(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let mut shown = path.strip_prefix(base).unwrap_or(&path).display().to_string();
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some((port, fd)) = name.split_once('.')
                && port.len() == 3
                && [port, fd].iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            {
                shown.truncate(shown.len() - fd.len());
                shown.push('N');
            }
            out.push(shown);
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(base, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn mode_and_group(path: &Path) -> String {
    match fs::symlink_metadata(path) {
        Ok(m) => format!("{:o} gid {}", m.mode() & 0o7777, m.gid()),
        Err(e) => format!("{e}"),
    }
}

/// Stops the daemon named by a pid file when dropped, so that a replay
/// that fails half-way leaves no switch running.
struct DaemonGuard(PathBuf);

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        let pid = read_pid(&self.0);
        if let Some(pid) = pid.filter(|&pid| !process_gone(pid)) {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
}

/// Reads lines of a child's output on a thread, so waits can be bounded.
fn line_reader(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    lines
}

/// With `-F` the switch sends spanning-tree BPDUs to every port; the
/// guests' traffic is what is checked here.
fn is_bpdu(frame: &[u8]) -> bool {
    frame.starts_with(&[0x01, 0x80, 0xc2, 0x00, 0x00, 0x00])
}

fn expect_skipping_bpdus(station: &dyn Station, expected: &[u8]) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match station.recv_timeout(left) {
            Some(got) if is_bpdu(&got) => continue,
            Some(got) => assert_eq!(got, expected, "{}: unexpected frame", station.name()),
            None => panic!("{}: expected {}, received nothing", station.name(), common::describe(expected)),
        }
        return;
    }
}

/// `exchange` among switches that also send BPDUs.
fn exchange_skipping_bpdus(a: &dyn Station, mac_a: [u8; 6], b: &dyn Station, mac_b: [u8; 6]) {
    let hello = common::frame(common::BROADCAST, mac_a, common::TEST_ETHERTYPE, 46);
    a.send(&hello);
    expect_skipping_bpdus(b, &hello);
    let answer = common::frame(mac_a, mac_b, common::TEST_ETHERTYPE, 46);
    b.send(&answer);
    expect_skipping_bpdus(a, &answer);
}

fn assert_only_bpdus(station: &dyn Station) {
    thread::sleep(common::QUIET_PERIOD);
    while let Some(got) = station.recv_timeout(Duration::ZERO) {
        assert!(is_bpdu(&got), "{}: expected no traffic, received {}", station.name(), common::describe(&got));
    }
}

fn wait_exit(process: &mut ProcessGuard, what: &str) -> ExitStatus {
    wait_until(STARTUP_TIMEOUT, what, || process.exit_status())
}

/// `echo COMMAND | socat - UNIX-CONNECT:SOCKET`, the way shell scripts
/// reach the console: everything the switch sends, banner included.
fn socat(socket: &Path, command: &str) -> String {
    let mut child = Command::new("socat")
        .arg("-")
        .arg(format!("UNIX-CONNECT:{}", socket.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run socat");
    child.stdin.take().expect("socat stdin").write_all(format!("{command}\n").as_bytes()).expect("write to socat");
    let out = child.wait_with_output().expect("socat output");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// --- NixOS test driver (nixos/lib/test-driver/src/test_driver/vlan.py) ---
//
// `vde_switch --sock TMP/vde1.ctl --dirmode 0700 --hub` in the foreground
// with stdin and stdout as line-buffered pipes; it writes `showinfo` and
// reads stdout until a line contains `1000 Success` (5 s timeout), then
// checks that `ctl` exists. QEMU guests join with `-netdev vde,sock=…`
// (and vde_plug2tap, a tap in the host's network, left out here). Stop:
// close stdin, then terminate().
fn nixos(target: Target) -> Vec<String> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let socket_dir = dir.path().join("vde1.ctl");
    let mut switch = ProcessGuard::spawn(
        Command::new(target.program())
            .arg("--sock")
            .arg(&socket_dir)
            .args(["--dirmode", "0700", "--hub"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let mut stdin = switch.take_stdin().expect("piped stdin");
    let lines = line_reader(switch.take_stdout().expect("piped stdout"));
    stdin.write_all(b"showinfo\n").expect("write showinfo");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut transcript = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).unwrap_or_else(|_| panic!("no 1000 Success within 5 s: {transcript:?}"));
        let done = line.contains("1000 Success");
        transcript.push(mask(&line, dir.path(), target));
        if done {
            break;
        }
    }
    assert!(socket_dir.join("ctl").exists(), "cannot start vde_switch");
    transcript.push(format!("dir {}", mode_and_group(&socket_dir)));
    {
        let a = Client::connect(&socket_dir, None, "qemu-a");
        let b = Client::connect(&socket_dir, None, "qemu-b");
        exchange(&a, station_mac(1), &b, station_mac(2));
        // A hub floods: a third guest sees the unicast too.
        let c = Client::connect(&socket_dir, None, "qemu-c");
        let unicast = common::frame(station_mac(2), station_mac(1), common::TEST_ETHERTYPE, 46);
        a.send(&unicast);
        b.expect_frame(&unicast);
        c.expect_frame(&unicast);
    }
    drop(stdin);
    let _ = kill(Pid::from_raw(switch.pid() as i32), Signal::SIGTERM);
    wait_exit(&mut switch, "the switch to stop");
    transcript.push(format!("left {:?}", left_in(dir.path())));
    transcript
}

// --- lima's vde_vmnet (launchd/io.github.virtualsquare.vde-2.vde_switch.plist) ---
//
// launchd runs `vde_switch --sock /var/run/vde.ctl --pidfile
// /var/run/vde.pid --group staff --dirmode 0770 --nostdin` with stdin at
// /dev/null and stdout/stderr to files; vde_vmnet's own job is kept alive
// while the pid file exists (KeepAlive PathState), so it connects to the
// switch the moment the pid file appears. Stop: launchctl unload (SIGTERM).
// vde_switch 2.3.2 has no --nostdin (it needs vde-2 from 2021 on): it is
// run without it and with a stdin that stays open, which is what the
// option stands for.
fn lima(target: Target) -> Vec<String> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let ctl = dir.path().join("vde.ctl");
    let pidfile = dir.path().join("vde.pid");
    let staff = Group::from_name("staff").ok().flatten().map(|_| "staff").unwrap_or("root");
    let mut command = Command::new(target.program());
    command.arg("--sock").arg(&ctl).arg("--pidfile").arg(&pidfile).args(["--group", staff, "--dirmode", "0770"]);
    command
        .stdout(fs::File::create(dir.path().join("vde.stdout")).unwrap())
        .stderr(fs::File::create(dir.path().join("vde.stderr")).unwrap());
    match target {
        Target::Vswitch => command.arg("--nostdin").stdin(Stdio::null()),
        Target::VdeSwitch => command.stdin(Stdio::piped()),
    };
    let mut switch = ProcessGuard::spawn(&mut command);
    let _keep_open = switch.take_stdin();
    wait_until(STARTUP_TIMEOUT, "the pid file", || {
        if let Some(status) = switch.exit_status() {
            panic!("{} exited: {status}", target.program());
        }
        fs::symlink_metadata(&pidfile).ok()
    });
    // vde_vmnet connects at once; vde_switch may still be writing the file.
    let first_sight = std::os::unix::net::UnixStream::connect(ctl.join("ctl")).is_ok();
    if target == Target::Vswitch {
        assert!(first_sight, "ctl not listening when the pid file appeared");
    }
    let pid = wait_until(STARTUP_TIMEOUT, "the pid", || fs::read_to_string(&pidfile).ok().filter(|s| !s.is_empty()));
    assert_eq!(pid.trim(), switch.pid().to_string());
    let mut facts = vec![format!("dir {}", mode_and_group(&ctl)), format!("ctl {}", mode_and_group(&ctl.join("ctl")))];
    {
        let vmnet = Client::connect(&ctl, None, "vde_vmnet");
        let guest = Client::connect(&ctl, None, "qemu");
        facts.push(format!("ports {} {}", vmnet.port(), guest.port()));
        exchange(&vmnet, station_mac(1), &guest, station_mac(2));
    }
    let _ = kill(Pid::from_raw(switch.pid() as i32), Signal::SIGTERM);
    facts.push(describe_status(Some(wait_exit(&mut switch, "the switch to stop"))));
    facts.push(format!("left {:?}", left_in(dir.path())));
    facts
}

// --- openQA / os-autoinst (script/openqa-vde_switch, backend/qemu.pm) ---
//
// systemd runs `vde_switch -F -s /run/openqa/vde.ctl -M
// /run/openqa/vde.mgmt` (Type=simple: stdin is /dev/null). Each test job
// then runs `vdecmd -s DIR/vde.mgmt port/remove P`, `port/create P`,
// `vlan/create V`, `port/setvlan P V`, starts slirpvde on port P+1 and
// `port/setvlan P+1 V`, and QEMU with `-netdev vde,sock=DIR/vde.ctl,port=P`
// (P = WORKER_ID * 2 + 2). It ignores vdecmd's status ("no useful return
// value"). Stop: systemctl stop (SIGTERM). vdecmd is unixcmd with the
// vdecmd parse machine, chosen by the name it is called by.
fn openqa(target: Target) -> Vec<String> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let ctl = dir.path().join("vde.ctl");
    let mgmt = dir.path().join("vde.mgmt");
    let switch_command = || {
        let mut c = Command::new(target.program());
        c.arg("-F").arg("-s").arg(&ctl).arg("-M").arg(&mgmt).stdout(Stdio::null()).stderr(Stdio::piped());
        c
    };
    // Under systemd's default StandardInput=null, EOF on stdin stops both.
    let out = switch_command().stdin(Stdio::null()).output().expect("run the switch");
    let mut facts = vec![
        format!("stdin /dev/null: {}", describe_status(Some(out.status))),
        mask(&String::from_utf8_lossy(&out.stderr), dir.path(), target),
        format!("left {:?}", left_in(dir.path())),
    ];

    // The same line with a stdin that stays open, as on a console.
    let mut switch = ProcessGuard::spawn(switch_command().stdin(Stdio::piped()).stderr(Stdio::null()));
    let _keep_open = switch.take_stdin();
    wait_until(STARTUP_TIMEOUT, "the management socket", || Mgmt::try_connect(&mgmt).ok());
    let vdecmd = dir.path().join("vdecmd");
    symlink("/usr/bin/unixcmd", &vdecmd).expect("vdecmd link");
    let (worker_id, vlan) = (1, 11);
    let port = worker_id * 2 + 2;
    let run = |args: &[String]| {
        let out = Command::new(&vdecmd).arg("-s").arg(&mgmt).args(args).output().expect("run vdecmd");
        format!(
            "vdecmd {}: {} {:?}",
            args.join(" "),
            describe_status(Some(out.status)),
            mask(&String::from_utf8_lossy(&out.stdout), dir.path(), target)
        )
    };
    for args in [
        vec!["port/remove".to_string(), port.to_string()],
        vec!["port/create".into(), port.to_string()],
        vec!["vlan/create".into(), vlan.to_string()],
        vec!["port/setvlan".into(), port.to_string(), vlan.to_string()],
    ] {
        facts.push(run(&args));
    }
    {
        let slirp = Client::connect(&ctl, Some(port + 1), "slirpvde");
        facts.push(run(&["port/setvlan".into(), (port + 1).to_string(), vlan.to_string()]));
        let qemu = Client::connect(&ctl, Some(port), "qemu");
        let other_job = Client::connect(&ctl, Some(2), "qemu of worker 0");
        exchange_skipping_bpdus(&qemu, station_mac(1), &slirp, station_mac(2));
        assert_only_bpdus(&other_job);
        let mut console = Mgmt::connect(&mgmt);
        facts.push(mask(&console.cmd("vlan/print 11"), dir.path(), target));
    }
    let _ = kill(Pid::from_raw(switch.pid() as i32), Signal::SIGTERM);
    facts.push(describe_status(Some(wait_exit(&mut switch, "the switch to stop"))));
    fs::remove_file(&vdecmd).expect("remove vdecmd link");
    facts.push(format!("left {:?}", left_in(dir.path())));
    facts
}

// --- QemuNet (qemunet.sh: SWITCH, NETWORK with -v, TRUNK; misc/qemunet-exit.sh) ---
//
// `mkdir -p SESSION/switch/NAME`, then `vde_switch -d -s SESSION/switch/NAME
// -p SESSION/NAME.pid -M SESSION/NAME.mgmt`. With VLANs, per guest NIC:
// `echo "port/setnumports N" | socat - UNIX-CONNECT:MGMT`, `port/create P`,
// `load SWITCH.cmd`, and `vlan/allprint`, `port/allprint` appended to a
// log; guests join with `-netdev vde,sock=DIR,port=P`; switches are
// trunked with `dpipe vde_plug --port 21 DIR1 = vde_plug --port 21 DIR2`.
// Stop: `kill $(cat *.pid)`, then `rm -rf SESSION/switch` and the pid,
// mgmt and log files. QemuNet runs socat right after the launcher returns,
// without waiting: vde_switch is waited for here (its launcher returns
// before the console listens), vswitch is not.
fn qemunet(target: Target) -> Vec<String> {
    let session = tempfile::tempdir().expect("temporary directory");
    let s = session.path();
    let mut facts = Vec::new();
    let names = ["s1", "s2"];
    let _daemons: Vec<DaemonGuard> = names.iter().map(|n| DaemonGuard(s.join(format!("{n}.pid")))).collect();
    for name in names {
        let switch_dir = s.join("switch").join(name);
        fs::create_dir_all(&switch_dir).expect("mkdir -p");
        let status = Command::new(target.program())
            .arg("-d")
            .arg("-s")
            .arg(&switch_dir)
            .arg("-p")
            .arg(s.join(format!("{name}.pid")))
            .arg("-M")
            .arg(s.join(format!("{name}.mgmt")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run the switch");
        assert!(status.success());
        // vswitch's launcher returns once the daemon is ready, as QemuNet
        // assumes; vde_switch's returns before its console listens.
        if target == Target::VdeSwitch {
            wait_until(STARTUP_TIMEOUT, "the pid file and console", || {
                let pid = fs::read_to_string(s.join(format!("{name}.pid"))).ok().filter(|p| !p.is_empty());
                pid.and(Mgmt::try_connect(&s.join(format!("{name}.mgmt"))).ok())
            });
        }
        fs::write(
            s.join("switch").join(format!("{name}.cmd")),
            "port/create 21\nvlan/create 10\nvlan/create 20\nport/setvlan 1 10\nport/setvlan 2 20\nvlan/addport 10 21\nvlan/addport 20 21\n",
        )
        .unwrap();
    }
    let mgmt = |name: &str| s.join(format!("{name}.mgmt"));
    for name in names {
        let log = s.join(format!("{name}.log"));
        for port in [1, 2] {
            for command in [
                "port/setnumports 32".to_string(),
                format!("port/create {port}"),
                format!("load {}", s.join("switch").join(format!("{name}.cmd")).display()),
            ] {
                facts.push(mask(&socat(&mgmt(name), &command), s, target));
            }
            let mut text = socat(&mgmt(name), "vlan/allprint");
            text += &socat(&mgmt(name), "port/allprint");
            fs::OpenOptions::new().create(true).append(true).open(&log).unwrap().write_all(text.as_bytes()).unwrap();
        }
    }
    let mut trunk = ProcessGuard::spawn(
        Command::new("dpipe")
            .args(["vde_plug", "--port", "21"])
            .arg(s.join("switch/s1"))
            .args(["=", "vde_plug", "--port", "21"])
            .arg(s.join("switch/s2"))
            .current_dir(s)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    {
        let mut console = Mgmt::connect(&mgmt("s1"));
        wait_until(EVENT_TIMEOUT, "the trunk on port 21", || console.port(21).filter(|p| p.active).map(|_| ()));
        let mut console = Mgmt::connect(&mgmt("s2"));
        wait_until(EVENT_TIMEOUT, "the trunk on port 21", || console.port(21).filter(|p| p.active).map(|_| ()));
        let h1 = Client::connect(&s.join("switch/s1"), Some(1), "h1");
        let h2 = Client::connect(&s.join("switch/s2"), Some(1), "h2");
        let h3 = Client::connect(&s.join("switch/s2"), Some(2), "h3 on VLAN 20");
        exchange(&h1, station_mac(1), &h2, station_mac(2));
        assert_silent(&[&h3]);
    }
    for name in names {
        facts.push(mask(&fs::read_to_string(s.join(format!("{name}.log"))).unwrap(), s, target));
    }
    trunk.kill();
    // misc/qemunet-exit.sh
    for name in names {
        let pid: i32 = fs::read_to_string(s.join(format!("{name}.pid"))).unwrap().trim().parse().unwrap();
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        wait_until(STARTUP_TIMEOUT, "the switch to stop", || process_gone(Pid::from_raw(pid)).then_some(()));
    }
    facts.push(format!("left before cleanup {:?}", left_in(s)));
    facts
}

// --- Marionnet (bin/simulation_level.ml: vde_switch_process; switch.ml) ---
//
// `vde_switch -n 33 -mod 777 -unix WORKDIR/switch-socket-XXXXXX --mgmt
// WORKDIR/switch-socket-mgmt-XXXXXX` (plus -x for hubs, --fstp, --rcfile
// when set), stdin a pipe that never sends, stdout and stderr /dev/null.
// It waits, polling every 50 ms, until both names show up in
// /proc/net/unix (`grep NAME /proc/net/unix`), then 0.3 s more. Before
// attaching its internal cables it counts the active ports: on one
// management connection it writes `port/print` and reads lines, counting
// those that scan as `Port %d %s ACTIVE`, up to a line starting with `.`;
// it asks again every 0.2 s on the same connection until enough ports are
// active. Stop: SIGINT, 0.1 s later SIGKILL while the process lives (10
// tries, 0.1 s apart), then it unlinks both names.
fn marionnet(target: Target) -> Vec<String> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let socket = dir.path().join("switch-socket-a1B2c3");
    let mgmt = dir.path().join("switch-socket-mgmt-d4E5f6");
    let mut switch = ProcessGuard::spawn(
        Command::new(target.program())
            .args(["-n", "33", "-mod", "777", "-unix"])
            .arg(&socket)
            .arg("--mgmt")
            .arg(&mgmt)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let _never_sends = switch.take_stdin();
    let listed = |name: &PathBuf| {
        fs::read_to_string("/proc/net/unix").unwrap_or_default().contains(name.to_str().expect("UTF-8 path"))
    };
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while switch.exit_status().is_none() && !(listed(&socket) && listed(&mgmt)) {
        assert!(Instant::now() < deadline, "sockets never listed in /proc/net/unix");
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(300));
    let mut facts = vec![
        format!("dir {}", mode_and_group(&socket)),
        format!("ctl {}", mode_and_group(&socket.join("ctl"))),
        format!("mgmt {}", mode_and_group(&mgmt)),
    ];
    {
        let a = Client::connect(&socket, None, "uml-a");
        let b = Client::connect(&socket, Some(32), "uml-b");
        exchange(&a, station_mac(1), &b, station_mac(2));
        let console = std::os::unix::net::UnixStream::connect(&mgmt).expect("connect to the management socket");
        console.set_read_timeout(Some(EVENT_TIMEOUT)).expect("read timeout");
        let mut lines = BufReader::new(console.try_clone().expect("clone stream")).lines();
        let mut active_ports = |mut console: &std::os::unix::net::UnixStream| {
            console.write_all(b"port/print\n").expect("send port/print");
            let mut active = 0;
            loop {
                let line = lines.next().expect("a line before `.`").expect("read a line");
                if line.starts_with('.') {
                    return active;
                }
                let mut words = line.split_whitespace();
                let scans = words.next() == Some("Port")
                    && words.next().is_some_and(|n| n.parse::<u32>().is_ok())
                    && words.next().is_some()
                    && words.next() == Some("ACTIVE");
                active += usize::from(scans);
            }
        };
        let first = active_ports(&console);
        let deadline = Instant::now() + EVENT_TIMEOUT;
        let mut now_active = first;
        while now_active < 2 {
            assert!(Instant::now() < deadline, "ports never became active");
            thread::sleep(Duration::from_millis(200));
            now_active = active_ports(&console);
        }
        facts.push(format!("active ports {first}, then {now_active}"));
    }
    let pid = Pid::from_raw(switch.pid() as i32);
    thread::sleep(Duration::from_millis(100));
    let _ = kill(pid, Signal::SIGINT);
    thread::sleep(Duration::from_millis(100));
    for _ in 0..10 {
        if switch.exit_status().is_some() {
            break;
        }
        let _ = kill(pid, Signal::SIGKILL);
        thread::sleep(Duration::from_millis(100));
    }
    facts.push(describe_status(switch.exit_status()));
    facts.push(format!("left before unlinking {:?}", left_in(dir.path())));
    facts
}

// --- Kathara (NetworkPlugin, vde/go-src/src/lib/switch_utils.go) ---
//
// The katharanp_vde Docker network plugin, one switch per collision domain:
// `mkdir -p /hosttmp/katharanp/kt-ID/`, then `vde_switch -n 65535 -x -d -s
// kt-ID/ctl -p kt-ID/pid`, run to completion. A switch exists when its pid
// file does; containers join through libvdeplug (`vde_open` on kt-ID/ctl).
// Delete: read the pid file, SIGKILL, remove the whole directory.
fn kathara(target: Target) -> Vec<String> {
    let plugin = tempfile::tempdir().expect("temporary directory");
    let switch_path = plugin.path().join("kt-0123456789ab");
    let (ctl, pidfile) = (switch_path.join("ctl"), switch_path.join("pid"));
    fs::create_dir_all(&switch_path).expect("mkdir -p");
    let _daemon = DaemonGuard(pidfile.clone());
    let status = Command::new(target.program())
        .args(["-n", "65535", "-x", "-d", "-s"])
        .arg(&ctl)
        .arg("-p")
        .arg(&pidfile)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run the switch");
    let mut facts = vec![describe_status(Some(status))];
    // Containers join whenever Docker asks, usually well after the launch;
    // vde_switch's launcher returns before its pid file is written.
    let pid: i32 = wait_until(STARTUP_TIMEOUT, "the pid file", || {
        fs::read_to_string(&pidfile).ok().and_then(|p| p.trim().parse().ok())
    });
    {
        let a = Client::connect(&ctl, None, "container-a");
        let b = Client::connect(&ctl, None, "container-b");
        exchange(&a, station_mac(1), &b, station_mac(2));
        let c = Client::connect(&ctl, None, "container-c");
        facts.push(format!("ports {} {} {}", a.port(), b.port(), c.port()));
        // `-x`: a hub, every container sees every frame.
        let unicast = common::frame(station_mac(2), station_mac(1), common::TEST_ETHERTYPE, 46);
        a.send(&unicast);
        b.expect_frame(&unicast);
        c.expect_frame(&unicast);
    }
    // Docker disconnects the containers before deleting the network.
    wait_until(EVENT_TIMEOUT, "the containers' data sockets to go", || (left_in(&ctl).len() == 1).then_some(()));
    let pid = Pid::from_raw(pid);
    let _ = kill(pid, Signal::SIGKILL);
    wait_until(STARTUP_TIMEOUT, "the switch to die", || process_gone(pid).then_some(()));
    facts.push(format!("left after SIGKILL {:?}", left_in(&switch_path)));
    fs::remove_dir_all(&switch_path).expect("remove the switch directory");
    facts
}

fn replay(project: fn(Target) -> Vec<String>) {
    let reference = project(Target::VdeSwitch);
    println!("{reference:#?}");
    let ours = project(Target::Vswitch);
    assert_eq!(ours, reference, "vswitch (left) and vde_switch (right) differ");
}

#[test]
fn nixos_test_driver() {
    replay(nixos);
}

#[test]
fn lima_vde_vmnet() {
    replay(lima);
}

#[test]
fn openqa_os_autoinst() {
    replay(openqa);
}

#[test]
fn qemunet_session() {
    replay(qemunet);
}

#[test]
fn kathara_collision_domain() {
    replay(kathara);
}

#[test]
fn marionnet_lab() {
    replay(marionnet);
}
