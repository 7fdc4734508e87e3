//! The README's commands, run in the order a newcomer meets them on a fresh
//! clone of the repository: every `sh` code block runs in the clone and
//! must succeed, except the few listed in `skipped`, each with its reason.
//! The clone builds into this build's target directory, so only the crate
//! itself is rebuilt, not its dependencies.

mod common;

use std::fs;
use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ProcessGuard;

/// A block may build the crate in release mode (fat LTO) on a busy machine.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(600);

/// Why a block is not run, or `None` to run it.
fn skipped(block: &str) -> Option<&'static str> {
    if block.contains("scripts/test") {
        Some("runs the whole test suite, this test among it")
    } else if block.contains("linux.uml") || block.contains("vdeterm") {
        Some("needs UML guest images and an interactive console session")
    } else if block.contains("qemu-system") {
        Some("needs QEMU guests (tests/qemu.rs runs these command lines)")
    } else if block.contains("the guests talk") || block.contains("tshark -l -i") {
        Some("needs guests or a live capture reader (tests/capture.rs runs these commands)")
    } else if block.contains("vde_plug2tap") {
        Some("creates a tap interface in the host's network (tests/capture.rs checks mirror ports)")
    } else if block.contains("hostA$") {
        Some("a walkthrough across several hosts (tests/vxlan.rs runs it in namespaces)")
    } else if block.contains("vswitch-bench") && !block.contains("--only") {
        Some("the full benchmark takes about 5 minutes; the one-workload block below runs the same binary")
    } else {
        None
    }
}

/// The bodies of the README's ```sh blocks, in order.
fn sh_blocks(readme: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(body), _) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// Stops a switch a block left running (the README's own last console
/// command stops it; this covers a block failing before that).
struct ShutdownOnDrop(PathBuf);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        if let Ok(mut stream) = UnixStream::connect(&self.0) {
            let _ = stream.write_all(b"shutdown\n");
        }
    }
}

fn run_block(clone: &Path, target_dir: &Path, index: usize, block: &str) -> (bool, String) {
    let log = clone.join(format!(".block-{index}.log"));
    let out = fs::File::create(&log).expect("create block log");
    let mut child = ProcessGuard::spawn(
        Command::new("sh")
            .arg("-e")
            .arg("-c")
            .arg(block)
            .current_dir(clone)
            .env("CARGO_TARGET_DIR", target_dir)
            .env("CARGO_NET_OFFLINE", "true")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log handle"))
            .stderr(out),
    );
    let deadline = Instant::now() + BLOCK_TIMEOUT;
    let status = loop {
        if let Some(status) = child.exit_status() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = fs::read_to_string(&log).unwrap_or_default();
    match status {
        Some(status) => (status.success(), format!("{status}\n{text}")),
        None => (false, format!("timed out after {BLOCK_TIMEOUT:?}\n{text}")),
    }
}

#[test]
fn readme_commands_work_on_a_fresh_clone() {
    let source = env!("CARGO_MANIFEST_DIR");
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("target directory").to_path_buf();
    let dir = tempfile::Builder::new().prefix("vswitch-readme-").tempdir().expect("temporary directory");
    let clone = dir.path().join("vswitch");
    let status = Command::new("git")
        .args(["clone", "--quiet", source])
        .arg(&clone)
        .stdout(Stdio::null())
        .status()
        .expect("run git clone");
    assert!(status.success(), "git clone {source} failed: {status}");
    let _switch = ShutdownOnDrop(clone.join("s1_term"));

    let readme = fs::read_to_string(clone.join("README.md")).expect("README.md in the clone");
    let blocks = sh_blocks(&readme);
    assert!(blocks.len() >= 4, "expected the README's sh blocks, found {}", blocks.len());
    let mut ran = 0;
    for (index, block) in blocks.iter().enumerate() {
        if let Some(reason) = skipped(block) {
            println!("skipped block {index} ({reason}):\n{block}");
            continue;
        }
        println!("running block {index}:\n{block}");
        let (ok, output) = run_block(&clone, &target_dir, index, block);
        assert!(ok, "README block {index} failed:\n{block}\n--- output ---\n{output}");
        ran += 1;
    }
    assert!(ran >= 3, "only {ran} README blocks ran");
    // The console block ends with `shutdown`: the switch leaves nothing behind.
    common::wait_until(common::STARTUP_TIMEOUT, "the README's switch to remove its files", || {
        (!clone.join("s1").exists() && !clone.join("s1_term").exists()).then_some(())
    });
}
