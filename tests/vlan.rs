//! VLANs (spec §4.2, §6, checklist 33-39) against vde_switch 2.3.2: the
//! console rules and the retagging of single frames on both switches, a
//! tagged trunk between vswitch and vde_switch that carries VLAN 10 and
//! keeps VLAN 20 apart, and UML guests speaking 802.1Q through the switch.

mod common;
mod lab;

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use lab::{cable, data, start};

// ----- console rules and single frames, on both switches --------------------

/// Checklist 33, 38, 39: `vlan/*` argument rules, errors and listings.
fn vlan_commands(target: Target) {
    let sw = Switch::start(target, &[]);
    let mut m = sw.mgmt();
    m.cmd_ok("vlan/create 10");
    assert_eq!(m.cmd("vlan/create 10"), "1017 File exists\n");
    for bad in ["vlan/create 0", "vlan/create 4094", "vlan/create 4095"] {
        assert_eq!(m.cmd(bad), "1022 Invalid argument\n", "{bad}");
    }
    m.cmd_ok("vlan/create 4093");
    m.cmd_ok("port/create 3");
    m.cmd_ok("vlan/addport 10 3");
    assert_eq!(m.cmd("vlan/remove 10"), "1098 Address already in use\n", "an inactive member counts");
    assert_eq!(m.cmd("vlan/delport 0 3"), "1098 Address already in use\n", "the untagged VLAN");
    assert_eq!(m.cmd("vlan/remove 20"), "1006 No such device or address\n");
    let _c = Client::connect(&sw.ctl_dir(), Some(2), "c");
    assert_eq!(
        data(&mut m, "vlan/allprint"),
        "VLAN 0000\n -- Port 0002 tagged=0 active=1 status=Forwarding\n \
         -- Port 0003 tagged=0 active=0 status=Learning\nVLAN 0010\n \
         -- Port 0003 tagged=1 active=0 status=Learning\nVLAN 4093\n"
    );
    assert_eq!(
        data(&mut m, "vlan/print"),
        "VLAN 0000\n -- Port 0002 tagged=0 active=1 status=Forwarding\nVLAN 0010\nVLAN 4093\n"
    );
    assert_eq!(m.cmd("vlan/allprint 0"), "0000 DATA END WITH '.'\n.\n1022 Invalid argument\n");
    assert_eq!(data(&mut m, "vlan/print 0"), "VLAN 0000\n -- Port 0002 tagged=0 active=1 status=Forwarding\n");
    m.cmd_ok("vlan/delport 10 3");
    m.cmd_ok("vlan/delport 10 3");
    m.cmd_ok("vlan/remove 10");
}

/// Port 1 on VLAN 0, port 2 untagged in VLAN 10, port 3 tagged in VLAN 10.
fn vlan10_ports(sw: &Switch) -> (Client, Client, Client) {
    let mut m = sw.mgmt();
    for c in ["vlan/create 10", "port/create 2", "port/setvlan 2 10", "port/create 3", "vlan/addport 10 3"] {
        m.cmd_ok(c);
    }
    let plain = Client::connect(&sw.ctl_dir(), Some(1), "VLAN 0");
    let access = Client::connect(&sw.ctl_dir(), Some(2), "VLAN 10 untagged");
    let trunk = Client::connect(&sw.ctl_dir(), Some(3), "VLAN 10 tagged");
    (plain, access, trunk)
}

fn tagged(untagged: &[u8], tci: u16) -> Vec<u8> {
    let mut f = untagged[..12].to_vec();
    f.extend_from_slice(&[0x81, 0x00]);
    f.extend_from_slice(&tci.to_be_bytes());
    f.extend_from_slice(&untagged[12..]);
    f
}

/// Checklist 34: untagged → tagged gets `81 00 00 0a` (60 → 64 bytes),
/// tagged → untagged loses it, VLAN 0 hears neither; the same for learned
/// unicasts.
fn access_and_trunk_retag(target: Target) {
    let sw = Switch::start(target, &[]);
    let (plain, access, trunk) = vlan10_ports(&sw);
    let hello = frame(BROADCAST, station_mac(2), TEST_ETHERTYPE, 46);
    access.send(&hello);
    trunk.expect_frame(&tagged(&hello, 10));
    let answer = frame(station_mac(2), station_mac(3), TEST_ETHERTYPE, 46);
    trunk.send(&tagged(&answer, 10));
    access.expect_frame(&answer);
    let again = frame(station_mac(3), station_mac(2), TEST_ETHERTYPE, 100);
    access.send(&again);
    trunk.expect_frame(&tagged(&again, 10));
    assert_silent(&[&plain, &access, &trunk]);
}

/// Checklist 35, 36: tagged → tagged keeps PCP and DEI; frames for a VLAN
/// the port is not in, a VLAN that does not exist, or 4095 are dropped but
/// counted as input.
fn tagged_rules(target: Target) {
    let sw = Switch::start(target, &[]);
    let (plain, access, trunk) = vlan10_ports(&sw);
    let mut m = sw.mgmt();
    m.cmd_ok("port/create 4");
    m.cmd_ok("vlan/addport 10 4");
    let trunk2 = Client::connect(&sw.ctl_dir(), Some(4), "second trunk");
    let f = tagged(&frame(BROADCAST, station_mac(3), TEST_ETHERTYPE, 46), 0xb00a);
    trunk.send(&f);
    trunk2.expect_frame(&f);
    access.expect_frame(&frame_untagged(&f));
    let before = m.port(1).expect("port 1").in_pkts;
    for tci in [10, 20, 4095] {
        plain.send(&tagged(&frame(BROADCAST, station_mac(1), TEST_ETHERTYPE, 46), tci));
    }
    assert_silent(&[&plain, &access, &trunk, &trunk2]);
    assert_eq!(m.port(1).expect("port 1").in_pkts, before + 3, "dropped frames still count as IN");
}

fn frame_untagged(tagged: &[u8]) -> Vec<u8> {
    let mut f = tagged[..12].to_vec();
    f.extend_from_slice(&tagged[16..]);
    f
}

/// Checklist 37: a port with `port/setvlan P 4095` neither sends nor
/// receives untagged frames, but its tagged VLANs work.
fn no_untagged_vlan(target: Target) {
    let sw = Switch::start(target, &[]);
    let (plain, access, trunk) = vlan10_ports(&sw);
    sw.mgmt().cmd_ok("port/setvlan 3 4095");
    trunk.send(&frame(BROADCAST, station_mac(3), TEST_ETHERTYPE, 46));
    plain.send(&frame(BROADCAST, station_mac(1), TEST_ETHERTYPE, 46));
    assert_silent(&[&plain, &access, &trunk]);
    let hello = frame(BROADCAST, station_mac(2), TEST_ETHERTYPE, 46);
    access.send(&hello);
    trunk.expect_frame(&tagged(&hello, 10));
}

test_both_targets!(vlan_commands, access_and_trunk_retag, tagged_rules, no_untagged_vlan);

// ----- a trunk between vswitch and vde_switch ---------------------------------

/// Port 1: trunk, tagged in VLAN 10 only; port 2: VLAN 10; port 3: VLAN 20.
const TRUNK_RC: &[&str] = &[
    "vlan/create 10",
    "vlan/create 20",
    "port/create 1",
    "vlan/addport 10 1",
    "port/setvlan 1 4095",
    "port/create 2",
    "port/setvlan 2 10",
    "port/create 3",
    "port/setvlan 3 20",
];

#[test]
fn mixed_trunk_carries_vlan_10_and_keeps_vlan_20_apart() {
    let vs = start(Target::Vswitch, 0x0a, TRUNK_RC, &[]);
    let vde = start(Target::VdeSwitch, 0x0b, TRUNK_RC, &[]);
    let _trunk = cable(&vs, 1, &vde, 1);
    // A second endpoint on vswitch's trunk port sees what goes on the wire.
    let wire = Client::connect(&vs.ctl_dir(), Some(1), "trunk sniffer");
    let a10 = Client::connect(&vs.ctl_dir(), Some(2), "vswitch VLAN 10");
    let a20 = Client::connect(&vs.ctl_dir(), Some(3), "vswitch VLAN 20");
    let plug = |port: u32, descr: &str| {
        let mut p = VdePlug::spawn(&format!("{}[{port}]", vde.ctl_dir().display()), descr);
        p.wait_attached(&mut vde.mgmt(), descr);
        p
    };
    let b10 = plug(2, "b10");
    let b20 = plug(3, "b20");

    let hello = frame(BROADCAST, station_mac(0xa1), TEST_ETHERTYPE, 46);
    a10.send(&hello);
    wire.expect_frame(&tagged(&hello, 10));
    b10.expect_frame(&hello);
    let answer = frame(station_mac(0xa1), station_mac(0xb1), TEST_ETHERTYPE, 46);
    b10.send(&answer);
    a10.expect_frame(&answer);
    let again = frame(station_mac(0xb1), station_mac(0xa1), TEST_ETHERTYPE, 200);
    a10.send(&again);
    wire.expect_frame(&tagged(&again, 10));
    b10.expect_frame(&again);
    assert_silent(&[&wire, &a10, &a20, &b10, &b20]);

    // VLAN 20 exists on both switches but not on the trunk.
    b20.send(&frame(BROADCAST, station_mac(0xb2), TEST_ETHERTYPE, 46));
    a20.send(&frame(BROADCAST, station_mac(0xa2), TEST_ETHERTYPE, 46));
    // Nor does VLAN 10 leak into VLAN 20 on the far side.
    let from_b10 = frame(BROADCAST, station_mac(0xb1), TEST_ETHERTYPE, 46);
    b10.send(&from_b10);
    a10.expect_frame(&from_b10);
    assert_silent(&[&wire, &a10, &a20, &b10, &b20]);

    let expected = "VLAN 0000\nVLAN 0010\n -- Port 0001 tagged=1 active=1 status=Forwarding\n \
                    -- Port 0002 tagged=0 active=1 status=Forwarding\nVLAN 0020\n \
                    -- Port 0003 tagged=0 active=1 status=Forwarding\n";
    let vs_list = data(&mut vs.mgmt(), "vlan/allprint");
    let vde_list = data(&mut vde.mgmt(), "vlan/allprint");
    eprintln!("vlan/allprint, vswitch:\n{vs_list}vlan/allprint, vde_switch:\n{vde_list}");
    assert_eq!(vs_list, expected);
    assert_eq!(vde_list, expected);
}

// ----- UML guests speaking 802.1Q ------------------------------------------

/// Upper bound for a guest's whole life (enforced by `timeout`).
const GUEST_LIFETIME_SECS: u32 = 90;
/// How long a guest retries a peer that does not answer yet.
const GUEST_PING_WAIT_SECS: u32 = 30;
/// How long guests may take to report their results.
const RESULTS_TIMEOUT: Duration = Duration::from_secs(60);

/// seccomp program: `ptrace(PTRACE_GETREGSET, _, NT_X86_XSTATE, _)` fails
/// with EIO, everything else is allowed. UML 6.1's xstate buffer is too
/// small for this CPU (AVX-512 + AMX), so its probe must fail for it to
/// fall back to the plain FP registers (same workaround as tests/uml.rs).
#[cfg(target_arch = "x86_64")]
static XSTATE_FILTER: [libc::sock_filter; 10] = {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    const fn st(code: u16, k: u32) -> libc::sock_filter {
        libc::sock_filter { code, jt: 0, jf: 0, k }
    }
    const fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
        libc::sock_filter { code: JEQ_K, jt, jf, k }
    }
    [
        st(LD_W_ABS, 4), // arch
        jeq(AUDIT_ARCH_X86_64, 0, 7),
        st(LD_W_ABS, 0), // syscall number
        jeq(libc::SYS_ptrace as u32, 0, 5),
        st(LD_W_ABS, 16),  // request
        jeq(0x4204, 0, 3), // PTRACE_GETREGSET
        st(LD_W_ABS, 32),  // regset type
        jeq(0x202, 0, 1),  // NT_X86_XSTATE
        st(RET_K, SECCOMP_RET_ERRNO | libc::EIO as u32),
        st(RET_K, SECCOMP_RET_ALLOW),
    ]
};

/// With only the legacy FP state restored, the guest's glibc must keep off
/// its AVX string functions.
const GUEST_GLIBC_TUNABLES: &str = "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX2,-AVX";

struct GuestSpec {
    id: u8,
    port: u32,
    /// VLAN the guest's kernel tags with (`eth0.<vid>`); `None`: untagged.
    vid: Option<u16>,
    peers: &'static [u8],
    strangers: &'static [u8],
}

/// A booted guest; dropping it kills its whole process group.
struct Guest {
    id: u8,
    child: Child,
    console: PathBuf,
}

impl Guest {
    fn boot(dir: &Path, ctl_dir: &Path, release: &Path, spec: &GuestSpec) -> Guest {
        let init = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/vlan_init.sh");
        assert!(!init.to_string_lossy().contains([' ', ',']), "init path must fit a kernel command line");
        let list = |ids: &[u8]| ids.iter().map(u8::to_string).collect::<Vec<_>>().join(",");
        let console = dir.join(format!("guest{}.console", spec.id));
        let out = File::create(&console).expect("guest console file");
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "5", &GUEST_LIFETIME_SECS.to_string(), "linux.uml", "mem=64M", "quiet"])
            .arg(format!("uml_dir={}", dir.display()))
            .arg(format!("umid=vlan{}", spec.id))
            .args(["rootfstype=hostfs", "rootflags=/", "ro"])
            .arg(format!("init={}", init.display()))
            .arg(format!("ID={}", spec.id))
            .arg(format!("VID={}", spec.vid.map_or(String::new(), |v| v.to_string())))
            .arg(format!("PEERS={}", list(spec.peers)))
            .arg(format!("STRANGERS={}", list(spec.strangers)))
            .arg(format!("WAIT={GUEST_PING_WAIT_SECS}"))
            .arg("HOLD=60")
            .arg(format!("RELEASE={}", release.display()))
            .arg(GUEST_GLIBC_TUNABLES)
            .arg(format!("eth0=vde,{},52:54:00:00:0a:{:02x},{}", ctl_dir.display(), spec.id, spec.port))
            .args(["con=null", "con0=fd:0,fd:1"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone console file"))
            .stderr(out)
            .process_group(0);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: between fork and exec only async-signal-safe prctl calls
        // run, on a filter that lives for the whole program.
        unsafe {
            cmd.pre_exec(|| {
                let prog = libc::sock_fprog {
                    len: XSTATE_FILTER.len() as u16,
                    filter: XSTATE_FILTER.as_ptr() as *mut libc::sock_filter,
                };
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0 as libc::c_ulong, 0, 0) != 0
                    || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER as libc::c_ulong, &prog) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start timeout/linux.uml: {e}"));
        Guest { id: spec.id, child, console }
    }

    fn console(&self) -> String {
        fs::read(&self.console).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if !self.exited() {
            // SAFETY: plain syscall on the process group this guest leads.
            unsafe { libc::killpg(self.child.id() as i32, libc::SIGKILL) };
        }
        let _ = self.child.wait();
    }
}

/// Boots the guests on a switch configured like the trunk test, waits for
/// their results and returns their consoles.
fn run_guests(target: Target, specs: &[GuestSpec]) -> Vec<(u8, String)> {
    let sw = start(target, 0x0a, TRUNK_RC, &[]);
    let dir = tempfile::Builder::new().prefix("vswitch-uml-vlan-").tempdir().expect("guest directory");
    let release = dir.path().join("release");
    let mut guests: Vec<Guest> = specs.iter().map(|s| Guest::boot(dir.path(), &sw.ctl_dir(), &release, s)).collect();
    let deadline = Instant::now() + RESULTS_TIMEOUT;
    loop {
        let done = guests.iter_mut().all(|g| {
            let c = g.console();
            c.contains(&format!("GUEST {} DONE", g.id)) || g.exited()
        });
        if done {
            break;
        }
        if Instant::now() >= deadline {
            let consoles: Vec<String> = guests.iter().map(Guest::console).collect();
            panic!("{target:?}: guests did not finish within {RESULTS_TIMEOUT:?}: {consoles:#?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
    File::create(&release).expect("release file");
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end && !guests.iter_mut().all(Guest::exited) {
        thread::sleep(Duration::from_millis(50));
    }
    guests.iter().map(|g| (g.id, g.console())).collect()
}

/// A guest on the trunk tags its traffic with VLAN 10 itself (`eth0.10`)
/// and reaches an untagged guest in VLAN 10; a guest in VLAN 20 reaches
/// neither. Run on vde_switch too, to show the scenario itself is right.
#[test]
fn uml_guests_speak_8021q_through_the_switch() {
    const SPECS: &[GuestSpec] = &[
        GuestSpec { id: 1, port: 1, vid: Some(10), peers: &[2], strangers: &[3] },
        GuestSpec { id: 2, port: 2, vid: None, peers: &[1], strangers: &[3] },
        GuestSpec { id: 3, port: 3, vid: None, peers: &[], strangers: &[1, 2] },
    ];
    let reference = thread::spawn(|| run_guests(Target::VdeSwitch, SPECS));
    let ours = run_guests(Target::Vswitch, SPECS);
    let theirs = reference.join().expect("vde_switch guests");
    for (target, consoles) in [("vswitch", &ours), ("vde_switch", &theirs)] {
        let all: String = consoles.iter().map(|(id, c)| format!("--- guest {id}\n{c}")).collect();
        eprintln!("{target} guests:\n{all}");
        assert!(!all.contains("NOVLAN"), "{target}: the UML kernel could not make a VLAN device:\n{all}");
        for spec in SPECS {
            let console = &consoles.iter().find(|(id, _)| *id == spec.id).expect("console").1;
            for (ids, want) in [(spec.peers, "ok"), (spec.strangers, "fail")] {
                for p in ids {
                    let line = format!("RESULT ping 169.254.0.{p} {want}");
                    assert!(console.contains(&line), "{target}: guest {} lacks {line:?}:\n{all}", spec.id);
                }
            }
        }
    }
}
