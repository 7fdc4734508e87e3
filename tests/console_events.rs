//! Debug events (`debug/add port`, `debug/add hash`) as real `vde_plug`
//! clients join, talk and leave, compared line by line with vde_switch.
//!
//! vde_switch flushes the MAC table whenever a port becomes active or
//! inactive; vswitch on purpose only forgets the stations of a port that
//! went inactive (spec §12). The `hash/-` lines are therefore compared
//! separately: each switch's own rule is asserted.

mod common;
#[path = "fixtures/console/support.rs"]
mod support;

use std::path::Path;
use std::time::Duration;

use common::{BROADCAST, Station, Switch, TEST_ETHERTYPE, Target, VdePlug, frame, station_mac};
use support::{Console, mask};

/// Time for stragglers after the line a step waits for: vde_switch writes
/// the flush's `hash/-` lines after `port/-`.
const SETTLE: Duration = Duration::from_millis(150);

const HASH_DEL_A: &str = "3012 hash/- 02:00:00:00:00:0a VLAN 00:00 Port 1";
const HASH_DEL_B: &str = "3012 hash/- 02:00:00:00:00:0b VLAN 00:00 Port 2";

/// The event lines of one step, masked, split into `hash/-` lines and the
/// rest (which both switches must print identically).
struct Step {
    lines: Vec<String>,
    hash_deletions: Vec<String>,
}

/// Reads events until `count` lines satisfy `last`, plus stragglers.
fn step(console: &mut Console, what: &str, count: usize, last: impl Fn(&str) -> bool) -> Step {
    let mut lines = console.lines_until(what, count, last);
    lines.extend(console.drain_for(SETTLE).lines().map(str::to_owned));
    let lines: Vec<String> = lines.iter().map(|l| mask(l, Path::new("/nonexistent"))).collect();
    let (hash_deletions, lines) = lines.into_iter().partition(|l| l.starts_with("3012 hash/- "));
    Step { lines, hash_deletions }
}

fn descr_line(port: u32, descr: &str) -> String {
    format!("3023 port/descr Port {port:02} FD # -> \"{descr} user=root pid=#\"")
}

/// Joins and leaves with both debug categories on; returns every step's
/// lines (`hash/-` excluded) for comparison between the switches.
fn joins_and_leaves(target: Target) -> Vec<Vec<String>> {
    let sw = Switch::start(target, &[]);
    let dir = sw.ctl_dir().display().to_string();
    let mut events = Console::open(&sw.mgmt_path());
    assert_eq!(events.cmd("debug/del port"), "1002 No such file or directory\n", "nothing on yet");
    assert_eq!(events.cmd("debug/add port"), "1000 Success\n");
    assert_eq!(events.cmd("debug/add port"), "1017 File exists\n");
    assert_eq!(events.cmd("debug/add port/ep"), "1017 File exists\n");
    assert_eq!(events.cmd("debug/add hash"), "1000 Success\n");
    assert_eq!(events.cmd("debug/add nosuchcategory"), "1022 Invalid argument\n");
    assert_eq!(events.cmd("debug/del fstp"), "1002 No such file or directory\n");
    // A session that subscribed to nothing sees none of it.
    let mut quiet = Console::open(&sw.mgmt_path());
    let mut seen = Vec::new();

    let a = VdePlug::spawn(&dir, "clientA");
    let joined = step(&mut events, "client A joining", 1, |l| l.starts_with("3023 "));
    assert_eq!(
        joined.lines,
        ["3021 port/+ 01", "3031 port/ep/+ Port 01 FD #", &descr_line(1, "clientA")],
        "client A joins a new port"
    );
    assert_eq!(joined.hash_deletions, Vec::<String>::new());
    seen.push(joined.lines);

    let b = VdePlug::spawn(&dir, "clientB");
    seen.push(step(&mut events, "client B joining", 1, |l| l.starts_with("3023 ")).lines);

    let (mac_a, mac_b) = (station_mac(0x0a), station_mac(0x0b));
    let hello = frame(BROADCAST, mac_a, TEST_ETHERTYPE, 46);
    a.send(&hello);
    b.expect_frame(&hello);
    let answer = frame(mac_a, mac_b, TEST_ETHERTYPE, 46);
    b.send(&answer);
    a.expect_frame(&answer);
    let learned = step(&mut events, "learning", 2, |l| l.starts_with("3011 "));
    assert_eq!(
        learned.lines,
        ["3011 hash/+ 02:00:00:00:00:0a VLAN 00:00 Port 1", "3011 hash/+ 02:00:00:00:00:0b VLAN 00:00 Port 2"]
    );
    seen.push(learned.lines);

    // A second endpoint on an active port: no port/+, no flush.
    let mut c = VdePlug::spawn(&format!("vde://{dir}[1]"), "clientC");
    let joined = step(&mut events, "client C joining port 1", 1, |l| l.starts_with("3023 "));
    assert_eq!(joined.lines, ["3031 port/ep/+ Port 01 FD #", &descr_line(1, "clientC")]);
    assert_eq!(joined.hash_deletions, Vec::<String>::new(), "an endpoint joining an active port flushes nothing");
    seen.push(joined.lines);
    c.process().kill();
    let left = step(&mut events, "client C leaving", 1, |l| l.starts_with("3032 "));
    assert_eq!(left.lines, ["3032 port/ep/- Port 01 FD #"]);
    assert_eq!(left.hash_deletions, Vec::<String>::new(), "the port stays active");
    seen.push(left.lines);

    // A new port becoming active: vde_switch flushes the VLAN, vswitch not.
    let _d = VdePlug::spawn(&dir, "clientD");
    let joined = step(&mut events, "client D joining", 1, |l| l.starts_with("3023 "));
    let flushed = match target {
        Target::VdeSwitch => vec![HASH_DEL_A, HASH_DEL_B],
        Target::Vswitch => vec![],
    };
    assert_eq!(joined.hash_deletions, flushed, "{target:?}: a port becoming active");
    seen.push(joined.lines);

    // Events a command causes come before its status line.
    assert_eq!(events.cmd("port/create 7"), "3021 port/+ 07\n1000 Success\n");

    // A's port goes inactive: vde_switch flushes everything (what is left),
    // vswitch forgets exactly the stations of port 1.
    let mut a = a;
    a.process().kill();
    let left = step(&mut events, "client A leaving", 1, |l| l.starts_with("3022 "));
    assert_eq!(left.lines, ["3032 port/ep/- Port 01 FD #", "3022 port/- 01"]);
    let (forgotten, table) = match target {
        Target::VdeSwitch => (vec![], ""),
        Target::Vswitch => {
            (vec![HASH_DEL_A], "Hash: 0026 Addr: 02:00:00:00:00:0b VLAN 0000 to port: 002  age # secs\n")
        }
    };
    assert_eq!(left.hash_deletions, forgotten, "{target:?}: a port becoming inactive");
    seen.push(left.lines);
    let printed = mask(&quiet.cmd("hash/print"), Path::new("/nonexistent"));
    assert_eq!(printed, format!("0000 DATA END WITH '.'\n{table}.\n1000 Success\n"), "{target:?}: table after");

    assert_eq!(quiet.drain_for(SETTLE), "", "a session without subscriptions gets no events");
    assert_eq!(events.cmd("debug/del port"), "1000 Success\n");
    assert_eq!(events.cmd("debug/del port"), "1002 No such file or directory\n");
    assert_eq!(events.cmd("debug/del hash/"), "1000 Success\n");
    drop(b);
    assert_eq!(events.drain_for(SETTLE), "", "no events once unsubscribed");
    seen
}

#[test]
fn join_and_leave_events_match_vde_switch() {
    let reference = joins_and_leaves(Target::VdeSwitch);
    let ours = joins_and_leaves(Target::Vswitch);
    assert_eq!(ours, reference);
}

/// `port/epclose` from one session: the closing session sees the events
/// before its status line, another subscribed session sees them too, and
/// the client's control stream is closed.
fn epclose_events(target: Target) {
    let sw = Switch::start(target, &[]);
    let mut mgmt = sw.mgmt();
    let mut plug = VdePlug::spawn(sw.ctl_dir().to_str().expect("path"), "closeme");
    let port = plug.wait_attached(&mut mgmt, "closeme");
    let reply = mgmt.cmd_ok(&format!("port/print {port}"));
    let id: u32 = reply
        .lines()
        .find_map(|l| l.strip_prefix("  -- endpoint ID "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok())
        .expect("endpoint line");
    let mut closer = Console::open(&sw.mgmt_path());
    let mut watcher = Console::open(&sw.mgmt_path());
    assert_eq!(closer.cmd("debug/add port/"), "1000 Success\n");
    assert_eq!(watcher.cmd("debug/add port/ep/-"), "1000 Success\n");
    let expected = format!("3032 port/ep/- Port {port:02} FD {id:2}\n3022 port/- {port:02}\n1000 Success\n");
    assert_eq!(closer.cmd(&format!("port/epclose {port} {id}")), expected);
    let seen = watcher.lines_until("the watcher's event", 1, |l| l.starts_with("3032 "));
    assert_eq!(seen, [format!("3032 port/ep/- Port {port:02} FD {id:2}")]);
    common::wait_until(common::EVENT_TIMEOUT, "vde_plug to notice the closed port", || plug.process().exit_status());
}

test_both_targets!(epclose_events);
