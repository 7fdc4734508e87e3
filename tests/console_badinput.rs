//! Hostile and careless console clients: many sessions at once, sessions
//! that never read, and lines no command expects. Each bad line must get
//! the right status and change nothing; afterwards a fresh session still
//! gets correct replies.
//!
//! What vde_switch answers the same way runs against both switches. Where
//! vswitch differs on purpose (spec §12: lines are buffered up to 4096
//! bytes instead of cut into 128-byte reads; negative and overflowing
//! numbers are refused), only vswitch runs.

mod common;
#[path = "fixtures/console/support.rs"]
mod support;

use std::thread;
use std::time::{Duration, Instant};

use common::{BROADCAST, Client, Station, Switch, TEST_ETHERTYPE, Target, frame};
use support::{Console, END_OF_SESSION, mask};

/// The configuration the bad lines must not touch, fstp ages masked.
fn snapshot(sw: &Switch) -> String {
    let mut console = Console::open(&sw.mgmt_path());
    let state: String =
        ["port/allprint", "vlan/allprint", "hash/showinfo", "port/showinfo", "fstp/print", "debug/list"]
            .iter()
            .map(|command| console.cmd(command))
            .collect();
    mask(&state, sw.dir())
}

fn sessions_all_served(target: Target) {
    const SESSIONS: usize = 80;
    let sw = Switch::start(target, &[]);
    let mut consoles: Vec<Console> = (0..SESSIONS).map(|_| Console::open(&sw.mgmt_path())).collect();
    // Every session asks before any reads its answer.
    for (i, console) in consoles.iter_mut().enumerate() {
        console.send(format!("vlan/print {}\n", i % 2).as_bytes());
    }
    for (i, console) in consoles.iter_mut().enumerate() {
        let expected = match i % 2 {
            0 => "0000 DATA END WITH '.'\nVLAN 0000\n.\n1000 Success\n",
            _ => "0000 DATA END WITH '.'\n.\n1006 No such device or address\n",
        };
        assert_eq!(console.until_prompt("vlan/print"), expected, "session {i}");
    }
    // Half log out, half just go away; the switch notices both.
    for (i, mut console) in consoles.into_iter().enumerate() {
        if i % 2 == 0 {
            console.send(b"logout\n");
            assert_eq!(console.until_eof("logout"), END_OF_SESSION, "session {i}");
        }
    }
    sw.assert_alive();
}

/// Lines the reference answers the same way, with the expected reply.
const BAD_LINES: &[(&[u8], &str)] = &[
    (b"\0", ""),
    (b"\0help", ""),
    (b"port/showinfo\0junk", "0000 DATA END WITH '.'\nNumports=32\nHUB=false\ncounters=true\n.\n1000 Success\n"),
    (b"port/showinfo\r", "0000 DATA END WITH '.'\nNumports=32\nHUB=false\ncounters=true\n.\n1000 Success\n"),
    (b"   \t  ", ""),
    (b"\xff\xfe\xfd", "1038 Function not implemented\n"),
    (b"PORT/PRINT", "1038 Function not implemented\n"),
    (b"port/prin", "1038 Function not implemented\n"),
    (b"vlan", "1038 Function not implemented\n"),
    (b"port/print \xff", "0000 DATA END WITH '.'\n.\n1006 No such device or address\n"),
    (b"vlan/create \xff", "1022 Invalid argument\n"),
    (b"port/setuser 1 \xff\xfe", "1022 Invalid argument\n"),
    (
        b"debug/list \xff",
        "0000 DATA END WITH '.'\nCATEGORY               TAG STATUS HELP\n------------           --- ------ ----\n.\n1002 No such file or directory\n",
    ),
    (b"debug/add \xff", "1022 Invalid argument\n"),
    (b"vlan/create", "1022 Invalid argument\n"),
    (b"vlan/create 10 extra", "1017 File exists\n"),
    (b"vlan/remove 99 extra", "1006 No such device or address\n"),
    (b"port/setvlan 1", "1022 Invalid argument\n"),
    (b"port/setvlan", "1022 Invalid argument\n"),
    (b"port/setvlan 1 0 extra", "1000 Success\n"),
    (b"port/allocatable 1", "1022 Invalid argument\n"),
    (b"port/epclose 1", "1022 Invalid argument\n"),
    (b"port/setuser 1", "1022 Invalid argument\n"),
    (b"port/setgroup", "1022 Invalid argument\n"),
    (b"fstp/setedge 0 1", "1022 Invalid argument\n"),
    (b"fstp/bonus 0", "1022 Invalid argument\n"),
    (b"hash/setsize", "1022 Invalid argument\n"),
    (b"hash/find", "0000 DATA END WITH '.'\n.\n1022 Invalid argument\n"),
    (b"hash/find 02:00:00:00:00", "0000 DATA END WITH '.'\n.\n1022 Invalid argument\n"),
    (b"hash/find 02:00:00:00:00:00:00", "0000 DATA END WITH '.'\n.\n1019 No such device\n"),
    (b"hash/find 02:00:00:00:00:00 junk", "0000 DATA END WITH '.'\n.\n1019 No such device\n"),
    (b"load /nonexistent/\xff", "1002 No such file or directory\n"),
    (b"plugin/add", "1022 Invalid argument\n"),
    (b"plugin/del", "1002 No such file or directory\n"),
    (b"port/create 99999", "1022 Invalid argument\n"),
    (b"port/setvlan 99999 0", "1022 Invalid argument\n"),
    (b"vlan/addport 5000 1", "1022 Invalid argument\n"),
];

fn bad_lines_change_nothing(target: Target) {
    let sw = Switch::start(target, &[]);
    let mut console = Console::open(&sw.mgmt_path());
    assert_eq!(console.cmd("port/create 1"), "1000 Success\n");
    assert_eq!(console.cmd("vlan/create 10"), "1000 Success\n");
    let help = console.cmd("help");
    let before = snapshot(&sw);
    for (line, expected) in BAD_LINES {
        assert_eq!(console.cmd_bytes(line), *expected, "{target:?}: {:?}", String::from_utf8_lossy(line));
    }
    assert_eq!(snapshot(&sw), before, "{target:?}: the bad lines changed the configuration");
    let mut fresh = Console::open(&sw.mgmt_path());
    assert_eq!(fresh.cmd("help"), help);
    assert_eq!(fresh.cmd("vlan/print 10"), "0000 DATA END WITH '.'\nVLAN 0010\n.\n1000 Success\n");
}

/// A client that sends its commands and hangs up without reading, before
/// the switch has even greeted it (`echo CMD | …` that does not wait): the
/// commands still run, as vde_switch runs them.
fn commands_of_a_client_that_hung_up_still_run(target: Target) {
    use std::io::Write as _;
    let sw = Switch::start(target, &[]);
    for port in [5, 6, 7] {
        let mut stream = std::os::unix::net::UnixStream::connect(sw.mgmt_path()).expect("connect to the console");
        stream.write_all(format!("port/create {port}\n").as_bytes()).expect("send the command");
        drop(stream);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut console = Console::open(&sw.mgmt_path());
    loop {
        let listing = console.cmd("port/allprint");
        if ["Port 0005", "Port 0006", "Port 0007"].iter().all(|p| listing.contains(p)) {
            break;
        }
        assert!(Instant::now() < deadline, "{target:?}: commands of clients that hung up were lost:\n{listing}");
        thread::sleep(Duration::from_millis(50));
    }
}

test_both_targets!(sessions_all_served, bad_lines_change_nothing, commands_of_a_client_that_hung_up_still_run);

/// vswitch only: what it does on purpose differently (spec §12).
#[test]
fn long_lines_pipelining_and_out_of_range_numbers() {
    let sw = Switch::start(Target::Vswitch, &[]);
    let mut console = Console::open(&sw.mgmt_path());
    let before = snapshot(&sw);
    let refused = "1022 Invalid argument\n";
    // A line longer than 4096 bytes is refused as a whole, also when its
    // end comes in a later write; one of exactly 4096 bytes is a command.
    let long = format!("vlan/create 7{}", " ".repeat(5000));
    assert_eq!(console.cmd(&long), refused);
    console.send(format!("vlan/create 7{}", "x".repeat(5000)).as_bytes());
    thread::sleep(Duration::from_millis(50));
    console.send(format!("{}\n", "x".repeat(3000)).as_bytes());
    assert_eq!(console.until_prompt("a long line in two writes"), refused);
    assert_eq!(console.cmd("vlan/print 7"), "0000 DATA END WITH '.'\n.\n1006 No such device or address\n");
    let exactly = format!("help {}", "x".repeat(4096 - 5));
    let header = "COMMAND PATH       SYNTAX          HELP\n------------       --------------  ------------\n";
    assert_eq!(console.cmd(&exactly), format!("0000 DATA END WITH '.'\n{header}.\n1000 Success\n"));
    for line in [
        "vlan/create -7",
        "vlan/create 4294967303",
        "port/create 99999999999999999999",
        "port/setvlan 1 -1",
        "port/setvlan 0x7fffffff0 0",
        "hash/setgcint -2",
        "hash/setexpire 2147483648",
        "fstp/setedge -1 1 1",
        "fstp/bonus 0 1 -100",
        "port/epclose -1 3",
        "hash/find 02:00:00:00:00:0a -4",
    ] {
        let reply = console.cmd(line);
        assert!(reply.ends_with(refused), "{line}: {reply:?}");
    }
    // Several commands in one write all run, in order.
    console.send(b"vlan/print 0\nport/print 40\n");
    assert_eq!(console.until_prompt("first of two"), "0000 DATA END WITH '.'\nVLAN 0000\n.\n1000 Success\n");
    assert_eq!(console.until_prompt("second of two"), "0000 DATA END WITH '.'\n.\n1022 Invalid argument\n");
    assert_eq!(snapshot(&sw), before, "refused lines changed the configuration");
}

/// The resident memory of a process, in kB.
fn resident_kb(pid: nix::unistd::Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read process status");
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).expect("VmRSS line");
    line.trim().trim_end_matches(" kB").trim().parse().expect("VmRSS value")
}

/// vswitch only: a session that sends many commands without reading
/// stalls only itself: the switch does not run them ahead and buffer the
/// replies (16 MB here), and every reply reaches the session, in order,
/// once it reads.
#[test]
fn unread_replies_stall_only_their_session() {
    const COMMANDS: usize = 4000;
    let sw = Switch::start(Target::Vswitch, &[]);
    let mut hog = Console::open(&sw.mgmt_path());
    let help = hog.cmd("help");
    let resident = resident_kb(sw.pid());
    hog.send("help\n".repeat(COMMANDS).as_bytes());
    let mut other = Console::open(&sw.mgmt_path());
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(other.cmd("vlan/print 0"), "0000 DATA END WITH '.'\nVLAN 0000\n.\n1000 Success\n");
        assert!(started.elapsed() < Duration::from_secs(2), "another session waited {:?}", started.elapsed());
    }
    let grown = resident_kb(sw.pid()).saturating_sub(resident);
    assert!(grown < 4096, "the switch grew by {grown} kB for a session that does not read");
    for i in 0..COMMANDS {
        assert_eq!(hog.until_prompt("a pipelined help"), help, "reply {i}");
    }
}

/// vswitch only: a subscribed session that never reads while events pour
/// in is closed once its backlog passes the bound; the switch and the
/// other sessions are not held up, and a fresh session is served.
#[test]
fn unread_events_close_their_session() {
    const FRAMES: u32 = 20_000;
    let sw = Switch::start(Target::Vswitch, &[]);
    let mut hog = Console::open(&sw.mgmt_path());
    assert_eq!(hog.cmd("debug/add hash/+"), "1000 Success\n");
    let mut other = Console::open(&sw.mgmt_path());
    let client = Client::connect(&sw.ctl_dir(), None, "flooder");
    let started = Instant::now();
    for i in 0..FRAMES {
        // A new station each time: one `hash/+` line of 48 bytes each.
        let [_, _, hi, lo] = i.to_be_bytes();
        client.send(&frame(BROADCAST, [0x02, 0, 0, 1, hi, lo], TEST_ETHERTYPE, 46));
        if i % 5000 == 0 {
            assert_eq!(other.cmd("vlan/print 0").lines().last(), Some("1000 Success"));
        }
    }
    assert!(started.elapsed() < Duration::from_secs(20), "flooding took {:?}", started.elapsed());
    assert_eq!(other.cmd("hash/print").lines().count(), FRAMES as usize + 3, "every station was learned");
    // What the hog's socket already held, then the end of the session.
    let received = hog.until_eof("the switch to give up on an unread session");
    assert!(received.len() < FRAMES as usize * 48, "all {} bytes arrived: the session was not closed", received.len());
    let mut fresh = Console::open(&sw.mgmt_path());
    assert_eq!(fresh.cmd("port/showinfo").lines().last(), Some("1000 Success"));
}
