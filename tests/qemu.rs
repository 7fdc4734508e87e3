//! QEMU guests without libvdeplug: `--stream` and `--dgram` ports, for
//! `-netdev stream` and `-netdev dgram`, beside `-netdev vde` and a UML
//! guest on one switch (issue 12). Guests are real QEMU (TCG) with the
//! host's kernel and a busybox initramfs (`common/qemu.rs`).
//!
//! A vhost-user guest pair runs against `vswitch-floor` (issue 15).
//!
//! Every wait is bounded; guests and switches are stopped by `Drop` (by
//! process group / PID), also on panic.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::process::ProcessGuard;
use common::qemu::{Backend, Guest, Image};
use common::uml::{Eth0, GuestSpec, run_guests};
use common::{Switch, Target};

/// How long a TCG guest may take to boot and ping its peers, with both
/// cores shared by other tests.
const GUEST_TIMEOUT: Duration = Duration::from_secs(200);

fn start_switch(sockets: &Path) -> Switch {
    let stream = sockets.join("qemu.stream");
    let dgram = sockets.join("qemu.dgram");
    Switch::start(Target::Vswitch, &["--stream", stream.to_str().unwrap(), "--dgram", dgram.to_str().unwrap()])
}

fn wait_ready(guests: &mut [Guest]) {
    common::wait_until(GUEST_TIMEOUT, "QEMU guests to bring eth0 up", || {
        guests.iter().all(|g| g.console().contains("READY")).then_some(())
    });
}

#[test]
fn stream_dgram_vde_and_uml_guests_ping_each_other() {
    let sockets = tempfile::tempdir().unwrap();
    let sw = start_switch(sockets.path());
    let image = Image::build();
    let stream = sockets.path().join("qemu.stream");
    let dgram = sockets.path().join("qemu.dgram");
    let ctl = sw.ctl_dir();
    let mut guests = vec![
        Guest::boot(&image, Backend::Stream(&stream), 11, &[12, 13, 14]),
        Guest::boot(&image, Backend::Dgram(&dgram), 12, &[11, 13, 14]),
        Guest::boot(&image, Backend::Vde(&ctl), 13, &[11, 12, 14]),
    ];
    wait_ready(&mut guests);
    let uml = [GuestSpec::new(14, Eth0::Vde { port: None }, &[11, 12, 13])];
    let outcome = run_guests(Target::Vswitch, &ctl, &uml, || sw.mgmt().cmd_ok("port/print"));
    outcome.assert_results(&uml);
    for (guest, peers) in guests.iter_mut().zip([[12, 13, 14], [11, 13, 14], [11, 12, 14]]) {
        guest.assert_pinged(&peers, GUEST_TIMEOUT);
    }
    let listing = outcome.inspected.expect("all guests were up");
    let modules: Vec<&str> = listing.lines().filter_map(|l| l.split(" module ").nth(1)).collect();
    assert_eq!(modules.len(), 4, "four endpoints:\n{listing}");
    assert_eq!(listing.matches("Port 0").count(), 4, "four ports:\n{listing}");
    let stream_line = modules.iter().find(|m| m.starts_with("stream ")).unwrap_or_else(|| panic!("{listing}"));
    assert!(stream_line.contains(&format!("{} user=root pid=", stream.display())), "{stream_line}");
    assert!(modules.iter().any(|m| m.starts_with("dgram ")), "{listing}");
    assert_eq!(modules.iter().filter(|m| m.starts_with("unix prog ")).count(), 2, "{listing}");
}

#[test]
fn a_restarted_switch_serves_new_guests_on_the_same_paths() {
    let sockets = tempfile::tempdir().unwrap();
    let stream = sockets.path().join("qemu.stream");
    let dgram = sockets.path().join("qemu.dgram");
    let image = Image::build();
    let first = start_switch(sockets.path());
    drop(first);
    assert!(!stream.exists() && !dgram.exists(), "sockets removed at exit");
    // A stale socket file (a switch killed without cleaning up) is replaced.
    let _stale = std::os::unix::net::UnixListener::bind(&stream).map(drop);
    let _sw = start_switch(sockets.path());
    let mut guests = [
        Guest::boot(&image, Backend::Stream(&stream), 21, &[22]),
        Guest::boot(&image, Backend::Dgram(&dgram), 22, &[21]),
    ];
    guests[0].assert_pinged(&[22], GUEST_TIMEOUT);
    guests[1].assert_pinged(&[21], GUEST_TIMEOUT);
}

/// Two vhost-user guests wired to each other by `vswitch-floor`, which
/// moves frames with the same vhost-user port code vswitch uses: the QEMU
/// side of the vhost-user path (the memfd memory, the negotiation QEMU 7.2
/// does, the legacy interrupt line) before any switching is involved.
#[test]
fn vhost_user_guests_ping_each_other_through_the_floor() {
    let sockets = tempfile::tempdir().unwrap();
    let paths = [sockets.path().join("a.vhost"), sockets.path().join("b.vhost")];
    let mut floor = Command::new(env!("CARGO_BIN_EXE_vswitch-floor"));
    for p in &paths {
        floor.arg("--vhost-user").arg(p);
    }
    let _floor = ProcessGuard::spawn(floor.stdin(Stdio::null()));
    common::wait_until(common::EVENT_TIMEOUT, "the floor's vhost-user sockets", || {
        paths.iter().all(|p| p.exists()).then_some(())
    });
    let image = Image::build();
    let mut guests = [
        Guest::boot(&image, Backend::VhostUser(&paths[0]), 31, &[32]),
        Guest::boot(&image, Backend::VhostUser(&paths[1]), 32, &[31]),
    ];
    guests[0].assert_pinged(&[32], GUEST_TIMEOUT);
    guests[1].assert_pinged(&[31], GUEST_TIMEOUT);
}
