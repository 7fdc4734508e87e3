//! QEMU guests without libvdeplug: `--stream` and `--dgram` ports, for
//! `-netdev stream` and `-netdev dgram`, beside `-netdev vde` and a UML
//! guest on one switch (issue 12). Guests are real QEMU (TCG) with the
//! host's kernel and a busybox initramfs (`common/qemu.rs`).
//!
//! A guest on `--vhost-user` pings a UML guest, is killed and comes back
//! (issue 15).
//!
//! Every wait is bounded; guests and switches are stopped by `Drop` (by
//! process group / PID), also on panic.

mod common;

use std::path::Path;
use std::time::Duration;

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

/// A QEMU guest with a vhost-user NIC (memfd RAM shared with the switch)
/// and a UML guest on the same vswitch ping each other; killing QEMU with
/// SIGKILL frees its port, and a new QEMU on the same socket gets a port
/// and pings again (issue 15).
#[test]
fn a_vhost_user_guest_pings_a_uml_guest_and_comes_back_after_sigkill() {
    let sockets = tempfile::tempdir().unwrap();
    let vhost = sockets.path().join("qemu.vhost");
    let sw = Switch::start(Target::Vswitch, &["--vhost-user", vhost.to_str().unwrap()]);
    let ctl = sw.ctl_dir();
    let image = Image::build();
    let vhost_ports = || sw.mgmt().cmd_ok("port/print").matches("module vhost-user").count();
    const ROUNDS: [(u8, u8, &[u8]); 2] = [(41, 42, &[41]), (43, 44, &[43])];
    for (qemu_id, uml_id, uml_peers) in ROUNDS {
        let mut guest = Guest::boot(&image, Backend::VhostUser(&vhost), qemu_id, &[uml_id]);
        wait_ready(std::slice::from_mut(&mut guest));
        let uml = [GuestSpec::new(uml_id, Eth0::Vde { port: None }, uml_peers)];
        let outcome = run_guests(Target::Vswitch, &ctl, &uml, || sw.mgmt().cmd_ok("port/print"));
        outcome.assert_results(&uml);
        guest.assert_pinged(&[uml_id], GUEST_TIMEOUT);
        let listing = outcome.inspected.expect("both guests were up");
        let line = format!("module vhost-user  : {} user=root pid=", vhost.display());
        assert!(listing.contains(&line), "{line:?} in\n{listing}");
        guest.kill();
        common::wait_until(common::EVENT_TIMEOUT, "the killed guest's port to go", || {
            (vhost_ports() == 0).then_some(())
        });
    }
}
