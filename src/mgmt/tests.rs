//! The console core without any transport: framing, lookup, events in
//! replies, scripts and rc files, checked against what vde_switch 2.3.2
//! prints (captured from the reference binary).

use std::fs;

use nix::errno::Errno;

use super::*;
use crate::engine::{Attach, Credentials, PortId, PortRequest};

fn info() -> SwitchInfo {
    SwitchInfo {
        pid: 42,
        mac: Mac([2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]),
        priority: 0x8000,
        mgmt: None,
        ctl_dir: "/run/sw".into(),
        ctl_mode: 0o600,
    }
}

/// A switch and one session of the given kind, driven line by line.
struct Console {
    switch: Switch,
    info: SwitchInfo,
    session: Session,
    effects: Vec<Effect>,
    events: Vec<Event>,
    log: Vec<String>,
}

impl Console {
    fn new(kind: SessionKind) -> Self {
        Console {
            switch: Switch::new(8, false, 128),
            info: info(),
            session: Session::new(kind),
            effects: Vec::new(),
            events: Vec::new(),
            log: Vec::new(),
        }
    }

    fn run(&mut self, line: &str) -> String {
        let mut ctx = Context::new(&mut self.switch, &self.info, 5, &mut self.session);
        let reply = execute(&mut ctx, line);
        self.effects.extend(ctx.effects);
        self.events.extend(ctx.events);
        self.log.extend(ctx.log);
        String::from_utf8(reply.into_bytes()).expect("a reply of text")
    }

    /// Runs a line as the event loop does: the scripts a `load` needs are
    /// read ahead and the command itself touches no file.
    fn run_prefetched(&mut self, line: &str) -> String {
        let scripts = load_target(line).map(|path| prefetch(path, read_script)).unwrap_or_default();
        let mut ctx = Context::new(&mut self.switch, &self.info, 5, &mut self.session);
        ctx.scripts = Some(scripts);
        let reply = execute(&mut ctx, line);
        self.effects.extend(ctx.effects);
        self.log.extend(ctx.log);
        String::from_utf8(reply.into_bytes()).expect("a reply of text")
    }

    fn script(&mut self, name: &str, text: &str) -> (String, Result<(), Errno>) {
        let mut ctx = Context::new(&mut self.switch, &self.info, 5, &mut self.session);
        let mut out = Out::default();
        let result = run_script(&mut ctx, name, text, &mut out);
        self.effects.extend(ctx.effects);
        self.log.extend(ctx.log);
        (String::from_utf8(out.into_bytes()).expect("a reply of text"), result)
    }

    fn attach(&mut self, port: PortId, id: u32) {
        let request = Attach {
            request: PortRequest::Port(port),
            id,
            module: "unix prog",
            description: format!("client {id}").into_bytes(),
            user: Some(0),
            credentials: Credentials::default(),
        };
        self.switch.attach(request).expect("attach");
        drop(self.switch.take_events());
    }
}

const OK: &str = "1000 Success\n";

#[test]
fn framing_of_status_data_and_unknown() {
    let mut c = Console::new(SessionKind::Socket);
    assert_eq!(c.run("vlan/create 10"), OK);
    assert_eq!(c.run("vlan/create 10"), "1017 File exists\n");
    assert_eq!(
        c.run("port/showinfo"),
        "0000 DATA END WITH '.'\nNumports=8\nHUB=false\ncounters=true\n.\n1000 Success\n"
    );
    // The data block is printed even when the command fails.
    assert_eq!(c.run("port/print 40"), "0000 DATA END WITH '.'\n.\n1022 Invalid argument\n");
    assert_eq!(c.run("nosuchcommand"), "1038 Function not implemented\n");
    assert_eq!(c.run("port"), "1038 Function not implemented\n", "menus are not commands");
}

#[test]
fn lines_that_are_no_commands_get_no_reply() {
    let mut c = Console::new(SessionKind::Socket);
    for line in ["", "   ", "\t", "# comment", "  #x", "\0help", "\n"] {
        assert_eq!(c.run(line), "", "{line:?}");
    }
}

#[test]
fn lookup_takes_the_first_path_prefixing_the_line() {
    let mut c = Console::new(SessionKind::Socket);
    // `port/printjunk` is `port/print junk`, i.e. port atoi("junk") = 0.
    assert_eq!(c.run("port/printjunk"), "0000 DATA END WITH '.'\n.\n1006 No such device or address\n");
    // `helpme` is `help me`: only the header matches.
    let header = "COMMAND PATH       SYNTAX          HELP\n------------       --------------  ------------\n";
    assert_eq!(c.run("helpme"), format!("0000 DATA END WITH '.'\n{header}.\n1000 Success\n"));
    // `\r` is part of the argument; what follows a NUL is not seen at all.
    assert_eq!(c.run("help port/print\r"), format!("0000 DATA END WITH '.'\n{header}.\n1000 Success\n"));
    let print = "port/print         [N]             print the port/endpoint table\n";
    assert_eq!(c.run("help port/print\0junk"), format!("0000 DATA END WITH '.'\n{header}{print}.\n1000 Success\n"));
    assert_eq!(c.run("\t help port/print"), c.run("help port/print"));
}

#[test]
fn help_lists_every_command_in_table_order() {
    let mut c = Console::new(SessionKind::Socket);
    let reply = c.run("help");
    let paths: Vec<&str> = reply.lines().skip(3).filter_map(|l| l.split(' ').next()).collect();
    let expected: Vec<&str> = COMMANDS.iter().map(|c| c.path).chain([".", "1000"]).collect();
    assert_eq!(paths, expected);
    assert!(reply.contains("vlan/delport       N PORT          add port to the vlan N (tagged)\n"));
}

#[test]
fn events_come_before_the_reply_and_only_when_subscribed() {
    let mut c = Console::new(SessionKind::Socket);
    assert_eq!(c.run("port/create 5"), OK);
    assert_eq!(c.events, vec![Event::PortAdd(5)], "other sessions are told");
    assert_eq!(c.run("debug/add port"), OK);
    assert_eq!(c.run("port/create 6"), "3021 port/+ 06\n1000 Success\n");
    assert_eq!(c.run("port/createauto"), "3021 port/+ 01\n0000 DATA END WITH '.'\nPort 0001\n.\n1000 Success\n");
}

#[test]
fn debug_add_and_del_results() {
    let mut c = Console::new(SessionKind::Socket);
    assert_eq!(c.run("debug/add nomatch"), "1022 Invalid argument\n");
    assert_eq!(c.run("debug/del port"), "1002 No such file or directory\n");
    assert_eq!(c.run("debug/del mgmt"), "1002 No such file or directory\n", "hidden categories match");
    assert_eq!(c.run("debug/del nomatch"), "1022 Invalid argument\n");
    assert_eq!(c.run("debug/add port "), "1022 Invalid argument\n", "the prefix is literal");
    assert_eq!(c.run("debug/add port/ep"), OK);
    assert_eq!(c.run("debug/add port"), OK, "some were still off");
    assert_eq!(c.run("debug/add port"), "1017 File exists\n");
    let list = c.run("debug/list port/ep/+");
    assert!(list.contains("port/ep/+              031 ON     new endpoint\n"), "{list}");
    assert_eq!(c.run("debug/list nomatch").lines().last(), Some("1002 No such file or directory"));
}

#[test]
fn logout_and_shutdown_end_sessions_by_kind() {
    let mut c = Console::new(SessionKind::Socket);
    assert_eq!(c.run("logout"), END_OF_SESSION);
    assert_eq!(c.run("shutdownx"), END_OF_SESSION, "prefix match");
    assert_eq!(c.effects, vec![Effect::Logout, Effect::Shutdown]);
    let mut stdin = Console::new(SessionKind::Stdin);
    assert_eq!(stdin.run("logout"), "", "the stdin console prints nothing");
    assert_eq!(stdin.effects, vec![Effect::Logout]);
}

#[test]
fn port_create_zero_allocates_like_createauto() {
    let mut c = Console::new(SessionKind::Socket);
    assert_eq!(c.run("port/create 0x14"), OK);
    assert_eq!(c.run("port/create 0"), OK);
    let ports = c.run("port/allprint");
    assert!(
        ports.starts_with("0000 DATA END WITH '.'\nPort 0001 untagged_vlan=0000 INACTIVE - NOT Unnamed"),
        "{ports}"
    );
    assert!(ports.contains("Port 0002 untagged_vlan=0000 INACTIVE - NOT Unnamed Allocatable\n"), "{ports}");
    assert_eq!(c.run("port/setnumports 3"), OK);
    assert_eq!(c.run("port/create 0"), "1028 No space left on device\n");
}

#[test]
fn setuser_resolution_order() {
    let mut c = Console::new(SessionKind::Socket);
    assert_eq!(c.run("port/setuser 5 root"), "1006 No such device or address\n");
    assert_eq!(c.run("port/create 5"), OK);
    assert_eq!(c.run("port/setuser 5 12abc"), OK, "a leading digit means atoi");
    assert_eq!(c.run("port/setgroup 5 NONE"), OK);
    let block = c.run("port/allprint 5");
    assert!(block.contains("Access Control: (User: 12 - Group: NONE)"), "{block}");
    assert_eq!(c.run("port/setuser 5 root "), "1022 Invalid argument\n", "trailing blanks are part of the name");
    assert_eq!(c.run("port/setuser 5\troot"), "1022 Invalid argument\n", "a tab does not separate");
}

#[test]
fn epclose_detaches_at_once_and_reannounces_inactive_ports() {
    let mut c = Console::new(SessionKind::Socket);
    c.attach(3, 11);
    assert_eq!(c.run("debug/add port"), OK);
    // `%i`: 011 is octal 9, not an endpoint of the (active) port.
    assert_eq!(c.run("port/epclose 3 011"), "1006 No such device or address\n");
    assert_eq!(c.run("port/epclose 3 11"), "3032 port/ep/- Port 03 FD 11\n3022 port/- 03\n1000 Success\n");
    assert!(c.switch.port(3).is_some_and(|p| !p.is_active()));
    assert!(matches!(c.effects[..], [Effect::CloseEndpoint(_)]), "{:?}", c.effects);
    assert_eq!(c.run("port/epclose 3 11"), "3022 port/- 03\n1006 No such device or address\n");
    assert_eq!(c.run("port/epclose 4 1"), "1006 No such device or address\n");
    assert_eq!(c.run("port/epclose 8 1"), "1022 Invalid argument\n");
}

#[test]
fn hash_setsize_rounds_with_a_log_line() {
    let mut c = Console::new(SessionKind::Socket);
    assert_eq!(c.run("hash/setsize 100"), OK);
    assert_eq!(c.log, vec!["Hash size must be a power of 2. 100 rounded to 128".to_string()]);
    assert_eq!(c.run("hash/setsize 64"), OK);
    assert_eq!(c.log.len(), 1, "a power of two is not worth a line");
    assert_eq!(c.run("hash/setsize 0"), "1022 Invalid argument\n");
}

#[test]
fn script_echoes_every_line_with_reference_quirks() {
    let mut c = Console::new(SessionKind::Socket);
    assert_eq!(c.run("debug/add port"), OK);
    let text = "port/create 6\n# comment\n\n   \nbogus\nhelp x\r\nlogout\nshutdown\nx\0y\nport/create 7";
    let (out, result) = c.script("/s.rc", text);
    assert_eq!(result, Ok(()));
    let header = "COMMAND PATH       SYNTAX          HELP\n------------       --------------  ------------\n";
    let expected = format!(
        "vde[/s.rc]: port/create 6\n3021 port/+ 06\n1000 Success\n\
         vde[/s.rc]: # comment\n\
         vde[/s.rc]: \n\n1038 Function not implemented\n\
         vde[/s.rc]:    \n\
         vde[/s.rc]: bogus\n1038 Function not implemented\n\
         vde[/s.rc]: help x\r\n0000 DATA END WITH '.'\n{header}.\n1000 Success\n\
         vde[/s.rc]: logout\n\
         vde[/s.rc]: shutdown\n\
         vde[/s.rc]: x\n1038 Function not implemented\n\
         vde[/s.rc]: port/create 7\n3021 port/+ 07\n1000 Success\n"
    );
    assert_eq!(out, expected);
    assert!(c.effects.is_empty(), "logout and shutdown do nothing in scripts");
}

#[test]
fn rc_file_discards_output_and_logs_failures_with_line_numbers() {
    let mut c = Console::new(SessionKind::RcFile);
    let text = "vlan/create 10\n\n# fine\nvlan/create 0\ndebug/add port\nload /x\nbogus arg\nlogout\n";
    let (out, result) = c.script("/etc/sw.rc", text);
    assert_eq!(result, Ok(()));
    assert!(!out.contains("vde["), "no echo: {out:?}");
    assert_eq!(
        c.log,
        vec![
            "/etc/sw.rc:4: vlan/create 0: Invalid argument",
            "/etc/sw.rc:5: debug/add port: Bad file descriptor",
            "/etc/sw.rc:6: load /x: Bad file descriptor",
            "/etc/sw.rc:7: bogus arg: Function not implemented",
        ]
    );
    assert!(c.switch.vlan(10).is_some(), "the rest was applied");
    assert!(c.effects.is_empty());
}

#[test]
fn nested_load_and_its_depth_limit() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let inner = dir.path().join("inner.rc");
    let outer = dir.path().join("outer.rc");
    fs::write(&inner, "vlan/create 4\n").unwrap();
    fs::write(&outer, format!("load {}\nload /nonexistent\n", inner.display())).unwrap();
    let mut c = Console::new(SessionKind::Socket);
    let reply = c.run(&format!("load {}", outer.display()));
    let (o, i) = (outer.display(), inner.display());
    assert_eq!(
        reply,
        format!(
            "vde[{o}]: load {i}\nvde[{i}]: vlan/create 4\n1000 Success\n1000 Success\n\
             vde[{o}]: load /nonexistent\n1002 No such file or directory\n1000 Success\n"
        )
    );
    let looping = dir.path().join("loop.rc");
    fs::write(&looping, format!("load {}\n", looping.display())).unwrap();
    let reply = c.run(&format!("load {}", looping.display()));
    assert_eq!(reply.matches("vde[").count(), MAX_LOAD_DEPTH);
    assert!(reply.contains("1040 Too many levels of symbolic links\n"), "{reply}");
    assert!(reply.ends_with("1000 Success\n"));
}

#[test]
fn load_refuses_what_is_not_a_small_regular_file() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let big = dir.path().join("big");
    fs::write(&big, vec![b'#'; (1 << 20) + 1]).unwrap();
    let mut c = Console::new(SessionKind::Socket);
    for (path, expected) in [
        ("/dev/zero".to_string(), "1022 Invalid argument\n"),
        (fifo.display().to_string(), "1022 Invalid argument\n"),
        (dir.path().display().to_string(), "1021 Is a directory\n"),
        (big.display().to_string(), "1027 File too large\n"),
        ("/nonexistent".to_string(), "1002 No such file or directory\n"),
        (String::new(), "1002 No such file or directory\n"),
    ] {
        assert_eq!(c.run(&format!("load {path}")), expected, "load {path:?}");
    }
}

#[test]
fn status_texts_are_the_c_librarys() {
    for (errno, line) in [
        (Errno::EBADF, "1009 Bad file descriptor\n"),
        (Errno::ENXIO, "1006 No such device or address\n"),
        (Errno::EADDRINUSE, "1098 Address already in use\n"),
        (Errno::ENOSPC, "1028 No space left on device\n"),
        (Errno::ENOSYS, "1038 Function not implemented\n"),
        (Errno::ENODEV, "1019 No such device\n"),
        (Errno::ELOOP, "1040 Too many levels of symbolic links\n"),
        (Errno::ENOBUFS, "1105 No buffer space available\n"),
    ] {
        assert_eq!(status(Err(errno)), line);
    }
    assert_eq!(status(Ok(())), OK);
}

#[test]
fn drop_counters_are_an_unlisted_extension() {
    let mut c = Console::new(SessionKind::Socket);
    c.run("port/create 3");
    let reply = c.run("port/drops 3");
    assert!(reply.starts_with("0000 DATA END WITH '.'\nPort 0003 runt=0 oversize=0 "), "{reply}");
    assert!(reply.ends_with("mirror-port=0\n.\n1000 Success\n"), "{reply}");
    assert_eq!(c.run("port/drops 99"), "0000 DATA END WITH '.'\n.\n1022 Invalid argument\n");
    assert!(!c.run("help").contains("port/drops"), "help must stay vde_switch's");
}

#[test]
fn vxlan_commands_are_unlisted_and_need_a_running_switch() {
    let mut c = Console::new(SessionKind::Socket);
    assert!(!c.run("help").contains("vxlan"), "help must stay vde_switch's");
    // Without the I/O layer (no sockets to open) they are not available.
    assert_eq!(c.run("vxlan/print"), "0000 DATA END WITH '.'\n.\n1038 Function not implemented\n");
    assert_eq!(c.run("vxlan/del 1"), "1038 Function not implemented\n");
    assert_eq!(c.run("vxlan/del x"), "1022 Invalid argument\n");
}

#[test]
fn settrunk_is_an_unlisted_extension() {
    let mut c = Console::new(SessionKind::Socket);
    c.run("port/create 3");
    assert_eq!(c.run("port/settrunk 3 1"), OK);
    assert!(c.switch.port(3).unwrap().is_trunk());
    assert_eq!(c.run("port/settrunk 3 0"), OK);
    assert!(!c.switch.port(3).unwrap().is_trunk());
    assert_eq!(c.run("port/settrunk 4 1"), "1006 No such device or address\n");
    assert_eq!(c.run("port/settrunk 99 1"), "1022 Invalid argument\n");
    assert_eq!(c.run("port/settrunk 3"), "1022 Invalid argument\n");
    assert!(!c.run("help").contains("settrunk"), "help must stay vde_switch's");
}

#[test]
fn create_0_is_refused_while_port_0_exists() {
    let mut c = Console::new(SessionKind::Socket);
    c.attach(0, 7);
    assert_eq!(c.run("port/create 0"), "1017 File exists\n");
    assert_eq!(c.run("port/create"), "1017 File exists\n");
}

#[test]
fn scripts_loading_themselves_stop_at_a_line_budget() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fork.rc");
    let line = format!("load {}\n", path.display());
    fs::write(&path, line.repeat(50)).unwrap();
    let mut c = Console::new(SessionKind::Socket);
    let reply = c.run(&format!("load {}", path.display()));
    assert!(reply.ends_with("1105 No buffer space available\n"), "{}", &reply[reply.len().saturating_sub(200)..]);
    assert!(reply.matches("vde[").count() <= MAX_SCRIPT_LINES);
    assert_eq!(c.run("port/showinfo").lines().last(), Some("1000 Success"), "the session still works");
}

#[test]
fn scripts_read_ahead_answer_as_scripts_read_in_place() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = |name: &str| dir.path().join(name).display().to_string();
    fs::write(path("inner.rc"), "vlan/create 4\n# load /not/read\n").unwrap();
    let outer = format!("  load {}\nload /nonexistent\nload\t{}\n", path("inner.rc"), path("empty"));
    fs::write(path("outer.rc"), outer).unwrap();
    fs::write(path("empty"), "").unwrap();
    fs::write(path("loop.rc"), format!("load {}\n", path("loop.rc"))).unwrap();
    fs::write(path("fork.rc"), format!("load {}\n", path("fork.rc")).repeat(50)).unwrap();
    let lines = ["load outer.rc", "load loop.rc", "load fork.rc", "load /dev/zero", "load", "port/create 3"];
    for line in lines.map(|l| l.replace("load ", &format!("load {}/", dir.path().display()))) {
        let direct = Console::new(SessionKind::Socket).run(&line);
        let ahead = Console::new(SessionKind::Socket).run_prefetched(&line);
        assert_eq!(direct, ahead, "{line}");
    }
    let scripts = prefetch(&path("outer.rc"), read_script);
    let mut read: Vec<String> = scripts.into_keys().collect();
    read.sort();
    let mut expected = [path("empty"), path("inner.rc"), "/nonexistent".into(), path("outer.rc")];
    expected.sort();
    assert_eq!(read, expected, "every script a load line names, and nothing in comments");
    assert_eq!(load_target("  # load x"), None);
    assert_eq!(load_target("load\tx\n"), Some("x"));
    assert_eq!(load_target("loadx"), Some("x"), "a command is any line its path begins");
}

#[test]
fn a_script_not_read_ahead_is_refused() {
    let mut c = Console::new(SessionKind::Socket);
    let mut ctx = Context::new(&mut c.switch, &c.info, 5, &mut c.session);
    ctx.scripts = Some(Scripts::from([("/a".to_string(), Ok("load /b\n".to_string()))]));
    assert_eq!(
        execute(&mut ctx, "load /a").as_bytes(),
        b"vde[/a]: load /b\n1105 No buffer space available\n1000 Success\n"
    );
    ctx.scripts = Some(Scripts::new());
    assert_eq!(
        execute(&mut ctx, "load /etc/hostname").as_bytes(),
        b"1105 No buffer space available\n",
        "no file is read in place"
    );
}
