//! `vswitch`: the switch daemon, a drop-in for `vde_switch`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nix::sys::signal::Signal;
use nix::unistd::{AccessFlags, Gid, Group, Uid, access};

use vswitch::cli::{self, Options, USAGE, VERSION};
use vswitch::engine::{DEFAULT_BUCKETS, DEFAULT_MTU, DEFAULT_NUMPORTS, MAX_BUCKETS, MAX_MTU, MAX_PORTS, bucket_count};
use vswitch::mgmt::SwitchInfo;
use vswitch::net::{self, Access, Config, Exit, VxlanSpec, log, modes};
use vswitch::wire::Mac;

/// Prints a message and the usage text, as getopt-style errors do.
fn usage_error(program: &str, message: &str) -> ExitCode {
    eprintln!("{program}: {message}");
    print!("{USAGE}");
    ExitCode::from(1)
}

fn group_id(name: &str) -> Result<Gid, String> {
    match Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid),
        _ => Err(format!("No such group '{name}'")),
    }
}

fn absolute(cwd: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() { p.to_path_buf() } else { cwd.join(p) }
}

fn readable(p: &Path) -> bool {
    access(p, AccessFlags::R_OK).is_ok()
}

/// The rc file: `-f`, else the per-user file, else the system-wide one.
fn rc_file(cwd: &Path, given: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = given {
        return Some(absolute(cwd, p));
    }
    let home = env::var_os("HOME").map(|h| PathBuf::from(h).join(".vde2/vde_switch.rc"));
    home.into_iter().chain([PathBuf::from("/etc/vde2/vde_switch.rc")]).find(|p| readable(p))
}

fn random_mac() -> Mac {
    let mut tail = [0u8; 4];
    // Without entropy a fixed tail still gives a valid, if less unique, MAC.
    let _ = getrandom::fill(&mut tail);
    Mac([0x00, 0xff, tail[0], tail[1], tail[2], tail[3]])
}

fn config(o: Options) -> Result<Config, (u8, String)> {
    let fail = |msg: String| (1u8, msg);
    let numports = o.numports.unwrap_or(i64::from(DEFAULT_NUMPORTS));
    if numports <= 0 {
        return Err(fail("The switch must have at least 1 port\n".into()));
    }
    let numports = u32::try_from(numports)
        .ok()
        .filter(|&n| n <= MAX_PORTS)
        .ok_or_else(|| fail(format!("The switch can have at most {MAX_PORTS} ports")))?;
    let hash_size = match o.hashsize {
        None => DEFAULT_BUCKETS,
        Some(n) => {
            let rounded = u64::try_from(n)
                .ok()
                .and_then(bucket_count)
                .ok_or_else(|| fail(format!("Invalid hash size {n} (1 to {MAX_BUCKETS})")))?;
            if i64::from(rounded) != n {
                log::log(&format!("Hash size must be a power of 2. {n} rounded to {rounded}"));
            }
            rounded
        }
    };
    let vxlans = o.vxlan.iter().map(|s| s.parse()).collect::<Result<Vec<VxlanSpec>, String>>().map_err(fail)?;
    let mtu = o.mtu.unwrap_or(i64::from(DEFAULT_MTU));
    let mtu = u32::try_from(mtu)
        .ok()
        .filter(|m| (1..=MAX_MTU).contains(m))
        .ok_or_else(|| fail(format!("Invalid MTU {mtu} (1 to {MAX_MTU})")))?;
    let group = o.group.as_deref().map(group_id).transpose().map_err(fail)?;
    let mgmt_group = o.mgmtgroup.as_deref().map(group_id).transpose().map_err(fail)?;
    let (ctl_mode, dir_mode) = modes(o.mode, o.dirmode);
    let mgmt_mode = o.mgmtmode.unwrap_or(0o600);
    let cwd = env::current_dir().map_err(|e| fail(format!("current directory: {e}")))?;
    let ctl_dir = o
        .sock
        .clone()
        .unwrap_or_else(|| PathBuf::from(if Uid::effective().is_root() { "/var/run/vde.ctl" } else { "/tmp/vde.ctl" }));
    let info = SwitchInfo {
        pid: std::process::id(),
        mac: random_mac(),
        priority: o.priority.map_or(0x8000, |p| p as u16),
        mgmt: o.mgmt.clone().map(|given| (given, mgmt_mode)),
        ctl_dir: String::new(),
        ctl_mode,
    };
    Ok(Config {
        ctl_dir: absolute(&cwd, &ctl_dir),
        access: Access { ctl_mode, dir_mode, group, mgmt_mode, mgmt_group },
        numports,
        hub: o.hub,
        // `-x` wins over `-F`, whatever their order.
        fstp: o.fstp && !o.hub,
        hash_size,
        info,
        daemon: o.daemon,
        stdin_console: !o.daemon && !o.nostdin,
        pidfile: o.pidfile.as_deref().map(|p| absolute(&cwd, p)),
        rcfile: rc_file(&cwd, o.rcfile.as_deref()),
        mgmt: o.mgmt.as_deref().map(|p| absolute(&cwd, Path::new(p))),
        taps: o.tap,
        streams: o.stream.iter().map(|p| absolute(&cwd, p)).collect(),
        dgrams: o.dgram.iter().map(|p| absolute(&cwd, p)).collect(),
        vhost_users: o.vhost_user.iter().map(|p| absolute(&cwd, p)).collect(),
        vxlans,
        trunk: o.trunk,
        mtu,
    })
}

fn main() -> ExitCode {
    let mut args = env::args_os();
    let program = args.next().map_or("vswitch".into(), |a| a.to_string_lossy().into_owned());
    log::init(&program);
    let options = match cli::parse(args) {
        Ok(o) => o,
        Err(message) => return usage_error(&program, &message),
    };
    if options.help {
        print!("{USAGE}");
        return ExitCode::from(1);
    }
    if options.version {
        print!("{VERSION}");
        return ExitCode::SUCCESS;
    }
    let macaddr = options.macaddr.clone();
    let mut config = match config(options) {
        Ok(c) => c,
        Err((code, message)) => {
            eprintln!("{message}");
            return ExitCode::from(code);
        }
    };
    if let Some(text) = macaddr {
        match text.parse::<Mac>() {
            Ok(mac) => config.info.mac = mac,
            Err(_) => return usage_error(&program, &format!("Invalid MAC Addr {text}")),
        }
    }
    if let Err(e) = net::prepare_signals() {
        eprintln!("{program}: cannot set up signals: {e}");
        return ExitCode::from(1);
    }
    match net::run(config) {
        Ok(Exit::Signal(Signal::SIGINT)) => {
            net::die_by(Signal::SIGINT);
            ExitCode::from(130)
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(fatal) => {
            log::log(&fatal.message);
            ExitCode::from(fatal.code as u8)
        }
    }
}
