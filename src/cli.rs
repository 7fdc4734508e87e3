//! Command-line parsing with vde_switch's conventions: `getopt_long_only`
//! lets long options start with one dash (`-hub`, `-sock DIR`) and accepts
//! unique abbreviations (`--numport 4`). Those forms are first rewritten to
//! canonical `--name` words, then clap parses the result.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

/// Long options and whether they take an argument, in `--help` order.
const LONG_OPTIONS: &[(&str, bool)] = &[
    ("help", false),
    ("version", false),
    ("numports", true),
    ("hub", false),
    ("fstp", false),
    ("macaddr", true),
    ("priority", true),
    ("hashsize", true),
    ("sock", true),
    ("vdesock", true),
    ("unix", true),
    ("mode", true),
    ("dirmode", true),
    ("group", true),
    ("daemon", false),
    ("pidfile", true),
    ("rcfile", true),
    ("mgmt", true),
    ("mgmtmode", true),
    ("mgmtgroup", true),
    ("nostdin", false),
    ("debugclients", true),
    ("tap", true),
    ("vxlan", true),
    ("trunk", false),
    ("mtu", true),
];
/// vswitch's own long options (taking an argument). They are matched by
/// their full name only, so that every abbreviation vde_switch accepts
/// still means what it means there (`--s` is `--sock`), and they stay out
/// of the usage text, which is vde_switch's.
const OWN_LONG_OPTIONS: &[&str] = &["stream", "dgram", "vhost-user"];
const SHORT_OPTIONS: &str = "hvnxFsmgdpfMDt";

pub const USAGE: &str = "Usage: vswitch [OPTIONS]
Runs a VDE switch.
(global opts)
  -h, --help                 Display this help and exit
  -v, --version              Display informations on version and exit
  -n  --numports             Number of ports (default 32)
  -x, --hub                  Make the switch act as a hub
  -F, --fstp                 Activate the fast spanning tree protocol
      --macaddr MAC          Set the Switch MAC address
      --priority N           Set the priority for FST (MAC extension)
      --hashsize N           Hash table size
(opts from datasock module)
  -s, --sock SOCK            control directory pathname
  -s, --vdesock SOCK         Same as --sock SOCK
  -s, --unix SOCK            Same as --sock SOCK
  -m, --mode MODE            Permissions for the control socket (octal)
      --dirmode MODE         Permissions for the sockets directory (octal)
  -g, --group GROUP          Group owner for comm sockets
(opts from consmgmt module)
  -d, --daemon               Daemonize vde_switch once run
  -p, --pidfile PIDFILE      Write pid of daemon to PIDFILE
  -f, --rcfile               Configuration file (overrides /etc/vde2/vde_switch.rc and ~/.vderc)
  -M, --mgmt SOCK            path of the management UNIX socket
      --mgmtmode MODE        management UNIX socket access mode (octal)
      --mgmtgroup GROUP      management UNIX socket group name
      --nostdin              Allow stdin to be closed
  -D, --debugclients #       number of debug clients allowed
(opts from tuntap module)
  -t, --tap TAP              Enable routing through TAP tap interface
(opts from vxlan module)
      --vxlan SPEC           Join a VXLAN: id=VNI,remote=ADDR|group=MCAST,dev=IFACE[,local=ADDR,dstport=N,ttl=N]
(vswitch extensions)
      --trunk                Every port is a transparent trunk for unconfigured VLANs
      --mtu N                Largest frame payload in bytes (default 1500, up to 65500)

Report bugs to info@v2.cs.unibo.it
";

pub const VERSION: &str = "VDE 2.3.2 (vswitch)
Copyright 2003,...,2011 Renzo Davoli
some code from uml_switch Copyright (C) 2001, 2002 Jeff Dike and others
VDE comes with NO WARRANTY, to the extent permitted by law.
You may redistribute copies of VDE under the terms of the
GNU General Public License v2.
For more information about these matters, see the files
named COPYING.
";

/// The options, as typed values.
#[derive(Debug, Default, Parser)]
#[command(no_binary_name = true, disable_help_flag = true, disable_version_flag = true, args_override_self = true)]
pub struct Options {
    #[arg(short = 'h', long)]
    pub help: bool,
    #[arg(short = 'v', long)]
    pub version: bool,
    #[arg(short = 'n', long, value_parser = c_int, allow_negative_numbers = true)]
    pub numports: Option<i64>,
    #[arg(short = 'x', long)]
    pub hub: bool,
    #[arg(short = 'F', long)]
    pub fstp: bool,
    #[arg(long)]
    pub macaddr: Option<String>,
    #[arg(long, value_parser = c_int, allow_negative_numbers = true)]
    pub priority: Option<i64>,
    #[arg(long, value_parser = c_int, allow_negative_numbers = true)]
    pub hashsize: Option<i64>,
    #[arg(short = 's', long, alias = "vdesock", alias = "unix")]
    pub sock: Option<PathBuf>,
    #[arg(short = 'm', long, value_parser = octal)]
    pub mode: Option<u32>,
    #[arg(long, value_parser = octal)]
    pub dirmode: Option<u32>,
    #[arg(short = 'g', long)]
    pub group: Option<String>,
    #[arg(short = 'd', long)]
    pub daemon: bool,
    #[arg(short = 'p', long)]
    pub pidfile: Option<PathBuf>,
    #[arg(short = 'f', long)]
    pub rcfile: Option<PathBuf>,
    #[arg(short = 'M', long)]
    pub mgmt: Option<String>,
    #[arg(long, value_parser = octal)]
    pub mgmtmode: Option<u32>,
    #[arg(long)]
    pub mgmtgroup: Option<String>,
    /// No console on stdin (upstream vde-2 after 2.3.2): stdin may be
    /// closed or at EOF, as under a service manager.
    #[arg(long)]
    pub nostdin: bool,
    /// Accepted for compatibility; vswitch has no limit to set.
    #[arg(short = 'D', long)]
    pub debugclients: Option<String>,
    #[arg(short = 't', long)]
    pub tap: Vec<String>,
    /// Unix stream sockets to listen on for QEMU's `-netdev stream`.
    #[arg(long)]
    pub stream: Vec<PathBuf>,
    /// Unix datagram sockets to bind for QEMU's `-netdev dgram`.
    #[arg(long)]
    pub dgram: Vec<PathBuf>,
    /// Unix stream sockets to serve vhost-user-net frontends on (QEMU's
    /// `-netdev vhost-user`, DPDK's `net_virtio_user`).
    #[arg(long = "vhost-user")]
    pub vhost_user: Vec<PathBuf>,
    #[arg(long)]
    pub vxlan: Vec<String>,
    #[arg(long)]
    pub trunk: bool,
    #[arg(long, value_parser = c_int, allow_negative_numbers = true)]
    pub mtu: Option<i64>,
}

/// A number as C's `%i` reads it: `0x` hex, leading `0` octal, else
/// decimal; parsing stops at the first character that does not fit.
pub fn c_int(s: &str) -> Result<i64, String> {
    let s = s.trim_start();
    let (negative, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (radix, digits) = match body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        Some(hex) => (16, hex),
        None if body.starts_with('0') => (8, body),
        None => (10, body),
    };
    let end = digits.find(|c: char| !c.is_digit(radix)).unwrap_or(digits.len());
    let value = if end == 0 { 0 } else { i64::from_str_radix(&digits[..end], radix).map_err(|e| e.to_string())? };
    Ok(if negative { -value } else { value })
}

fn octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim(), 8).map_err(|_| format!("invalid octal mode '{s}'"))
}

/// Resolves a long option name or unique abbreviation.
fn resolve(name: &str, shown: &str) -> Result<Option<&'static str>, String> {
    if let Some((full, _)) = LONG_OPTIONS.iter().find(|(n, _)| *n == name) {
        return Ok(Some(full));
    }
    if let Some(full) = OWN_LONG_OPTIONS.iter().find(|n| **n == name) {
        return Ok(Some(full));
    }
    let matches: Vec<&str> = LONG_OPTIONS.iter().map(|(n, _)| *n).filter(|n| n.starts_with(name)).collect();
    match matches.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        many => {
            let list: Vec<String> = many.iter().map(|n| format!("'--{n}'")).collect();
            Err(format!("option '{shown}' is ambiguous; possibilities: {}", list.join(" ")))
        }
    }
}

/// Rewrites single-dash and abbreviated long options to `--name` form.
fn normalize(args: &[String]) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--" {
            out.push(arg.clone());
            out.extend(iter.by_ref().cloned());
            break;
        }
        let (body, double) = match arg.strip_prefix("--") {
            Some(b) => (b, true),
            None => match arg.strip_prefix('-') {
                Some(b) if !b.is_empty() => (b, false),
                _ => {
                    out.push(arg.clone());
                    continue;
                }
            },
        };
        let is_short = !double && body.len() == 1 && SHORT_OPTIONS.contains(body);
        if is_short {
            out.push(arg.clone());
            continue;
        }
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        match resolve(name, arg.split('=').next().unwrap_or(arg))? {
            Some(full) => out.push(match value {
                Some(v) => format!("--{full}={v}"),
                None => format!("--{full}"),
            }),
            None if !double && body.starts_with(|c| SHORT_OPTIONS.contains(c)) => out.push(arg.clone()),
            None => return Err(format!("unrecognized option '{arg}'")),
        }
    }
    Ok(out)
}

/// Parses the arguments after the program name. An error is the one-line
/// message to print before the usage text.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Options, String> {
    let args: Vec<String> = args.into_iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let words = normalize(&args)?;
    Options::try_parse_from(words).map_err(|e| {
        let text = e.to_string();
        text.lines().next().unwrap_or("invalid arguments").trim_start_matches("error: ").to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Options, String> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn own_options_only_by_full_name() {
        let o = p(&["--stream", "/a", "-stream", "/b", "--dgram=/c"]).unwrap();
        assert_eq!(o.stream, [PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(o.dgram, [PathBuf::from("/c")]);
        let o = p(&["--vhost-user", "/a", "-vhost-user=/b"]).unwrap();
        assert_eq!(o.vhost_user, [PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(p(&["--s", "/x"]).unwrap().sock, Some(PathBuf::from("/x")));
        assert!(p(&["--str", "/x"]).is_err());
    }

    #[test]
    fn single_dash_long_options() {
        let o = p(&["-numports", "4", "-sock", "/tmp/x", "-daemon", "-hub"]).unwrap();
        assert_eq!(o.numports, Some(4));
        assert_eq!(o.sock, Some(PathBuf::from("/tmp/x")));
        assert!(o.daemon && o.hub);
    }

    #[test]
    fn upstream_nostdin() {
        assert!(p(&["-nostdin"]).unwrap().nostdin);
        assert!(p(&["--nostd"]).unwrap().nostdin);
        assert!(!p(&[]).unwrap().nostdin);
    }

    #[test]
    fn abbreviations_and_aliases() {
        let o = p(&["--numport", "4", "--vdesock", "/a", "--mod", "660"]).unwrap();
        assert_eq!((o.numports, o.mode), (Some(4), Some(0o660)));
        assert_eq!(o.sock, Some(PathBuf::from("/a")));
        assert_eq!(p(&["-unix=/b"]).unwrap().sock, Some(PathBuf::from("/b")));
        assert!(
            p(&["--mgm", "x"])
                .unwrap_err()
                .contains("is ambiguous; possibilities: '--mgmt' '--mgmtmode' '--mgmtgroup'")
        );
    }

    #[test]
    fn short_clusters_and_attached_values() {
        let o = p(&["-dx", "-n8", "-s/tmp/sw", "-M", "m"]).unwrap();
        assert!(o.daemon && o.hub);
        assert_eq!(o.numports, Some(8));
        assert_eq!(o.sock, Some(PathBuf::from("/tmp/sw")));
    }

    #[test]
    fn rejects_unknown_and_extra() {
        assert_eq!(p(&["-H", "64"]).unwrap_err(), "unrecognized option '-H'");
        assert_eq!(p(&["-é"]).unwrap_err(), "unrecognized option '-é'");
        assert!(p(&["--bogus"]).is_err());
        assert!(p(&["extra"]).is_err());
    }

    #[test]
    fn c_int_radixes() {
        assert_eq!(c_int("0x1234"), Ok(0x1234));
        assert_eq!(c_int("010"), Ok(8));
        assert_eq!(c_int("-3"), Ok(-3));
        assert_eq!(c_int("12abc"), Ok(12));
        assert_eq!(c_int("junk"), Ok(0));
    }

    #[test]
    fn extensions() {
        let o = p(&["-trunk", "--mtu=9000"]).unwrap();
        assert!(o.trunk);
        assert_eq!(o.mtu, Some(9000));
        assert!(!p(&[]).unwrap().trunk);
    }

    #[test]
    fn repeated_options_take_the_last() {
        assert_eq!(p(&["-n", "4", "-n", "6"]).unwrap().numports, Some(6));
        assert_eq!(p(&["-t", "a", "-t", "b"]).unwrap().tap, vec!["a", "b"]);
    }
}
