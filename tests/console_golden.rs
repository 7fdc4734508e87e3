//! The console, byte for byte: one long session — every command of `help`,
//! their errors and edge cases — is replayed against the reference
//! vde_switch and against vswitch, each with the same three real clients
//! attached and the same frames exchanged, and the two transcripts must be
//! identical once run-dependent values (pids, uptimes, ages, descriptor
//! numbers, the temporary directory) are masked.
//!
//! Where vswitch differs on purpose (spec §12: negative or overflowing
//! numbers are refused), the commands are not in the shared session;
//! `deliberate_differences` asserts vswitch's behaviour for them instead.

mod common;
#[path = "fixtures/console/support.rs"]
mod support;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;

use common::station::exchange;
use common::{EVENT_TIMEOUT, ProcessGuard, Switch, Target, VdePlug, process_gone, station_mac, wait_until};
use support::{Console, END_OF_SESSION, SWITCH_MAC, Transcript, assert_same_text, mask};

/// The shared session. `{DIR}` stands for the switch's private directory,
/// `{EP3}` for the endpoint ID of the client on port 3 (a descriptor
/// number, so it differs between the switches). The session ends with
/// `logout`; a second session then stops the switch with `shutdownx`.
const SESSION: &[&str] = &[
    // Help, prefix matching and lines that are not commands.
    "help",
    "help hash/s",
    "help port/print\r",
    "helpme",
    "showinfo",
    "ds/showinfo",
    "port/showinfo",
    "port",
    "nosuchcommand",
    "",
    "   ",
    "# a comment",
    "\t port/showinfo",
    // Ports with clients attached; `atoi` arguments.
    "port/print",
    "port/allprint",
    "port/print 1",
    "port/printjunk",
    "port/print 40",
    "port/print 0x2",
    "port/allprint 4",
    // The MAC table the frames filled; `hash/find` prints port + 1.
    "hash/showinfo",
    "hash/print",
    "hash/find 02:00:00:00:00:0b",
    "hash/find 2.0.0.0.0.a 0",
    "hash/find 02:00:00:00:00:0a 1",
    "hash/find 02:00:00:00:00:0c",
    "hash/find zz",
    "hash/find",
    "hash/setsize 100",
    "hash/showinfo",
    "hash/setsize 0",
    "hash/setgcint 5",
    "hash/setexpire 200",
    "hash/setminper 4",
    "hash/showinfo",
    "hash/print",
    // Debug categories; from here on port events show up in replies.
    "debug/list",
    "debug/list port/ep",
    "debug/list nomatch",
    "debug/add nomatch",
    "debug/del port",
    "debug/del mgmt",
    "debug/del nomatch",
    "debug/add port",
    "debug/add port",
    "debug/add port ",
    "debug/list port",
    // Creating and removing ports (`port/create 0x14` reads as 0: "any").
    "port/create 5",
    "port/create 5",
    "port/create 32",
    "port/create 0x14",
    "port/createauto",
    "port/allprint 4",
    "port/remove 6",
    "port/remove 6",
    "port/remove 1",
    "port/remove 99",
    "port/allocatable 4 1",
    "port/allocatable 4",
    "port/allocatable 9 1",
    "port/createauto",
    // VLANs; `%i` arguments (octal, hex).
    "vlan/create 10",
    "vlan/create 10",
    "vlan/create 0x14",
    "vlan/create 4094",
    "vlan/create 4093",
    "port/setvlan 010 10",
    "port/setvlan 5 010",
    "port/setvlan 5 0xa",
    "port/setvlan 5 4095",
    "port/setvlan 5 4096",
    "port/setvlan 5",
    "port/setvlan 2 10",
    "vlan/addport 10 1",
    "vlan/addport 10 5",
    "vlan/addport 4094 1",
    "vlan/addport 11 1",
    "vlan/addport 10 99",
    "vlan/print",
    "vlan/allprint",
    "vlan/allprint 0",
    "vlan/allprint 10",
    "vlan/print 10",
    "vlan/print 11",
    "vlan/print 4094",
    "vlan/delport 10 2",
    "vlan/delport 10 5",
    "vlan/delport 10 3",
    "vlan/remove 10",
    "vlan/remove 4094",
    "vlan/remove 4095",
    // Spanning tree, off.
    "fstp/showinfo",
    "fstp/print",
    "fstp/print 10",
    "fstp/print 4094",
    "fstp/print 7",
    "fstp/setedge 0 1 1",
    "fstp/setedge 0 9 1",
    "fstp/setedge 4094 1 1",
    "fstp/setedge 0 99 1",
    "fstp/bonus 10 2 100",
    "fstp/bonus 0 1",
    "fstp/print",
    "fstp/setfstp 0",
    // Access control by name, number, NONE/ANY.
    "port/setuser 5 root",
    "port/setgroup 5 daemon",
    "port/allprint 5",
    "port/setuser 5 0",
    "port/setuser 5 12345",
    "port/setgroup 5 54321",
    "port/allprint 5",
    "port/setuser 5 nosuchuser",
    "port/setgroup 5 nosuchgroup",
    "port/setuser 5 NONE",
    "port/setgroup 5 ANY",
    "port/setuser 9 root",
    "port/setuser 99 root",
    "port/setuser 5",
    "port/allprint 5",
    // Closing an endpoint: its events come before the status line.
    "port/epclose 3 {EP3}",
    "port/epclose 3 {EP3}",
    "port/epclose 99 1",
    "port/epclose 1",
    "port/print 3",
    "port/allprint 3",
    "port/resetcounter 1",
    "port/resetcounter 99",
    "port/resetcounter 9",
    "port/print 1",
    "port/resetcounter",
    "port/allprint",
    // Port count and hub mode.
    "port/setnumports 0",
    "port/setnumports 4",
    "port/setnumports 64",
    "port/showinfo",
    "port/sethub 1",
    "port/showinfo",
    "fstp/setfstp 1",
    "fstp/setfstp 0",
    "port/sethub 0",
    // Plugins (none loaded).
    "plugin/list",
    "plugin/add nosuchplugin",
    "plugin/del nosuchplugin",
    // Scripts: echo of every line, events in place, nesting, errors.
    "load {DIR}/script.rc",
    "load {DIR}/missing.rc",
    "load",
    "debug/del port",
    "logout",
];

/// Written to `{DIR}/script.rc`: comments, blank and empty lines, a `\r`,
/// session-ending commands (ignored in scripts), a nested script, and a
/// last line without newline.
const SCRIPT: &str = "# golden script\nport/create 7\n\n   \n\tport/allprint 7\nbogus\nhelp port/sh\r\nlogout\n\
                      shutdown\nload {DIR}/nested.rc\nport/showinfo";
const NESTED_SCRIPT: &str = "vlan/allprint 4093\nload {DIR}/missing.rc\n";

/// Starts a switch with three clients on ports 1–3, exchanges frames
/// between the first two, plays [`SESSION`] and returns the masked
/// transcript.
fn transcript(target: Target) -> String {
    let sw = Switch::start(target, &["--macaddr", SWITCH_MAC]);
    let dir = sw.dir().display().to_string();
    fs::write(sw.dir().join("script.rc"), SCRIPT.replace("{DIR}", &dir)).expect("write script");
    fs::write(sw.dir().join("nested.rc"), NESTED_SCRIPT.replace("{DIR}", &dir)).expect("write nested script");

    let mut mgmt = sw.mgmt();
    let ctl_dir = sw.ctl_dir().display().to_string();
    let mut vm1 = VdePlug::spawn(&ctl_dir, "vm1");
    assert_eq!(vm1.wait_attached(&mut mgmt, "vm1"), 1, "vm1's port");
    let mut vm2 = VdePlug::spawn(&format!("vde://{ctl_dir}"), "vm2");
    assert_eq!(vm2.wait_attached(&mut mgmt, "vm2"), 2, "vm2's port");
    let _vm3 = ProcessGuard::spawn(
        Command::new("vde_plug")
            .args(["-D", "vm3", &ctl_dir, "null://"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    assert_eq!(mgmt.wait_for_endpoint("vm3", |d| d.starts_with("vm3 ")), 3, "vm3's port");

    // An ARP-like exchange: a broadcast, a unicast answer, a unicast back.
    exchange(&vm1, station_mac(0x0a), &vm2, station_mac(0x0b));

    let ep3 = endpoint_id(&mgmt.cmd_ok("port/print 3"));
    let mut console = Console::open(&sw.mgmt_path());
    let mut t = Transcript::default();
    for &command in SESSION {
        let command = command.replace("{DIR}", &dir);
        let line = command.replace("{EP3}", &ep3);
        let reply = if line == "logout" {
            console.send(b"logout\n");
            console.until_eof("logout")
        } else {
            console.cmd(&line)
        };
        t.record(&command, &reply);
    }
    let mut last = Console::open(&sw.mgmt_path());
    last.send(b"shutdownx\n");
    t.record("shutdownx", &last.until_eof("shutdownx"));
    wait_until(EVENT_TIMEOUT, "the switch to exit after shutdownx", || process_gone(sw.pid()).then_some(()));
    mask(t.text(), Path::new(&dir))
}

/// The (decimal) endpoint ID in a one-endpoint `port/print` reply.
fn endpoint_id(reply: &str) -> String {
    let id = reply
        .lines()
        .find_map(|l| l.strip_prefix("  -- endpoint ID "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no endpoint line in {reply:?}"));
    // `port/epclose` reads `%i`: without the zero padding, or it is octal.
    id.parse::<u32>().unwrap_or_else(|_| panic!("endpoint ID {id:?}")).to_string()
}

#[test]
fn transcript_matches_vde_switch() {
    assert!(SESSION.len() >= 60);
    let (reference, ours) = thread::scope(|s| {
        let reference = s.spawn(|| transcript(Target::VdeSwitch));
        let ours = s.spawn(|| transcript(Target::Vswitch));
        (reference.join().expect("vde_switch run"), ours.join().expect("vswitch run"))
    });
    // The comparison can only fail for the right reasons if the reference
    // really did what the session expects.
    assert!(reference.contains("3032 port/ep/- Port 03 FD #\n3022 port/- 03\n1000 Success"), "{reference}");
    assert!(reference.ends_with(&format!("vde$ shutdownx\n{END_OF_SESSION}\n")), "{reference}");
    assert_same_text("vswitch's console transcript (vs vde_switch's)", &reference, &ours);
}

/// Commands whose numbers are negative or do not fit 32 bits: vde_switch
/// wraps them around (spec §12), vswitch refuses them and changes nothing.
#[test]
fn deliberate_differences() {
    let sw = Switch::start(Target::Vswitch, &["--macaddr", SWITCH_MAC]);
    let mut console = Console::open(&sw.mgmt_path());
    assert_eq!(console.cmd("port/create 1"), "1000 Success\n");
    let hash_info = console.cmd("hash/showinfo");
    let ports = console.cmd("port/allprint");
    let refused = "1022 Invalid argument\n";
    let empty_block_refused = "0000 DATA END WITH '.'\n.\n1022 Invalid argument\n";
    for (command, expected) in [
        ("port/print 4294967297", empty_block_refused),
        ("port/allprint -1", empty_block_refused),
        ("port/create 4294967301", refused),
        ("port/create -3", refused),
        ("port/setnumports 99999999999", refused),
        ("port/setvlan -1 0", refused),
        ("port/setvlan 0x100000001 0", refused),
        ("port/allocatable 1 -1", refused),
        ("port/setuser 1 4294967295", refused),
        ("port/setgroup 1 4294967296", refused),
        ("port/resetcounter -1", refused),
        ("hash/setexpire -5", refused),
        ("hash/setminper 99999999999", refused),
        ("hash/setgcint -1", refused),
        ("hash/setsize 4294967296", refused),
        ("vlan/create 4294967306", refused),
        ("vlan/addport 0 4294967297", refused),
        ("fstp/bonus 0 1 -5", refused),
    ] {
        assert_eq!(console.cmd(command), expected, "{command}");
    }
    assert_eq!(console.cmd("hash/showinfo"), hash_info, "hash settings unchanged");
    assert_eq!(console.cmd("port/allprint"), ports, "ports unchanged");
}
