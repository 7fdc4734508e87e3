//! Helpers shared by the VLAN and FSTP interoperability tests: switches
//! started with an rc file and a fixed MAC, `dpipe` cables between given
//! ports, and receiving that skips the BPDUs a spanning tree sends to every
//! port.

// Each test crate uses only part of these helpers.
#![allow(dead_code)]

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::common::{Mgmt, ProcessGuard, Station, Switch, Target, describe, wait_until};

/// The destination of every BPDU.
pub const BPDU_DST: [u8; 6] = [0x01, 0x80, 0xc2, 0x00, 0x00, 0x00];
/// How long a plug of a cable may take to show up on its switch.
const CABLE_TIMEOUT: Duration = Duration::from_secs(5);

/// A switch whose start-up configuration came from an rc file (`-f`);
/// the file's directory lives as long as the switch.
pub struct Configured {
    pub switch: Switch,
    _rc: TempDir,
}

impl std::ops::Deref for Configured {
    type Target = Switch;
    fn deref(&self) -> &Switch {
        &self.switch
    }
}

/// Starts `target` with `--macaddr 02:00:00:00:00:<mac>`, the rc file
/// `rc` (one command per line) and `extra` options.
pub fn start(target: Target, mac: u8, rc: &[&str], extra: &[&str]) -> Configured {
    let dir = tempfile::Builder::new().prefix("vswitch-rc-").tempdir().expect("create rc directory");
    let rc_path = dir.path().join("switch.rc");
    fs::write(&rc_path, rc.iter().map(|line| format!("{line}\n")).collect::<String>()).expect("write rc file");
    let mac = format!("02:00:00:00:00:{mac:02x}");
    let mut args = vec!["--macaddr", &mac, "-f", rc_path.to_str().expect("UTF-8 temp path")];
    args.extend_from_slice(extra);
    Configured { switch: Switch::start(target, &args), _rc: dir }
}

/// `dpipe vde_plug A[pa] = vde_plug B[pb]`, waited for until both ports
/// are active. Dropping the guard unplugs it (kills the whole group).
pub fn cable(a: &Switch, pa: u32, b: &Switch, pb: u32) -> ProcessGuard {
    let end = |sw: &Switch, p: u32| format!("{}[{p}]", sw.ctl_dir().display());
    let mut guard = ProcessGuard::spawn(
        Command::new("dpipe")
            .args(["vde_plug", &end(a, pa), "=", "vde_plug", &end(b, pb)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    for (sw, p) in [(a, pa), (b, pb)] {
        let mut mgmt = sw.mgmt();
        wait_until(CABLE_TIMEOUT, &format!("cable end on port {p}"), || {
            if let Some(status) = guard.exit_status() {
                panic!("dpipe exited early with {status}");
            }
            mgmt.port(p).filter(|s| s.active).map(|_| ())
        });
    }
    guard
}

pub fn is_bpdu(frame: &[u8]) -> bool {
    frame.starts_with(&BPDU_DST)
}

/// The next frame that is not a BPDU, if one arrives within `timeout`.
pub fn next_data(station: &dyn Station, timeout: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match station.recv_timeout(left) {
            Some(f) if is_bpdu(&f) => continue,
            other => return other,
        }
    }
}

/// Panics unless the next non-BPDU frame is exactly `expected`.
pub fn expect_data(station: &dyn Station, expected: &[u8]) {
    match next_data(station, crate::common::EVENT_TIMEOUT) {
        Some(got) if got == expected => {}
        Some(got) => panic!("{}: expected {}, received {}", station.name(), describe(expected), describe(&got)),
        None => panic!("{}: expected {}, received nothing", station.name(), describe(expected)),
    }
}

/// Panics if any station receives a non-BPDU frame within `quiet`.
pub fn expect_no_data(stations: &[&dyn Station], quiet: Duration) {
    std::thread::sleep(quiet);
    for s in stations {
        if let Some(f) = next_data(*s, Duration::ZERO) {
            panic!("{}: expected no frame, received {}", s.name(), describe(&f));
        }
    }
}

/// Counts the non-BPDU frames a station receives during `period`.
pub fn count_data(station: &dyn Station, period: Duration) -> usize {
    let deadline = Instant::now() + period;
    let mut n = 0;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match station.recv_timeout(left) {
            Some(f) if !is_bpdu(&f) => n += 1,
            Some(_) => {}
            None => break,
        }
    }
    n
}

/// The lines inside a command's `0000 DATA END WITH '.'` block, panicking
/// unless the command succeeded.
pub fn data(mgmt: &mut Mgmt, command: &str) -> String {
    let reply = mgmt.cmd_ok(command);
    let body = reply
        .strip_prefix("0000 DATA END WITH '.'\n")
        .and_then(|r| r.strip_suffix(".\n1000 Success\n"))
        .unwrap_or_else(|| panic!("{command:?}: not a data block: {reply:?}"));
    body.to_owned()
}

/// `fstp/print` without the ages, which depend on when each switch started.
pub fn fstp_print(mgmt: &mut Mgmt) -> String {
    data(mgmt, "fstp/print")
        .lines()
        .map(|line| match line.split_once(" age ") {
            Some((head, tail)) => {
                let rest = tail.split_once(' ').map_or("", |(_, r)| r);
                format!("{head} age _ {rest}\n")
            }
            None => format!("{line}\n"),
        })
        .collect()
}
