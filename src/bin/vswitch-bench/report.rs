//! Summaries: the terminal table, the JSON file and the idle-ports plot.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::Workload;
use crate::target::Kind;

/// What one run measured; fields a workload does not measure stay zero.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Measurement {
    pub frames_per_s: f64,
    pub loss_pct: f64,
    pub cpu_ns_per_frame: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub rss_kib: f64,
    /// The switch's CPU time per second of wall time while its ports are
    /// attached and silent, in percent of one CPU.
    pub idle_cpu_pct: f64,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Record {
    pub workload: Workload,
    pub target: Kind,
    /// `None` for figures over all repetitions together.
    pub rep: Option<usize>,
    #[serde(flatten)]
    pub m: Measurement,
}

/// Median, minimum and maximum of one field over repetitions.
#[derive(Debug, Clone, Copy, Default)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

fn spread(values: impl Iterator<Item = f64>) -> Spread {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return Spread::default();
    }
    v.sort_by(f64::total_cmp);
    Spread { median: v[v.len() / 2], min: v[0], max: v[v.len() - 1] }
}

fn field(records: &[Record], w: Workload, k: Kind, f: fn(&Measurement) -> f64) -> Spread {
    spread(records.iter().filter(|r| r.workload == w && r.target == k && r.rep.is_some()).map(|r| f(&r.m)))
}

/// A field over all repetitions together, where the workload has one.
fn pooled(records: &[Record], w: Workload, k: Kind, f: fn(&Measurement) -> f64) -> Option<f64> {
    records.iter().find(|r| r.workload == w && r.target == k && r.rep.is_none()).map(|r| f(&r.m))
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 { format!("{:.2}x", a / b) } else { "-".into() }
}

/// The whole table, one block per workload.
pub fn table(workloads: &[Workload], records: &[Record]) -> String {
    let mut out = String::new();
    for &w in workloads {
        let _ = writeln!(out, "\n{}", w.label());
        let get = |k: Kind, f: fn(&Measurement) -> f64| field(records, w, k, f);
        match w {
            Workload::Latency => {
                let _ = writeln!(
                    out,
                    "  {:<11} {:>24} {:>24} {:>13}",
                    "switch", "p50 µs (per-run range)", "p99 µs (per-run range)", "CPU ns/frame"
                );
                for &k in w.targets() {
                    let (p50, p99) = (get(k, |m| m.p50_us), get(k, |m| m.p99_us));
                    let all = |f| pooled(records, w, k, f).unwrap_or(f64::NAN);
                    let _ = writeln!(
                        out,
                        "  {:<11} {:>10.1} ({:>5.1}-{:>5.1}) {:>10.1} ({:>5.1}-{:>5.1}) {:>13.0}",
                        k.name(),
                        all(|m| m.p50_us),
                        p50.min,
                        p50.max,
                        all(|m| m.p99_us),
                        p99.min,
                        p99.max,
                        all(|m| m.cpu_ns_per_frame)
                    );
                }
                let _ = writeln!(out, "  (round trips of all runs together; switches and clients on one CPU)");
            }
            Workload::Vxlan64 => {
                let _ = writeln!(
                    out,
                    "  {:<15} {:>30} {:>13} {:>8} {:>18}",
                    "path", "delivered frames/s (min-max)", "CPU ns/frame", "loss %", "vs vde_plug vxlan"
                );
                let plug = get(Kind::VdePlugVxlan, |m| m.frames_per_s).median;
                for &k in w.targets() {
                    let fps = get(k, |m| m.frames_per_s);
                    let name = if k == Kind::Vswitch { "vswitch --vxlan" } else { k.name() };
                    let _ = writeln!(
                        out,
                        "  {:<15} {:>10.0} ({:>8.0}-{:>8.0}) {:>13.0} {:>8.1} {:>18}",
                        name,
                        fps.median,
                        fps.min,
                        fps.max,
                        get(k, |m| m.cpu_ns_per_frame).median,
                        get(k, |m| m.loss_pct).median,
                        ratio(fps.median, plug)
                    );
                }
                let _ = writeln!(out, "  (CPU of both switches, and of the four vde_plug processes where used)");
            }
            Workload::VhostLoopback => {
                let _ = writeln!(
                    out,
                    "  {:<11} {:>30} {:>22} {:>11} {:>12}",
                    "switch", "delivered frames/s (min-max)", "frames per CPU-second", "idle CPU %", "vs ovs-dpdk"
                );
                let ovs = get(Kind::OvsDpdk, |m| m.frames_per_s).median;
                for &k in w.targets() {
                    let fps = get(k, |m| m.frames_per_s);
                    let per_cpu_s = 1e9 / get(k, |m| m.cpu_ns_per_frame).median;
                    let _ = writeln!(
                        out,
                        "  {:<11} {:>10.0} ({:>8.0}-{:>8.0}) {:>22.0} {:>11.1} {:>12}",
                        k.name(),
                        fps.median,
                        fps.min,
                        fps.max,
                        per_cpu_s,
                        get(k, |m| m.idle_cpu_pct).median,
                        ratio(fps.median, ovs)
                    );
                }
            }
            Workload::Rss1000 | Workload::RssPorts(_) => {
                for &k in &[Kind::Vswitch, Kind::VdeSwitch] {
                    let _ = writeln!(out, "  {:<11} {:>8.0} KiB", k.name(), get(k, |m| m.rss_kib).median);
                }
                let (a, b) = (get(Kind::Vswitch, |m| m.rss_kib), get(Kind::VdeSwitch, |m| m.rss_kib));
                let _ = writeln!(out, "  vswitch / vde_switch: {}", ratio(a.median, b.median));
                if let Workload::RssPorts(n) = w
                    && n != 32
                {
                    let default = field(records, Workload::RssPorts(32), Kind::Vswitch, |m| m.rss_kib).median;
                    let _ = writeln!(out, "  vswitch with -n {n} / with -n 32: {}", ratio(a.median, default));
                }
            }
            _ => {
                let _ = writeln!(
                    out,
                    "  {:<11} {:>30} {:>13} {:>8} {:>12} {:>10}",
                    "switch", "delivered frames/s (min-max)", "CPU ns/frame", "loss %", "vs vde_switch", "vs floor"
                );
                let vde = get(Kind::VdeSwitch, |m| m.frames_per_s).median;
                let floor = get(Kind::Floor, |m| m.frames_per_s).median;
                for &k in w.targets() {
                    let fps = get(k, |m| m.frames_per_s);
                    let cpu = get(k, |m| m.cpu_ns_per_frame).median;
                    let loss = get(k, |m| m.loss_pct).median;
                    let _ = writeln!(
                        out,
                        "  {:<11} {:>10.0} ({:>8.0}-{:>8.0}) {:>13.0} {:>8.1} {:>12} {:>10}",
                        k.name(),
                        fps.median,
                        fps.min,
                        fps.max,
                        cpu,
                        loss,
                        ratio(fps.median, vde),
                        ratio(fps.median, floor)
                    );
                }
                if matches!(w, Workload::StreamPair | Workload::DgramPair) {
                    let vde = |f: fn(&Measurement) -> f64| field(records, Workload::Pair64, Kind::Vswitch, f).median;
                    let _ = writeln!(
                        out,
                        "  vs vswitch's VDE pair: frames/s {}, CPU per frame {}",
                        ratio(get(Kind::Vswitch, |m| m.frames_per_s).median, vde(|m| m.frames_per_s)),
                        ratio(get(Kind::Vswitch, |m| m.cpu_ns_per_frame).median, vde(|m| m.cpu_ns_per_frame))
                    );
                    continue;
                }
                if w == Workload::Stalled(true) {
                    for &k in w.targets() {
                        let beside = get(k, |m| m.frames_per_s).median;
                        let alone = field(records, Workload::Stalled(false), k, |m| m.frames_per_s).median;
                        let _ = writeln!(
                            out,
                            "  {} throughput beside the stalled client / without it: {}",
                            k.name(),
                            ratio(beside, alone)
                        );
                    }
                }
                let cpu = |k| get(k, |m| m.cpu_ns_per_frame).median;
                let _ = write!(
                    out,
                    "  CPU per frame, vswitch vs vde_switch {} vs floor {}",
                    ratio(cpu(Kind::Vswitch), cpu(Kind::VdeSwitch)),
                    ratio(cpu(Kind::Vswitch), cpu(Kind::Floor))
                );
                if w.targets().contains(&Kind::TokioFloor) {
                    let _ = write!(out, "; tokio floor vs floor {}", ratio(cpu(Kind::TokioFloor), cpu(Kind::Floor)));
                }
                let _ = writeln!(out);
            }
        }
    }
    out
}

pub fn write_json(path: &Path, records: &[Record]) -> Result<()> {
    let file = std::fs::File::create(path)?;
    serde_json::to_writer_pretty(file, records)?;
    Ok(())
}

/// Delivered frames/s against idle ports, one line per switch.
pub fn plot_idle(path: &Path, idle: &[usize], records: &[Record]) -> Result<()> {
    let mut series: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for &k in &[Kind::Vswitch, Kind::VdeSwitch] {
        let points = idle.iter().map(|&n| (n as f64, field(records, Workload::Idle(n), k, |m| m.frames_per_s).median));
        series.insert(k.name(), points.collect());
    }
    let top = series.values().flatten().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let right = idle.iter().copied().max().unwrap_or(1).max(1) as f64;
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Unicast pair throughput vs idle attached ports", ("sans-serif", 18))
        .margin(12)
        .margin_right(40)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..right, 0.0..top)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("idle attached ports")
        .y_desc("delivered frames/s")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, (name, points)) in series.into_iter().enumerate() {
        let color = if i == 0 { RED } else { BLUE };
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, color.filled()))).map_err(|e| anyhow!("{e}"))?;
    }
    chart.configure_series_labels().border_style(BLACK).draw().map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
