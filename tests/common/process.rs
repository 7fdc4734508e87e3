//! Child processes (vde_plug, dpipe) that cannot outlive a test.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::thread;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, User, geteuid};

use super::frames::describe;
use super::mgmt::Mgmt;
use super::station::Station;
use super::{EVENT_TIMEOUT, wait_until};

/// Owns a child process started in a process group of its own and kills
/// that whole group with SIGKILL on drop: `dpipe` forks the two commands it
/// connects, and they would otherwise keep running after it.
pub struct ProcessGuard {
    child: Child,
    killed: bool,
}

impl ProcessGuard {
    pub fn spawn(command: &mut Command) -> ProcessGuard {
        let child = command.process_group(0).spawn().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
        ProcessGuard { child, killed: false }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The writing end of the child's piped stdin, if it has one.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    /// The reading end of the child's piped stdout, if it has one.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// The exit status, if the process has already exited.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("query child status")
    }

    /// SIGKILLs the process group now and reaps the process.
    pub fn kill(&mut self) {
        if !self.killed {
            self.killed = true;
            let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `vde_plug [-D descr] URL` relaying frames between the switch and its
/// stdin/stdout, where each frame is preceded by its length as a 2-byte
/// big-endian number (spec §10.3).
pub struct VdePlug {
    name: String,
    stdin: ChildStdin,
    /// Frames read from the plug's stdout by a helper thread, which ends
    /// when the process dies.
    received: Receiver<Vec<u8>>,
    process: ProcessGuard,
}

impl VdePlug {
    /// Starts `vde_plug -D descr URL`; it attaches in the background.
    pub fn spawn(url: &str, descr: &str) -> VdePlug {
        let mut process = ProcessGuard::spawn(
            Command::new("vde_plug")
                .args(["-D", descr, url])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        );
        let stdin = process.child.stdin.take().expect("piped stdin");
        let mut stdout = process.child.stdout.take().expect("piped stdout");
        let (sender, received) = channel();
        thread::spawn(move || {
            loop {
                let mut length = [0u8; 2];
                if stdout.read_exact(&mut length).is_err() {
                    return;
                }
                let mut frame = vec![0u8; u16::from_be_bytes(length).into()];
                if stdout.read_exact(&mut frame).is_err() || sender.send(frame).is_err() {
                    return;
                }
            }
        });
        VdePlug { name: format!("vde_plug {url}"), stdin, received, process }
    }

    /// The description vdeplug4 sends: `<descr> user=<name> pid=<pid>`.
    pub fn expected_description(&self, descr: &str) -> String {
        let user = User::from_uid(geteuid()).ok().flatten().map(|u| u.name).unwrap_or_else(|| geteuid().to_string());
        format!("{descr} user={user} pid={}", self.process.pid())
    }

    /// Waits until the switch lists this plug's endpoint (described as
    /// `descr` plus user and pid) and returns its port.
    pub fn wait_attached(&mut self, mgmt: &mut Mgmt, descr: &str) -> u32 {
        let description = self.expected_description(descr);
        wait_until(EVENT_TIMEOUT, &format!("endpoint {description:?} of {}", self.name), || {
            if let Some(status) = self.process.exit_status() {
                panic!("{} exited early with {status}", self.name);
            }
            mgmt.find_endpoint(|e| e == description)
        })
    }

    pub fn process(&mut self) -> &mut ProcessGuard {
        &mut self.process
    }
}

impl Station for VdePlug {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&self, frame: &[u8]) {
        let length = u16::try_from(frame.len()).expect("frame fits the 2-byte length");
        let mut record = length.to_be_bytes().to_vec();
        record.extend_from_slice(frame);
        // One write per record; `&ChildStdin` implements Write.
        (&self.stdin)
            .write_all(&record)
            .unwrap_or_else(|e| panic!("{}: cannot send {}: {e}", self.name, describe(frame)));
    }

    fn recv_timeout(&self, timeout: Duration) -> Option<Vec<u8>> {
        // A dead plug (disconnected channel) simply receives nothing.
        self.received.recv_timeout(timeout).ok()
    }
}
