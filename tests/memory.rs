//! Memory flat in `-n`: port state exists for the ports that exist, so a
//! switch started with `-n 65535` (as Kathara starts one per collision
//! domain) costs about what one with the default 32 ports does, and a
//! client may still attach to port 60000.

mod common;

use common::station::exchange;
use common::*;

/// A switch with `-n numports` and two clients exchanging frames, one of
/// them on `far_port`; returns the switch's RSS in KiB meanwhile.
fn rss_with_clients(target: Target, numports: u32, far_port: u32) -> u64 {
    let sw = Switch::start(target, &["-n", &numports.to_string()]);
    let near = Client::connect(&sw.ctl_dir(), None, "near");
    let far = Client::connect(&sw.ctl_dir(), Some(far_port), "far");
    assert_eq!(far.port(), far_port);
    exchange(&near, station_mac(1), &far, station_mac(2));
    let listed = sw.mgmt().port(far_port).expect("the far port is listed");
    assert_eq!(listed.endpoints.len(), 1);
    rss_kib(sw.pid())
}

/// Attaching to port 60000 of a 65535-port switch works on both switches.
fn port_60000_of_65535(target: Target) {
    rss_with_clients(target, 65535, 60000);
}

test_both_targets!(port_60000_of_65535);

#[test]
fn rss_with_65535_ports_stays_near_that_with_32() {
    let small = rss_with_clients(Target::Vswitch, 32, 31);
    let large = rss_with_clients(Target::Vswitch, 65535, 60000);
    eprintln!("vswitch RSS: -n 32 {small} KiB, -n 65535 {large} KiB");
    // Allocating per slot of -n cost over 11 MiB more here; a bound well
    // above the noise of allocator and page-table growth.
    assert!(large * 2 <= small * 3, "RSS grows with -n: {small} KiB with -n 32, {large} KiB with -n 65535");
}
