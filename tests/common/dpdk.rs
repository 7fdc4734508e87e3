//! DPDK's testpmd as a vhost-user frontend (`net_virtio_user`), with the
//! hugepages it needs reserved for the test and given back after it.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use tempfile::TempDir;

use super::process::ProcessGuard;

const TESTPMD: &str = "dpdk-testpmd";
const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";
/// 2 MiB pages: testpmd's 256 MiB and some room.
const PAGES: u64 = 160;

/// Why testpmd cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    let on_path = |dir: &Path| dir.join(TESTPMD).is_file();
    if !std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| on_path(&dir))) {
        return Some(format!("{TESTPMD} not found (Debian package dpdk-dev)"));
    }
    if !nix::unistd::geteuid().is_root() {
        return Some("hugepages need root".into());
    }
    None
}

fn hugepages_total() -> u64 {
    fs::read_to_string(NR_HUGEPAGES).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0)
}

/// Hugepages added to the pool and mounted in a temporary directory.
pub struct Hugepages {
    before: u64,
    dir: TempDir,
    mounted: bool,
}

impl Hugepages {
    /// Reserves the pages, or says why not.
    pub fn reserve() -> Result<Hugepages, String> {
        let before = hugepages_total();
        let dir = tempfile::Builder::new().prefix("vswitch-test-huge").tempdir().map_err(|e| e.to_string())?;
        let mut pages = Hugepages { before, dir, mounted: false };
        fs::write(NR_HUGEPAGES, (before + PAGES).to_string()).map_err(|e| format!("{NR_HUGEPAGES}: {e}"))?;
        if hugepages_total() < before + PAGES {
            return Err(format!("the kernel gave {} of {PAGES} hugepages", hugepages_total() - before));
        }
        let mount = Command::new("mount").args(["-t", "hugetlbfs", "nodev"]).arg(pages.dir.path()).status();
        if !mount.is_ok_and(|s| s.success()) {
            return Err("mounting hugetlbfs failed".into());
        }
        pages.mounted = true;
        Ok(pages)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Hugepages {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(self.dir.path()).stderr(Stdio::null()).status();
        }
        let _ = fs::write(NR_HUGEPAGES, self.before.to_string());
    }
}

/// testpmd with one `net_virtio_user` port on a vhost-user socket,
/// forwarding every frame it receives back out of the same port with its
/// MAC addresses swapped.
pub struct Testpmd {
    process: ProcessGuard,
    prefix: String,
}

impl Testpmd {
    pub fn macswap(huge: &Hugepages, socket: &Path, mac: &str) -> Testpmd {
        let prefix = format!("vswitch-test-{}", std::process::id());
        let mut cmd = Command::new(TESTPMD);
        cmd.args(["-l", "0,1", "--main-lcore", "1", "--no-pci", "--single-file-segments", "-m", "256"])
            .args(["--file-prefix", &prefix])
            .arg("--huge-dir")
            .arg(huge.dir())
            .arg("--vdev")
            .arg(format!("net_virtio_user0,path={},queues=1,mac={mac}", socket.display()))
            .args(["--", "--total-num-mbufs=16384", "--forward-mode=macswap", "--nb-cores=1"])
            // Without `-i` testpmd forwards at once and waits for a line on
            // stdin to stop.
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Testpmd { process: ProcessGuard::spawn(&mut cmd), prefix }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn exited(&mut self) -> bool {
        self.process.exit_status().is_some()
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        self.process.kill();
        let _ = fs::remove_dir_all(format!("/var/run/dpdk/{}", self.prefix));
    }
}
