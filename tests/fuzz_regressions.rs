//! Replays the fuzzers' seed corpus and every saved crasher, so a fixed
//! crash stays fixed without the nightly toolchain.

use std::fs;
use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = fs::read_dir(root.join(dir).join(target)) else { continue };
        for entry in entries.flatten() {
            let data = fs::read(entry.path()).expect("readable corpus file");
            check(&data);
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no corpus for fuzz target {target}");
}

#[test]
fn handshake_corpus() {
    replay("handshake", vswitch::fuzzing::handshake);
}

#[test]
fn engine_corpus() {
    replay("engine", vswitch::fuzzing::engine);
}

#[test]
fn console_corpus() {
    replay("console", vswitch::fuzzing::console);
}

#[test]
fn rc_file_corpus() {
    replay("rc_file", vswitch::fuzzing::rc_file);
}

#[test]
fn vxlan_corpus() {
    replay("vxlan", vswitch::fuzzing::vxlan);
}

#[test]
fn vhost_user_corpus() {
    replay("vhost_user", vswitch::fuzzing::vhost_user);
}
