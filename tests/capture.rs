//! Frame capture (`capture/start`, pcapng read back by tcpdump and tshark)
//! and mirror ports (`port/setmirror`), with real clients.

mod common;

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;

use common::station::exchange;
use common::{
    BROADCAST, Client, Mgmt, Station, Switch, TEST_ETHERTYPE, Target, VdePlug, assert_silent, frame, station_mac,
    wait_until,
};

/// One frame as a capture tool read it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Captured {
    interface: String,
    /// tshark's `frame.packet_flags_direction`: 1 inbound, 2 outbound.
    direction: u32,
    bytes: Vec<u8>,
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("text output")
}

fn hex_bytes<'a>(words: impl Iterator<Item = &'a str>) -> Vec<u8> {
    words
        .flat_map(|w| w.as_bytes().chunks(2).map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap()))
        .collect()
}

/// The frames of a capture file as `tcpdump -r FILE -xx` prints them.
fn tcpdump_frames(file: &Path) -> Vec<Vec<u8>> {
    let text = run("tcpdump", &["-r", file.to_str().unwrap(), "-n", "-xx"]);
    let mut frames: Vec<Vec<u8>> = Vec::new();
    for line in text.lines() {
        match line.strip_prefix('\t') {
            // `\t0x0010:  0000 0000 …`
            Some(dump) => {
                let (_, words) = dump.split_once(":  ").expect("offset of a hex line");
                frames.last_mut().expect("a header first").extend(hex_bytes(words.split_whitespace()));
            }
            None => frames.push(Vec::new()),
        }
    }
    frames
}

/// The frames of a capture file as `tshark -r FILE` reads them: bytes from
/// its hex dump, interface and direction from its fields.
fn tshark_frames(file: &Path) -> Vec<Captured> {
    let name = file.to_str().unwrap();
    let fields = run(
        "tshark",
        &["-r", name, "-T", "fields", "-e", "frame.interface_name", "-e", "frame.packet_flags_direction"],
    );
    let dump = run("tshark", &["-r", name, "-x"]);
    // Frames are separated by blank lines; `0010  00 11 …   ascii`.
    let bytes: Vec<Vec<u8>> = dump
        .split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            block
                .lines()
                .flat_map(|line| {
                    let hex = &line[6..];
                    hex.split(' ').take_while(|w| w.len() == 2).map(|w| u8::from_str_radix(w, 16).unwrap())
                })
                .collect()
        })
        .collect();
    let meta: Vec<(String, u32)> = fields
        .lines()
        .map(|line| {
            let (interface, direction) = line.split_once('\t').expect("two fields");
            let direction = u32::from_str_radix(direction.trim_start_matches("0x"), 16).expect("flags in hex");
            (interface.to_string(), direction)
        })
        .collect();
    assert_eq!(meta.len(), bytes.len(), "tshark's fields and hex dump disagree on the frame count");
    meta.into_iter()
        .zip(bytes)
        .map(|((interface, direction), bytes)| Captured { interface, direction, bytes })
        .collect()
}

/// Reads a capture with both tools and checks they agree.
fn read_capture(file: &Path) -> Vec<Captured> {
    let tshark = tshark_frames(file);
    let tcpdump = tcpdump_frames(file);
    let tshark_bytes: Vec<&Vec<u8>> = tshark.iter().map(|c| &c.bytes).collect();
    assert_eq!(tcpdump.iter().collect::<Vec<_>>(), tshark_bytes, "tcpdump and tshark read different frames");
    tshark
}

fn captured(port: u32, direction: u32, bytes: &[u8]) -> Captured {
    Captured { interface: format!("port {port}"), direction, bytes: bytes.to_vec() }
}

const IN: u32 = 1;
const OUT: u32 = 2;

/// Sends `frame` from `from`, checks `to` gets it, and returns it.
fn pass(from: &dyn Station, to: &dyn Station, frame: Vec<u8>) -> Vec<u8> {
    from.send(&frame);
    to.expect_frame(&frame);
    frame
}

#[test]
fn a_known_exchange_is_captured_on_one_port_and_on_all() {
    let sw = Switch::start(Target::Vswitch, &[]);
    let mut mgmt = sw.mgmt();
    let ctl = sw.ctl_dir();
    let mut a = VdePlug::spawn(ctl.to_str().unwrap(), "a");
    let pa = a.wait_attached(&mut mgmt, "a");
    let mut b = VdePlug::spawn(ctl.to_str().unwrap(), "b");
    let pb = b.wait_attached(&mut mgmt, "b");
    let one = sw.dir().join("one port.pcapng");
    let all = sw.dir().join("all.pcapng");
    mgmt.cmd_ok(&format!("capture/start {pa} {}", one.display()));
    mgmt.cmd_ok(&format!("capture/start 0 {}", all.display()));
    let (mac_a, mac_b) = (station_mac(1), station_mac(2));
    let hello = pass(&a, &b, frame(BROADCAST, mac_a, TEST_ETHERTYPE, 46));
    let answer = pass(&b, &a, frame(mac_a, mac_b, TEST_ETHERTYPE, 46));
    let again = pass(&a, &b, frame(mac_b, mac_a, TEST_ETHERTYPE, 1000));
    let print = mgmt.cmd_ok("capture/print");
    assert!(print.contains(&format!("Port {pa:04} file {} frames 3 dropped 0\n", one.display())), "{print}");
    assert!(print.contains(&format!("Port 0000 file {} frames 6 dropped 0\n", all.display())), "{print}");
    mgmt.cmd_ok(&format!("capture/stop {pa}"));
    mgmt.cmd_ok("capture/stop 0");
    assert_eq!(read_capture(&one), [captured(pa, IN, &hello), captured(pa, OUT, &answer), captured(pa, IN, &again)]);
    assert_eq!(
        read_capture(&all),
        [
            captured(pa, IN, &hello),
            captured(pb, OUT, &hello),
            captured(pb, IN, &answer),
            captured(pa, OUT, &answer),
            captured(pa, IN, &again),
            captured(pb, OUT, &again),
        ]
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&all).unwrap().permissions().mode() & 0o777, 0o600);
    // Nothing runs any more: traffic now leaves the files as they are.
    let size = std::fs::metadata(&all).unwrap().len();
    exchange(&a, mac_a, &b, mac_b);
    assert_eq!(std::fs::metadata(&all).unwrap().len(), size);
    assert!(!mgmt.cmd_ok("capture/print").contains("Port"));
}

/// The reply's lines before its status, and the status.
fn refusal(mgmt: &mut Mgmt, line: &str) -> (Vec<String>, String) {
    let reply = mgmt.cmd(line);
    let mut lines: Vec<String> = reply.lines().map(str::to_string).collect();
    let status = lines.pop().expect("a status line");
    (lines, status)
}

#[test]
fn capture_files_are_created_safely() {
    let sw = Switch::start(Target::Vswitch, &[]);
    let mut mgmt = sw.mgmt();
    let existing = sw.dir().join("existing");
    std::fs::write(&existing, b"precious").unwrap();
    let (lines, status) = refusal(&mut mgmt, &format!("capture/start 1 {}", existing.display()));
    assert_eq!(status, "1017 File exists");
    assert_eq!(lines, [format!("{}: exists (add `overwrite` to replace it)", existing.display())]);
    assert_eq!(std::fs::read(&existing).unwrap(), b"precious");
    let link = sw.dir().join("link");
    std::os::unix::fs::symlink(sw.dir().join("elsewhere"), &link).unwrap();
    let (lines, status) = refusal(&mut mgmt, &format!("capture/start 1 {} overwrite", link.display()));
    assert_eq!(status, "1040 Too many levels of symbolic links");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(!sw.dir().join("elsewhere").exists());
    let (lines, status) = refusal(&mut mgmt, "capture/start 1 /dev/null overwrite");
    assert_eq!(
        (lines, status.as_str()),
        (vec!["/dev/null: not a regular file or a FIFO".to_string()], "1022 Invalid argument")
    );
    let fifo = sw.dir().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let (lines, status) = refusal(&mut mgmt, &format!("capture/start 1 {}", fifo.display()));
    assert_eq!(status, "1006 No such device or address");
    assert_eq!(lines, [format!("{}: FIFO has no reader (start the reader first)", fifo.display())]);
    assert_eq!(mgmt.cmd("capture/start 99999 /tmp/x"), "1022 Invalid argument\n");
    assert_eq!(mgmt.cmd("capture/start 1"), "1022 Invalid argument\n");
    assert_eq!(mgmt.cmd("capture/stop 1"), "1002 No such file or directory\n");
    mgmt.cmd_ok(&format!("capture/start 1 {} overwrite", existing.display()));
    assert_eq!(
        mgmt.cmd(&format!("capture/start 1 {}", sw.dir().join("other").display())).lines().last(),
        Some("1016 Device or resource busy")
    );
    mgmt.cmd_ok("capture/stop 1");
    let header = std::fs::read(&existing).unwrap();
    assert_eq!(&header[..4], &[0x0a, 0x0d, 0x0d, 0x0a], "a pcapng section header replaced the file");
    // The extensions stay out of `help`.
    let help = mgmt.cmd_ok("help");
    assert!(!help.contains("capture") && !help.contains("setmirror"), "{help}");
}

#[test]
fn a_fifo_reader_that_stops_costs_drops_not_switching_and_one_that_leaves_ends_the_capture() {
    let sw = Switch::start(Target::Vswitch, &[]);
    let mut mgmt = sw.mgmt();
    let fifo = sw.dir().join("live");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // The reader opens the FIFO and then never reads.
    let mut reader = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
    mgmt.cmd_ok(&format!("capture/start 0 {}", fifo.display()));
    let a = Client::connect(&sw.ctl_dir(), None, "a");
    let b = Client::connect(&sw.ctl_dir(), None, "b");
    exchange(&a, station_mac(1), &b, station_mac(2));
    // Far more than the FIFO and the capture's buffer hold: every frame is
    // still switched.
    for _ in 0..3000 {
        pass(&a, &b, frame(station_mac(2), station_mac(1), TEST_ETHERTYPE, 1400));
    }
    let print = mgmt.cmd_ok("capture/print");
    let line = print.lines().find(|l| l.starts_with("Port 0000 fifo")).unwrap_or_else(|| panic!("{print}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let (frames, dropped): (u64, u64) = (words[5].parse().unwrap(), words[7].parse().unwrap());
    assert!(dropped > 0, "{line}");
    assert_eq!(frames + dropped, 2 * (3 + 3000), "{line}");
    let drops = mgmt.cmd_ok("port/drops");
    assert!(!drops.contains("socket-full=1") && drops.matches("socket-full=0").count() == 2, "{drops}");
    // What the reader gets is a pcapng stream from its start.
    let mut head = [0u8; 4];
    reader.read_exact(&mut head).unwrap();
    assert_eq!(head, [0x0a, 0x0d, 0x0d, 0x0a]);
    drop(reader);
    exchange(&a, station_mac(1), &b, station_mac(2));
    wait_until(common::EVENT_TIMEOUT * 2, "the capture to end once its reader left", || {
        (!mgmt.cmd_ok("capture/print").contains("Port 0000")).then_some(())
    });
    exchange(&a, station_mac(1), &b, station_mac(2));
    sw.assert_alive();
}

#[test]
fn a_mirror_port_sees_a_conversation_between_two_others_unmodified() {
    let sw = Switch::start(Target::Vswitch, &[]);
    let mut mgmt = sw.mgmt();
    let a = Client::connect(&sw.ctl_dir(), None, "a");
    let b = Client::connect(&sw.ctl_dir(), None, "b");
    let m = Client::connect(&sw.ctl_dir(), None, "mirror");
    mgmt.cmd_ok(&format!("port/setmirror {} 1", m.port()));
    assert!(mgmt.cmd_ok("capture/print").contains(&format!("Port {:04} mirror\n", m.port())));
    let (mac_a, mac_b) = (station_mac(1), station_mac(2));
    for f in [
        pass(&a, &b, frame(BROADCAST, mac_a, TEST_ETHERTYPE, 46)),
        pass(&b, &a, frame(mac_a, mac_b, TEST_ETHERTYPE, 46)),
        pass(&a, &b, frame(mac_b, mac_a, TEST_ETHERTYPE, 46)),
    ] {
        m.expect_frame(&f);
    }
    assert_silent(&[&a, &b, &m]);
    // Tags stay as they came: `a` sends tagged for VLAN 5, where `b` is an
    // untagged member and gets the frame untagged; the mirror gets it tagged.
    mgmt.cmd_ok("vlan/create 5");
    mgmt.cmd_ok(&format!("vlan/addport 5 {}", a.port()));
    mgmt.cmd_ok(&format!("port/setvlan {} 5", b.port()));
    let untagged = frame(BROADCAST, mac_a, TEST_ETHERTYPE, 46);
    let mut tagged = untagged.clone();
    tagged.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
    a.send(&tagged);
    b.expect_frame(&untagged);
    m.expect_frame(&tagged);
    // The mirror port only watches: what it sends goes nowhere.
    m.send(&frame(BROADCAST, station_mac(3), TEST_ETHERTYPE, 46));
    assert_silent(&[&a, &b, &m]);
    assert!(mgmt.cmd_ok(&format!("port/drops {}", m.port())).contains("mirror-port=1"));
    mgmt.cmd_ok(&format!("port/setmirror {} 0", m.port()));
    let unicast = frame(mac_a, mac_b, TEST_ETHERTYPE, 46);
    b.send(&unicast);
    assert_silent(&[&m]);
}
