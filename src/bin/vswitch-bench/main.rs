//! `vswitch-bench`: vswitch against the reference `vde_switch` and against
//! a floor forwarder with no switching logic, side by side on this machine,
//! in interleaved runs, with real VDE clients.

mod load;
mod report;
mod target;
mod vhost;
mod vxlan;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use report::{Measurement, Record};
use target::{Extras, Fanout, Kind, Switch};

#[derive(Parser)]
#[command(about = "Benchmark vswitch against vde_switch and a floor forwarder")]
struct Args {
    /// Seconds of traffic per measured run.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Interleaved repetitions of every run.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Where results.json and idle-ports.svg are written.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Idle-port counts for the scaling sweep.
    #[arg(long, value_delimiter = ',', default_value = "0,100,1000,5000")]
    idle: Vec<usize>,
    /// Pin the switch to CPU 0 and the load generator to CPU 1 in the
    /// throughput workloads (round trips always run on one CPU). Off by
    /// default: unpinned, the scheduler spreads the two over both CPUs as
    /// well, and the floor's margin over vde_switch came out the same.
    #[arg(long)]
    pin: bool,
    /// Round trips timed per switch and repetition.
    #[arg(long, default_value_t = 30_000)]
    round_trips: usize,
    /// Bursts of 32 frames per port that testpmd starts circulating in the
    /// vhost-user loopback.
    #[arg(long, default_value_t = 32)]
    bursts: u32,
    /// The vhost-user floor polls a ring for up to N microseconds after its
    /// last frame before waiting for a kick (its `--vhost-user-poll-us`).
    #[arg(long, value_name = "N", default_value_t = 0)]
    vhost_user_poll_us: u64,
    /// Run only the workloads whose label contains this text.
    #[arg(long)]
    only: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Workload {
    Pair64,
    Pairs8,
    Pair1500,
    /// The 64-byte pair while vswitch captures every port to a file.
    Captured,
    /// With `--mtu 9000`, which vde_switch does not have.
    Pair9000,
    Broadcast8,
    Idle(usize),
    /// A pair with broadcasts, beside a client that never reads, or not.
    Stalled(bool),
    Latency,
    Rss1000,
    /// A pair of `--stream` and of `--dgram` peers (QEMU's back-ends).
    StreamPair,
    DgramPair,
    /// One pair across two switches in two namespaces over VXLAN.
    Vxlan64,
    /// testpmd's two virtio-user ports looping 64-byte frames through the
    /// switch's two vhost-user ports.
    VhostLoopback,
    /// Started with `-n N`, no client attached.
    RssPorts(u32),
}

impl Workload {
    pub fn label(self) -> String {
        match self {
            Workload::Pair64 => "unicast pair, 64 B".into(),
            Workload::Pairs8 => "8 unicast pairs, 64 B".into(),
            Workload::Pair1500 => "unicast pair, 1500 B".into(),
            Workload::Captured => "unicast pair, 64 B, vswitch capturing every port to a file".into(),
            Workload::Pair9000 => "unicast pair, 9000 B (--mtu 9000)".into(),
            Workload::Broadcast8 => "broadcast to 8, 64 B".into(),
            Workload::Idle(n) => format!("unicast pair + {n} idle ports"),
            Workload::Stalled(false) => "pair with broadcasts, all clients reading".into(),
            Workload::Stalled(true) => "pair with broadcasts, beside a client that never reads".into(),
            Workload::Latency => "round trip at low rate".into(),
            Workload::Rss1000 => "RSS with 1000 endpoints".into(),
            Workload::StreamPair => "stream pair, 64 B (--stream)".into(),
            Workload::DgramPair => "dgram pair, 64 B (--dgram)".into(),
            Workload::Vxlan64 => "VXLAN between two switches, one pair, 64 B".into(),
            Workload::VhostLoopback => "vhost-user loopback, 64 B".into(),
            Workload::RssPorts(n) => format!("RSS with -n {n}, no clients"),
        }
    }

    pub fn targets(self) -> &'static [Kind] {
        match self {
            Workload::Idle(_)
            | Workload::Stalled(_)
            | Workload::Rss1000
            | Workload::RssPorts(_)
            | Workload::Captured => &[Kind::Vswitch, Kind::VdeSwitch],
            Workload::StreamPair | Workload::DgramPair => &[Kind::Vswitch],
            Workload::Vxlan64 => &[Kind::Vswitch, Kind::VdePlugVxlan],
            Workload::VhostLoopback => &[Kind::Vswitch, Kind::OvsDpdk, Kind::Floor],
            Workload::Pair9000 => &[Kind::Vswitch, Kind::Floor],
            _ => &[Kind::Vswitch, Kind::VdeSwitch, Kind::Floor, Kind::TokioFloor],
        }
    }
}

/// Rates for a traffic run; `base` is the switch's CPU time before it, so
/// attaching idle clients does not count.
fn traffic(sw: &Switch, base: Duration, t: load::Traffic) -> Measurement {
    let cpu = sw.cpu_time().saturating_sub(base);
    Measurement {
        frames_per_s: t.received as f64 / t.seconds,
        loss_pct: 100.0 * t.expected.saturating_sub(t.received) as f64 / t.expected.max(1) as f64,
        // Per frame forwarded, i.e. delivered to a receiver: work spent on
        // frames that were then dropped buys nothing.
        cpu_ns_per_frame: cpu.as_nanos() as f64 / t.received.max(1) as f64,
        ..Measurement::default()
    }
}

fn run(
    workload: Workload,
    kind: Kind,
    duration: Duration,
    pin: bool,
    huge: Option<&vhost::Hugepages>,
    bursts: u32,
    poll_us: u64,
) -> Result<Measurement> {
    if workload == Workload::VhostLoopback {
        let huge = huge.context("hugepages were not reserved")?.dir();
        return match kind {
            Kind::OvsDpdk => {
                let ovs = vhost::OvsDpdk::start(huge)?;
                vhost::loopback(huge, &ovs.sockets(), ovs.pid(), duration, bursts)
            }
            _ => {
                let backend = vhost::VhostBackend::start(kind, poll_us)?;
                vhost::loopback(huge, &backend.sockets(), backend.pid(), duration, bursts)
            }
        };
    }
    if workload == Workload::Vxlan64 {
        let (t, cpu) = vxlan::run(kind, duration)?;
        return Ok(Measurement {
            frames_per_s: t.received as f64 / t.seconds,
            loss_pct: 100.0 * t.expected.saturating_sub(t.received) as f64 / t.expected.max(1) as f64,
            cpu_ns_per_frame: cpu.as_nanos() as f64 / t.received.max(1) as f64,
            ..Measurement::default()
        });
    }
    let fanout = if workload == Workload::Broadcast8 { Fanout::All } else { Fanout::Pair };
    let idle = match workload {
        Workload::Idle(n) => n,
        Workload::Rss1000 => 1000,
        _ => 0,
    };
    let extras = Extras {
        // vde_switch has no capture: it runs as in the plain pair, the baseline.
        capture: workload == Workload::Captured && kind == Kind::Vswitch,
        qemu: matches!(workload, Workload::StreamPair | Workload::DgramPair),
        mtu: (workload == Workload::Pair9000).then_some(9000),
    };
    let numports = match workload {
        Workload::RssPorts(n) => n,
        _ => (idle + 32) as u32,
    };
    let sw = Switch::start(kind, numports, fanout, pin.then_some(target::SWITCH_CPU), extras)?;
    let dir = sw.ctl_dir();
    let _idle_clients = load::attach(&dir, idle, "idle")?;
    let base_cpu = sw.cpu_time();
    let measured = match workload {
        Workload::Pair64 | Workload::Idle(_) | Workload::Captured => {
            traffic(&sw, base_cpu, load::unicast_pairs(&dir, 1, 64, duration)?)
        }
        Workload::Pairs8 => traffic(&sw, base_cpu, load::unicast_pairs(&dir, 8, 64, duration)?),
        Workload::Pair1500 => traffic(&sw, base_cpu, load::unicast_pairs(&dir, 1, 1500, duration)?),
        Workload::Pair9000 => traffic(&sw, base_cpu, load::unicast_pairs(&dir, 1, 9000, duration)?),
        Workload::Broadcast8 => traffic(&sw, base_cpu, load::broadcast(&dir, 8, duration)?),
        Workload::Stalled(stalled) => {
            traffic(&sw, base_cpu, load::pair_beside_stalled_client(&dir, stalled, duration)?)
        }
        Workload::Latency => bail!("round trips are measured on all targets at once"),
        Workload::VhostLoopback => bail!("the vhost-user loopback has no socket switch"),
        Workload::Rss1000 | Workload::RssPorts(_) => {
            Measurement { rss_kib: sw.rss_kib() as f64, ..Measurement::default() }
        }
        Workload::StreamPair => traffic(&sw, base_cpu, load::stream_pair(&sw.stream_path(), duration)?),
        Workload::DgramPair => traffic(&sw, base_cpu, load::dgram_pair(&sw.dgram_path(), duration)?),
        Workload::Vxlan64 => bail!("the VXLAN workload runs its own switches"),
    };
    Ok(measured)
}

/// The `-n` values of the memory rows: the default, a large lab, the most.
const RSS_PORTS: [u32; 3] = [32, 1024, 65535];

/// Where the round-trip workload runs, switches and clients alike.
const ROUND_TRIP_CPU: usize = target::LOAD_CPU;

/// Round trips through every target in turns: per target, the round-trip
/// times and the switch's CPU time spent on them.
///
/// The switches and both clients share one CPU. Across CPUs every hop is a
/// wake-up of an idle virtual CPU, tens of microseconds on these machines
/// and whichever switch is measured, and where the scheduler places each
/// task changes from run to run; on one CPU the round trip is the
/// switches' own path plus the clients'.
fn latency(samples: usize) -> Result<Vec<(Kind, Vec<Duration>, Duration)>> {
    let kinds = Workload::Latency.targets();
    let switches: Vec<Switch> = kinds
        .iter()
        .map(|&k| Switch::start(k, 32, Fanout::Pair, Some(ROUND_TRIP_CPU), Extras::default()))
        .collect::<Result<_>>()?;
    let dirs: Vec<PathBuf> = switches.iter().map(Switch::ctl_dir).collect();
    let base_cpu: Vec<Duration> = switches.iter().map(Switch::cpu_time).collect();
    // The clients' threads inherit the pinning from this one.
    let rtts = std::thread::spawn(move || {
        target::pin(nix::unistd::Pid::from_raw(0), ROUND_TRIP_CPU);
        load::round_trips(&dirs, samples)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the latency clients panicked"))??;
    let cpu = switches.iter().zip(base_cpu).map(|(sw, base)| sw.cpu_time().saturating_sub(base));
    Ok(kinds.iter().copied().zip(rtts).zip(cpu).map(|((k, r), c)| (k, r, c)).collect())
}

/// Percentiles of sorted round trips, and CPU per forwarded frame.
fn round_trip_figures(rtts: &[Duration], cpu: Duration) -> Measurement {
    let pick = |q: f64| rtts.get(((rtts.len() as f64 - 1.0) * q) as usize).map_or(0.0, |d| d.as_secs_f64() * 1e6);
    Measurement {
        p50_us: pick(0.5),
        p99_us: pick(0.99),
        // Every round trip is two forwarded frames.
        cpu_ns_per_frame: cpu.as_nanos() as f64 / (2 * rtts.len().max(1)) as f64,
        ..Measurement::default()
    }
}

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Hugepages for the vhost-user loopback, or why it is skipped.
fn hugepages() -> Option<vhost::Hugepages> {
    let why = match Workload::VhostLoopback.targets().iter().find_map(|&k| vhost::unavailable(k)) {
        Some(why) => why,
        None => match vhost::Hugepages::reserve() {
            Ok(huge) => return Some(huge),
            Err(e) => format!("{e:#}"),
        },
    };
    eprintln!("skipping {}: {why}", Workload::VhostLoopback.label());
    None
}

fn main() -> Result<()> {
    let args = Args::parse();
    target::find_binaries()?;
    raise_fd_limit();
    if args.pin {
        // The generators' threads inherit this.
        target::pin(nix::unistd::Pid::from_raw(0), target::LOAD_CPU);
    }
    let duration = Duration::from_secs_f64(args.seconds);
    let mut workloads =
        vec![Workload::Pair64, Workload::Pairs8, Workload::Pair1500, Workload::Pair9000, Workload::Captured];
    workloads.push(Workload::Broadcast8);
    workloads.extend(args.idle.iter().map(|&n| Workload::Idle(n)));
    workloads.extend([Workload::Stalled(false), Workload::Stalled(true), Workload::Latency, Workload::Rss1000]);
    workloads.extend(RSS_PORTS.map(Workload::RssPorts));
    workloads.extend([Workload::StreamPair, Workload::DgramPair]);
    if nix::unistd::Uid::effective().is_root() {
        workloads.push(Workload::Vxlan64);
    } else {
        eprintln!("VXLAN workload skipped: it needs root for network namespaces");
    }
    workloads.push(Workload::VhostLoopback);
    if let Some(only) = &args.only {
        workloads.retain(|w| w.label().contains(only.as_str()));
    }
    let huge = if workloads.contains(&Workload::VhostLoopback) { hugepages() } else { None };
    if huge.is_none() {
        workloads.retain(|&w| w != Workload::VhostLoopback);
    }
    let total: usize = args.reps * workloads.iter().map(|w| w.targets().len()).sum::<usize>();
    let bar = ProgressBar::new(total as u64);
    bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}").expect("valid template"));
    let mut records = Vec::new();
    // Round trips of all repetitions together: the tail is a rare event.
    let mut pooled: BTreeMap<Kind, (Vec<Duration>, Duration)> = BTreeMap::new();
    for rep in 0..args.reps {
        for &workload in &workloads {
            bar.set_message(workload.label());
            if workload == Workload::Latency {
                for (kind, rtts, cpu) in latency(args.round_trips).context("round trips")? {
                    records.push(Record { workload, target: kind, rep: Some(rep), m: round_trip_figures(&rtts, cpu) });
                    let (all, total_cpu) = pooled.entry(kind).or_default();
                    all.extend(rtts);
                    *total_cpu += cpu;
                }
            } else {
                for &kind in workload.targets() {
                    let m =
                        run(workload, kind, duration, args.pin, huge.as_ref(), args.bursts, args.vhost_user_poll_us)
                            .with_context(|| format!("{} on {}", workload.label(), kind.name()))?;
                    records.push(Record { workload, target: kind, rep: Some(rep), m });
                }
            }
            bar.inc(workload.targets().len() as u64);
        }
    }
    for (kind, (mut rtts, cpu)) in pooled {
        rtts.sort();
        records.push(Record {
            workload: Workload::Latency,
            target: kind,
            rep: None,
            m: round_trip_figures(&rtts, cpu),
        });
    }
    bar.finish_and_clear();
    print!("{}", report::table(&workloads, &records));
    std::fs::create_dir_all(&args.out)?;
    report::write_json(&args.out.join("results.json"), &records)?;
    report::plot_idle(&args.out.join("idle-ports.svg"), &args.idle, &records)?;
    println!("\nwrote {}/results.json and {}/idle-ports.svg", args.out.display(), args.out.display());
    Ok(())
}
