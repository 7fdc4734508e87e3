//! QEMU guests (TCG) for the stream, dgram, vde and vhost-user back-ends.
//!
//! A guest is the host's kernel from `linux-image-amd64` plus an
//! initramfs built here: static busybox as `/init`'s shell and the
//! `virtio_net` module with its dependencies, loaded with `insmod` in
//! dependency order (from `modinfo`). Its init script brings `eth0` up on
//! 169.254.0.`ID`/16, pings every peer until it answers (bounded), prints
//! one `RESULT ping ADDR ok|fail` line per peer on the serial console, then
//! waits to be killed, so it stays attached while the test inspects the
//! switch. Guests run under `timeout` in a process group of their own and
//! are killed by that group when dropped, also on panic.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tempfile::TempDir;

/// Guest RAM; a vhost-user guest's memory backend has the same size.
const MEMORY_MIB: u32 = 256;
/// Upper bound for one guest's whole life (enforced by `timeout`).
const GUEST_LIFETIME_SECS: u32 = 240;
/// Ping rounds (of about a second each) before a peer counts as silent.
const PING_ROUNDS: u32 = 120;
const POLL_INTERVAL: Duration = Duration::from_millis(100);

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
for m in $(cat /modules/order); do insmod /modules/$m.ko; done
ip link set lo up
ip link set eth0 up
ip addr add 169.254.0.$ID/16 dev eth0
echo "READY 169.254.0.$ID"
for p in $(echo $PEERS | tr , ' '); do
  ok=fail
  for i in $(seq 1 $ROUNDS); do
    if ping -c 1 -W 1 169.254.0.$p >/dev/null 2>&1; then ok=ok; break; fi
  done
  echo "RESULT ping 169.254.0.$p $ok"
done
echo "DONE"
while true; do sleep 60; done
"#;

/// The kernel release whose image is in /boot and modules in /lib/modules.
fn kernel() -> (String, PathBuf) {
    let image = fs::read_dir("/boot")
        .expect("read /boot")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .expect("a kernel in /boot (package linux-image-amd64)");
    let release = image.file_name().unwrap().to_string_lossy().trim_start_matches("vmlinuz-").to_string();
    (release, image)
}

fn modinfo(release: &str, field: &[&str], module: &str) -> String {
    let out = Command::new("modinfo").args(["-k", release]).args(field).arg(module).output().expect("run modinfo");
    assert!(out.status.success(), "modinfo {module}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `module` after everything it depends on, each once.
fn load_order(release: &str, module: &str, order: &mut Vec<String>) {
    if order.iter().any(|m| m == module) {
        return;
    }
    let depends = modinfo(release, &["-F", "depends"], module);
    for dep in depends.split(',').filter(|d| !d.is_empty()) {
        load_order(release, dep, order);
    }
    order.push(module.to_string());
}

/// A directory holding the initramfs and the kernel to boot guests with.
pub struct Image {
    dir: TempDir,
    kernel: PathBuf,
}

impl Image {
    pub fn build() -> Image {
        let dir = tempfile::Builder::new().prefix("vswitch-qemu-").tempdir().expect("temporary directory");
        let (release, kernel) = kernel();
        let root = dir.path().join("root");
        for sub in ["bin", "proc", "sys", "dev", "modules"] {
            fs::create_dir_all(root.join(sub)).unwrap();
        }
        fs::copy("/bin/busybox", root.join("bin/busybox")).expect("static busybox (package busybox-static)");
        let init = root.join("init");
        fs::write(&init, INIT).unwrap();
        fs::set_permissions(&init, fs::Permissions::from_mode(0o755)).unwrap();
        let mut order = Vec::new();
        load_order(&release, "virtio_net", &mut order);
        load_order(&release, "virtio_pci", &mut order);
        for module in &order {
            let file = PathBuf::from(modinfo(&release, &["-n"], module));
            let target = root.join("modules").join(format!("{module}.ko"));
            if file.extension().is_some_and(|e| e == "xz") {
                let out = Command::new("xz").arg("-dc").arg(&file).output().expect("run xz");
                fs::write(&target, out.stdout).unwrap();
            } else {
                fs::copy(&file, &target).unwrap();
            }
        }
        fs::write(root.join("modules/order"), order.join("\n")).unwrap();
        let archive = fs::File::create(dir.path().join("initramfs.cpio")).unwrap();
        let status = Command::new("sh")
            .arg("-c")
            .arg("find . | cpio -o -H newc --quiet")
            .current_dir(&root)
            .stdout(archive)
            .status()
            .expect("run cpio");
        assert!(status.success(), "cpio failed");
        Image { dir, kernel }
    }

    fn initramfs(&self) -> PathBuf {
        self.dir.path().join("initramfs.cpio")
    }
}

/// How the guest's NIC reaches the switch.
pub enum Backend<'a> {
    /// `-netdev stream` connecting to this path.
    Stream(&'a Path),
    /// `-netdev dgram` sending to this path.
    Dgram(&'a Path),
    /// `-netdev vde` on this control directory.
    Vde(&'a Path),
    /// `-netdev vhost-user` connecting to this socket, the guest's RAM in
    /// a shared memfd the backend maps.
    VhostUser(&'a Path),
}

/// One running guest.
pub struct Guest {
    pub id: u8,
    child: Child,
    console: PathBuf,
}

impl Guest {
    /// The QEMU command line's back-end and device options.
    pub fn netdev_args(backend: &Backend, id: u8, dir: &Path) -> Vec<String> {
        let mut args = Vec::new();
        let mut device = format!("virtio-net-pci,netdev=n0,mac=52:54:00:00:02:{id:02x},romfile=");
        let netdev = match backend {
            Backend::Stream(path) => {
                format!("stream,id=n0,server=off,addr.type=unix,addr.path={}", path.display())
            }
            Backend::Dgram(path) => format!(
                "dgram,id=n0,local.type=unix,local.path={},remote.type=unix,remote.path={}",
                dir.join(format!("guest{id}.dgram")).display(),
                path.display()
            ),
            Backend::Vde(ctl) => format!("vde,id=n0,sock={}", ctl.display()),
            Backend::VhostUser(path) => {
                args.extend([
                    "-object".into(),
                    format!("memory-backend-memfd,id=m0,size={MEMORY_MIB}M,share=on"),
                    "-numa".into(),
                    "node,memdev=m0".into(),
                    "-chardev".into(),
                    format!("socket,id=c0,path={}", path.display()),
                ]);
                // No MSI-X: QEMU 7.2 under TCG dereferences the KVM-only
                // irqfd table (NULL) when a vhost-user device starts with
                // MSI-X enabled, and dies with SIGSEGV; the guest then
                // takes the legacy interrupt line instead.
                device.push_str(",vectors=0");
                "vhost-user,id=n0,chardev=c0".into()
            }
        };
        args.extend(["-netdev".into(), netdev, "-device".into(), device]);
        args
    }

    /// Boots guest 169.254.0.`id`, which pings `peers`.
    pub fn boot(image: &Image, backend: Backend, id: u8, peers: &[u8]) -> Guest {
        let console = image.dir.path().join(format!("guest{id}.console"));
        let peers: Vec<String> = peers.iter().map(u8::to_string).collect();
        let append = format!("console=ttyS0 quiet panic=-1 ID={id} PEERS={} ROUNDS={PING_ROUNDS}", peers.join(","));
        let mut command = Command::new("timeout");
        command
            .arg("-s")
            .arg("KILL")
            .arg(GUEST_LIFETIME_SECS.to_string())
            .arg("qemu-system-x86_64")
            .args(["-accel", "tcg", "-m", &MEMORY_MIB.to_string(), "-nodefaults", "-display", "none", "-no-reboot"])
            .arg("-kernel")
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(image.initramfs())
            .arg("-append")
            .arg(append)
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .args(Self::netdev_args(&backend, id, image.dir.path()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(image.dir.path().join(format!("guest{id}.stderr"))).unwrap())
            .process_group(0);
        let child = command.spawn().expect("run qemu-system-x86_64 (package qemu-system-x86)");
        Guest { id, child, console }
    }

    pub fn console(&self) -> String {
        fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Waits until the guest printed `DONE` (or died), within `timeout`.
    pub fn wait_done(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let console = self.console();
            if console.contains("DONE") {
                return console;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("guest {} exited ({status}) before its results:\n{console}{}", self.id, self.stderr());
            }
            if Instant::now() >= deadline {
                panic!("guest {} printed no results within {timeout:?}:\n{console}{}", self.id, self.stderr());
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    fn stderr(&self) -> String {
        let path = self.console.with_extension("stderr");
        fs::read_to_string(path).map(|s| format!("\nqemu stderr:\n{s}")).unwrap_or_default()
    }

    /// Panics unless the guest printed `RESULT ping 169.254.0.P ok` for
    /// every peer `P`.
    pub fn assert_pinged(&mut self, peers: &[u8], timeout: Duration) {
        let console = self.wait_done(timeout);
        for p in peers {
            let want = format!("RESULT ping 169.254.0.{p} ok");
            assert!(
                console.lines().any(|l| l.trim_end() == want),
                "guest {} did not print {want:?}:\n{console}",
                self.id
            );
        }
    }

    pub fn kill(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
    }
}
