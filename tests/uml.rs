//! End-to-end tests with User-Mode Linux guests attached to a switch.
//!
//! Every scenario runs against the reference `vde_switch` (proving the test
//! itself is right) and against `vswitch`. The guests, their init script
//! `tests/guest/init.sh`, the host-specific workarounds they need and the
//! parsing of their `RESULT ...` console lines live in `common/uml.rs`; the
//! switches are `common::Switch` fixtures.
//!
//! Every wait is bounded; switches and guests are stopped (by PID / by the
//! process group created for them, never by name) and temporary directories
//! removed when the values are dropped, also on panic.

mod common;

use common::uml::{Eth0, GuestSpec, Outcome, name, on_both_targets, run_guests};
use common::{Switch, Target};

/// Starts a switch for `target`, runs the guests of `specs` on it and checks
/// their results; `inspect` runs while all guests are attached.
fn run_checked<T>(target: Target, specs: &[GuestSpec], inspect: impl FnOnce(&Switch) -> T) -> Outcome<T> {
    let sw = Switch::start(target, &[]);
    let out = run_guests(target, &sw.ctl_dir(), specs, || inspect(&sw));
    out.assert_results(specs);
    out
}

// ---------------------------------------------------------------------------
// port/print normalisation (spec §8.6)

/// Masks what legitimately differs between runs and switches: counter
/// values (their field widths are kept and checked), endpoint IDs (file
/// descriptor numbers) and client PIDs in descriptions.  Returns the masked
/// text and the (IN pkts, OUT pkts) of each port, in order.
fn normalize_port_print(raw: &str) -> Result<(String, Vec<(u64, u64)>), String> {
    fn field(s: &str, width: usize, what: &str, line: &str) -> Result<u64, String> {
        if s.len() != width {
            return Err(format!("{what}: field width {} != {width} in {line:?}", s.len()));
        }
        let t = s.trim_start_matches(' ');
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{what}: not a right-aligned number in {line:?}"));
        }
        t.parse().map_err(|e| format!("{what}: {e} in {line:?}"))
    }
    let mask = |width: usize| format!("{:>width$}", "N");
    let mut out = String::new();
    let mut counters: Vec<(u64, u64)> = Vec::new();
    for line in raw.split_inclusive('\n') {
        let body = line.strip_suffix('\n').unwrap_or(line);
        let nl = if line.ends_with('\n') { "\n" } else { "" };
        let counter = [(" IN:  pkts ", true), (" OUT: pkts ", false)].into_iter().find(|(p, _)| body.starts_with(p));
        if let Some((prefix, is_in)) = counter {
            // "%10lld          bytes %20lld"
            let rest = &body[prefix.len()..];
            const MID: &str = "          bytes ";
            if rest.len() != 10 + MID.len() + 20 || &rest[10..10 + MID.len()] != MID {
                return Err(format!("bad counter line {body:?}"));
            }
            let pkts = field(&rest[..10], 10, "pkts", body)?;
            let _bytes = field(&rest[10 + MID.len()..], 20, "bytes", body)?;
            if is_in {
                counters.push((pkts, 0));
            } else if let Some(last) = counters.last_mut() {
                last.1 = pkts;
            }
            out += &format!("{prefix}{}{MID}{}{nl}", mask(10), mask(20));
        } else if let Some(rest) = body.strip_prefix("  -- endpoint ID ") {
            let (id, tail) = rest.split_at(rest.len().min(4));
            if id.len() != 4 || !id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("bad endpoint ID in {body:?}"));
            }
            // client PIDs in the description
            let mut tail = tail.to_string();
            if let Some(i) = tail.find(" pid=") {
                let start = i + " pid=".len();
                let end = tail[start..].find(|c: char| !c.is_ascii_digit()).map_or(tail.len(), |e| start + e);
                if end == start {
                    return Err(format!("pid= without a number in {body:?}"));
                }
                tail.replace_range(start..end, "N");
            }
            out += &format!("  -- endpoint ID NNNN{tail}{nl}");
        } else {
            out += line;
        }
    }
    Ok((out, counters))
}

// ---------------------------------------------------------------------------
// scenarios

/// (a) `eth0=vde,DIR,MAC` (automatic port) and `eth0=vde,DIR,MAC,5` ping
/// each other; guest 1 also arpings.
const SPECS_VDE_PAIR: &[GuestSpec] = &[
    GuestSpec { arping: true, ..GuestSpec::new(1, Eth0::Vde { port: None }, &[2]) },
    GuestSpec::new(2, Eth0::Vde { port: Some(5) }, &[1]),
];

/// (b) the old `daemon` transport pings a `vde` guest and back.
const SPECS_DAEMON_VDE: &[GuestSpec] = &[
    GuestSpec { arping: true, ..GuestSpec::new(3, Eth0::Daemon, &[4]) },
    GuestSpec::new(4, Eth0::Vde { port: None }, &[3]),
];

/// (c) a `daemon` guest (automatic port: 1) and a `vde` guest on port 5.
const SPECS_PORT_PRINT: &[GuestSpec] =
    &[GuestSpec::new(5, Eth0::Daemon, &[6]), GuestSpec::new(6, Eth0::Vde { port: Some(5) }, &[5])];

/// `port/print` of scenario (c) after `normalize_port_print`: spec §8.6 format,
/// §10.1 (daemon: `Current User: NONE`, empty description) and §10.2 (vde:
/// `UML vde_transport user=root pid=N`).
const EXPECTED_PORT_PRINT: &str = "\
0000 DATA END WITH '.'
Port 0001 untagged_vlan=0000 ACTIVE - Unnamed Allocatable
 Current User: NONE Access Control: (User: NONE - Group: NONE)
 IN:  pkts          N          bytes                    N
 OUT: pkts          N          bytes                    N
  -- endpoint ID NNNN module unix prog   : 
Port 0005 untagged_vlan=0000 ACTIVE - Unnamed Allocatable
 Current User: root Access Control: (User: NONE - Group: NONE)
 IN:  pkts          N          bytes                    N
 OUT: pkts          N          bytes                    N
  -- endpoint ID NNNN module unix prog   : UML vde_transport user=root pid=N
.
1000 Success
";

fn scenario_ping(target: Target, specs: &[GuestSpec]) {
    run_checked(target, specs, |_| ());
}

/// Runs scenario (c) and checks its `port/print` against the spec; returns
/// the raw and the normalised output.
fn scenario_port_print(target: Target) -> (String, String) {
    let kind = name(target);
    // The session checks the banner ("VDE switch V.2.3.2") when it connects.
    let out = run_checked(target, SPECS_PORT_PRINT, |sw| sw.mgmt().cmd("port/print"));
    let raw = out
        .inspected
        .clone()
        .unwrap_or_else(|| panic!("{kind}: a guest exited before port/print could be taken\n{}", out.dump()));
    println!("===== {kind} port/print (daemon guest + vde guest on port 5) =====\n{raw}=====");
    let (norm, counters) =
        normalize_port_print(&raw).unwrap_or_else(|e| panic!("{kind}: port/print format: {e}\nraw output:\n{raw}"));
    assert_eq!(
        norm, EXPECTED_PORT_PRINT,
        "{kind}: normalised port/print differs from the spec (left: got, right: expected)\nraw output:\n{raw}"
    );
    // Both guests pinged each other through the switch: every port saw traffic.
    for (i, (inp, outp)) in counters.iter().enumerate() {
        assert!(
            *inp > 0 && *outp > 0,
            "{kind}: port #{i} counters IN {inp} / OUT {outp} after successful pings\n{raw}"
        );
    }
    (raw, norm)
}

// ---------------------------------------------------------------------------
// tests

#[test]
fn uml_vde_auto_and_port5_ping_vde_switch() {
    scenario_ping(Target::VdeSwitch, SPECS_VDE_PAIR);
}

#[test]
fn uml_vde_auto_and_port5_ping_vswitch() {
    scenario_ping(Target::Vswitch, SPECS_VDE_PAIR);
}

#[test]
fn uml_daemon_transport_pings_vde_guest_vde_switch() {
    scenario_ping(Target::VdeSwitch, SPECS_DAEMON_VDE);
}

#[test]
fn uml_daemon_transport_pings_vde_guest_vswitch() {
    scenario_ping(Target::Vswitch, SPECS_DAEMON_VDE);
}

#[test]
fn uml_port_print_vde_switch() {
    scenario_port_print(Target::VdeSwitch);
}

/// The same scenario against both switches at once; each must match the spec
/// and the two normalised outputs must be identical.
#[test]
fn uml_port_print_vswitch_matches_vde_switch() {
    let (mine, reference) = on_both_targets(scenario_port_print);
    assert_eq!(
        mine.1, reference.1,
        "normalised port/print: vswitch (left) vs vde_switch (right)\nvswitch raw:\n{}\nvde_switch raw:\n{}",
        mine.0, reference.0
    );
}

#[test]
fn normalize_port_print_masks_only_variable_fields() {
    let raw = "0000 DATA END WITH '.'\n\
Port 0001 untagged_vlan=0000 ACTIVE - Unnamed Allocatable\n \
Current User: root Access Control: (User: NONE - Group: NONE)\n \
IN:  pkts          4          bytes                  402\n \
OUT: pkts          1          bytes                   60\n  \
-- endpoint ID 0003 module unix prog   : vm1 user=root pid=12952\n\
.\n1000 Success\n";
    let (n, c) = normalize_port_print(raw).unwrap();
    assert_eq!(c, vec![(4, 1)]);
    assert!(n.contains("  -- endpoint ID NNNN module unix prog   : vm1 user=root pid=N\n"));
    assert!(n.contains(" IN:  pkts          N          bytes                    N\n"));
    // a misaligned counter is a format error, not something to mask
    assert!(normalize_port_print(" IN:  pkts 4 bytes 402\n").is_err());
}
