//! Jumbo frames (`--mtu N`): datagrams up to N+18 bytes (an 802.1Q-tagged
//! frame of that MTU) cross the switch between two `vde_plug` clients;
//! longer ones are dropped and counted as `oversize`. Without the option the
//! limit stays vde_switch's 1518 bytes.

mod common;

use common::station::exchange;
use common::*;

/// The `oversize=` counter of `port/drops PORT`.
fn oversize(mgmt: &mut Mgmt, port: u32) -> u64 {
    let reply = mgmt.cmd_ok(&format!("port/drops {port}"));
    reply
        .split_whitespace()
        .find_map(|w| w.strip_prefix("oversize="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no oversize counter in {reply:?}"))
}

/// Two `vde_plug` clients on a switch started with `args`.
fn plugs(args: &[&str]) -> (Switch, VdePlug, u32, VdePlug, u32) {
    let sw = Switch::start(Target::Vswitch, args);
    let dir = sw.ctl_dir().display().to_string();
    let mut mgmt = sw.mgmt();
    let mut a = VdePlug::spawn(&dir, "jumbo-a");
    let port_a = a.wait_attached(&mut mgmt, "jumbo-a");
    let mut b = VdePlug::spawn(&dir, "jumbo-b");
    let port_b = b.wait_attached(&mut mgmt, "jumbo-b");
    (sw, a, port_a, b, port_b)
}

#[test]
fn mtu_9000_carries_9018_byte_datagrams_and_counts_longer_ones() {
    let (sw, a, port_a, b, _) = plugs(&["--mtu", "9000"]);
    let (mac_a, mac_b) = (station_mac(0x0a), station_mac(0x0b));
    exchange(&a, mac_a, &b, mac_b);
    let jumbo = frame(mac_b, mac_a, TEST_ETHERTYPE, 9000 + 4);
    assert_eq!(jumbo.len(), 9018);
    a.send(&jumbo);
    b.expect_frame(&jumbo);
    let back = frame(BROADCAST, mac_b, TEST_ETHERTYPE, 8000);
    b.send(&back);
    a.expect_frame(&back);

    let mut mgmt = sw.mgmt();
    assert_eq!(oversize(&mut mgmt, port_a), 0);
    let too_long = frame(mac_b, mac_a, TEST_ETHERTYPE, 9000 + 5);
    assert_eq!(too_long.len(), 9019);
    a.send(&too_long);
    // Frames are handled in order: once this one arrives, the long one
    // has been dealt with.
    let after = frame(mac_b, mac_a, TEST_ETHERTYPE, 46);
    a.send(&after);
    b.expect_frame(&after);
    assert_eq!(oversize(&mut mgmt, port_a), 1, "the 9019-byte datagram is counted");
    assert_silent(&[&a, &b]);
}

#[test]
fn without_mtu_the_limit_stays_1518_bytes() {
    let (sw, a, port_a, b, _) = plugs(&[]);
    let (mac_a, mac_b) = (station_mac(0x0a), station_mac(0x0b));
    exchange(&a, mac_a, &b, mac_b);
    let largest = frame(mac_b, mac_a, TEST_ETHERTYPE, 1504);
    a.send(&largest);
    b.expect_frame(&largest);
    a.send(&frame(mac_b, mac_a, TEST_ETHERTYPE, 1505));
    a.send(&frame(mac_b, mac_a, TEST_ETHERTYPE, 9000));
    let after = frame(mac_b, mac_a, TEST_ETHERTYPE, 46);
    a.send(&after);
    b.expect_frame(&after);
    assert_eq!(oversize(&mut sw.mgmt(), port_a), 2);
}

#[test]
fn mtu_out_of_range_is_refused() {
    for bad in ["0", "65501", "-1"] {
        let out = std::process::Command::new(Target::Vswitch.program())
            .arg(format!("--mtu={bad}"))
            .args(["-s", "/nonexistent/never-created"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run vswitch");
        assert!(!out.status.success(), "--mtu {bad} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("Invalid MTU {bad}")), "--mtu {bad}: {stderr:?}");
    }
}
