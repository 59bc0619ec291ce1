//! `ferrovod-bench --model`: fits the parameters of `model.rs` on this host, prints its
//! predictions, and measures allreduces next to them.
//!
//! 1. α and β per transport (tcp over loopback, shm): N ranks of this binary (`--probe`) time
//!    a ring step over the raw transport (every rank sends m bytes to the next and receives m
//!    from the previous at once; at N = 2 a simultaneous exchange), at N = 2 and at every N of
//!    `--model-np`; at N = 2 also a ping-pong (one way = half the round trip). Sizes from 64 B
//!    to 32 MiB, the median over batches of steps; t = α + m·β is fitted by least squares on
//!    relative error, in the regimes of `model.rs`: split at the L2 cache by message size for
//!    the points whose working set (N ranks × 2 buffers × m) stays below the last-level cache,
//!    and the memory regime's β, alone, on the points whose working set reaches it.
//! 2. γ: this process times ferrovod's f32 sum kernel on two buffers at sizes from 64 KiB to
//!    32 MiB, fitted the same way (the slope is γ; the working set is the two buffers).
//! 3. Predictions for 2 to 1,024 ranks (ring, halving-doubling, hierarchical) on a cluster of
//!    `--ranks-per-host` ranks per host: shm within a host, the tcp fit (and, with
//!    `--alpha-us`/`--gbit`, the given network) between hosts.
//! 4. Unless `--no-measure`: allreduce with FERROVOD_ALLREDUCE_ALGORITHM=ring and
//!    =halving-doubling over tcp and shm at `--model-np` ranks, measured the way the plain
//!    bench measures (it is the plain bench, run quietly with `--json`) right after the probe
//!    on as many ranks, next to the one-host prediction. No parameter is taken from these
//!    measurements.

use std::ffi::OsString;
use std::time::Instant;

use ferrovod::config::Config;
use ferrovod::reduce::{Order, reduce_into};
use ferrovod::transport::{Step, Tag, Transport};
use ferrovod::{DType, ReduceOp, World};
use serde::{Deserialize, Serialize};

use crate::model::{self, Cluster, Cutting, Fit, Host, Link, Memory, Regimes};
use crate::{Args, Launch, TransportArg, launch, median, transport_name};

/// Message sizes of the point-to-point probes: several above L2, so that the large regime keeps
/// two points below the last-level cache on a few ranks, and up to where even 2 ranks' buffers
/// outgrow a last-level cache of a few tens of MiB.
const PROBE_SIZES: &[usize] =
    &[64, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 2 << 20, 4 << 20, 16 << 20, 32 << 20];

/// Buffer sizes of the reduction timing.
const GAMMA_SIZES: &[usize] = &[64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 32 << 20];

/// World sizes of the predictions.
const PREDICT_NP: &[usize] = &[2, 3, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// Tag of every probe message.
const PROBE_TAG: Tag = 0x6d6f_64656c;

/// What the probe ranks report: (bytes, median seconds) per size.
#[derive(Serialize, Deserialize)]
struct Probe {
    transport: String,
    /// Ranks that ran it.
    n: usize,
    /// Empty unless n = 2.
    ping_pong: Vec<(usize, f64)>,
    exchange: Vec<(usize, f64)>,
}

/// Rounds over all sizes: noise on this shared host comes in bursts, so each size is timed in
/// several rounds and the median taken over all of them.
const PROBE_ROUNDS: usize = 3;

/// Steps per timed batch. On more ranks than cores a rank often finds its data already there
/// and then waits a whole turn of the others, so single steps are bimodal and their median is
/// no step's cost; a batch's mean spans many turns, and the median over batches still drops
/// those that another process preempted.
const BATCH: usize = 16;

/// Iterations for `bytes` per round: the same on every rank without asking, about 0.1 s at
/// loopback speeds, at least 10.
fn probe_iters(bytes: usize) -> usize {
    (100_000_000 / (bytes + 20_000)).clamp(10, 3000)
}

/// Runs `step` `warm` times, then `iters` times in batches (all of them in one if fewer than
/// [`BATCH`]); appends each batch's mean to `times`.
fn batches(
    times: &mut Vec<f64>,
    warm: usize,
    iters: usize,
    mut step: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    for _ in 0..warm {
        step()?;
    }
    let batch = BATCH.min(iters);
    for _ in 0..iters / batch {
        let start = Instant::now();
        for _ in 0..batch {
            step()?;
        }
        times.push(start.elapsed().as_secs_f64() / batch as f64);
    }
    Ok(())
}

/// `--worker --probe`: on 2 ranks a ping-pong, and on any number a ring step, over the raw
/// transport. Rank 0 reports its times: every rank of a ring waits for its neighbours, so back
/// to back steps run at the pace of the slowest.
pub fn probe_worker(args: &Args) -> Result<(), String> {
    let config = Config::from_env().map_err(|e| e.to_string())?;
    let (_world, mut links) = World::join(&config).map_err(|e| e.to_string())?;
    let t: &mut dyn Transport = links.host.as_mut();
    let (r, n) = (t.rank(), t.size());
    if n < 2 {
        return Err(format!("the probe runs on 2 ranks or more, not {n}"));
    }
    let (next, prev) = ((r + 1) % n, (r + n - 1) % n);
    let e = |e: ferrovod::transport::Error| format!("probe on rank {r}: {e}");
    let mut out = Probe { transport: t.name().to_string(), n, ping_pong: Vec::new(), exchange: Vec::new() };
    let mut ping_pong = vec![Vec::new(); PROBE_SIZES.len()];
    let mut exchange = vec![Vec::new(); PROBE_SIZES.len()];
    for round in 0..PROBE_ROUNDS {
        for (k, &bytes) in PROBE_SIZES.iter().enumerate() {
            let send = vec![1u8; bytes];
            let mut recv = vec![0u8; bytes];
            let warm = if round == 0 { 5 } else { 2 };
            // The one-way probe is a pair's: only on 2 ranks. Half a round trip per step.
            if n == 2 {
                batches(&mut ping_pong[k], warm, probe_iters(bytes), || {
                    let mut ping = [Step::Send { peer: next, buf: &send }];
                    let mut pong = [Step::Recv { peer: prev, buf: &mut recv }];
                    if r == 0 {
                        t.exchange(PROBE_TAG, &mut ping).map_err(e)?;
                        t.exchange(PROBE_TAG, &mut pong).map_err(e)
                    } else {
                        t.exchange(PROBE_TAG, &mut pong).map_err(e)?;
                        t.exchange(PROBE_TAG, &mut ping).map_err(e)
                    }
                })?;
            }
            batches(&mut exchange[k], warm, probe_iters(bytes), || {
                let mut ring = [Step::Send { peer: next, buf: &send }, Step::Recv { peer: prev, buf: &mut recv }];
                t.exchange(PROBE_TAG, &mut ring).map_err(e)
            })?;
        }
    }
    for (k, &bytes) in PROBE_SIZES.iter().enumerate() {
        if n == 2 {
            out.ping_pong.push((bytes, median(&mut ping_pong[k]) / 2.0));
        }
        out.exchange.push((bytes, median(&mut exchange[k])));
    }
    // Every rank is done with every message before any closes: a word from every peer.
    let mut done = vec![[0u8; 1]; n];
    let mut steps: Vec<Step<'_>> = (0..n).filter(|&q| q != r).map(|q| Step::Send { peer: q, buf: &[1] }).collect();
    steps.extend(done.iter_mut().enumerate().filter(|&(q, _)| q != r).map(|(q, buf)| Step::Recv { peer: q, buf }));
    t.exchange(PROBE_TAG, &mut steps).map_err(e)?;
    if let (0, Some(path)) = (r, &args.json) {
        let text = serde_json::to_string(&out).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

/// A temporary file for one child run's JSON, removed on drop.
struct TempJson(std::path::PathBuf);

impl TempJson {
    fn new(what: &str) -> TempJson {
        TempJson(std::env::temp_dir().join(format!("ferrovod-model-{}-{what}.json", std::process::id())))
    }

    fn read(&self) -> Result<String, String> {
        std::fs::read_to_string(&self.0).map_err(|e| format!("reading {}: {e}", self.0.display()))
    }
}

impl Drop for TempJson {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn probe(transport: TransportArg, n: usize) -> Result<Probe, String> {
    let out = TempJson::new(&format!("probe-{}-{n}", transport_name(transport)));
    let args: Vec<OsString> = vec!["--probe".into(), "--json".into(), out.0.clone().into_os_string()];
    launch(&Launch { np: n, hosts: 1, transport, args: &args, env: &[], quiet: true })?;
    let probe: Probe = serde_json::from_str(&out.read()?).map_err(|e| format!("probe output: {e}"))?;
    if probe.n != n {
        return Err(format!("asked for a probe on {n} ranks, ran {}", probe.n));
    }
    Ok(probe)
}

/// (bytes, median seconds) of ferrovod's f32 sum kernel on two buffers of each size.
fn reduction_times() -> Vec<(usize, f64)> {
    GAMMA_SIZES
        .iter()
        .map(|&bytes| {
            let mut acc = vec![0u8; bytes];
            // Not zeros: a zeroed allocation reads the kernel's one zero page, which stays in
            // cache whatever the size. (1, 1, 1, 1) is a normal f32; sums of it stay finite.
            let src = vec![1u8; bytes];
            let iters = (400_000_000 / bytes).clamp(10, 2000);
            let mut times: Vec<f64> = (0..iters + 3)
                .map(|_| {
                    let start = Instant::now();
                    reduce_into(DType::F32, ReduceOp::Sum, &mut acc, std::hint::black_box(&src), Order::AccFirst);
                    start.elapsed().as_secs_f64()
                })
                .skip(3)
                .collect();
            (bytes, median(&mut times))
        })
        .collect()
}

fn fit(points: &[(usize, f64)], what: &str) -> Result<Fit, String> {
    let pts: Vec<(f64, f64)> = points.iter().map(|&(b, t)| (b as f64, t)).collect();
    model::fit_line(&pts).ok_or_else(|| format!("cannot fit a line to the {what} timings"))
}

/// The size of this machine's cache of `level` (sysfs, cpu0), if it says.
fn cache_size(level: u32) -> Option<usize> {
    let read = |i: u32| -> Option<(u32, usize)> {
        let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{i}");
        let level = std::fs::read_to_string(format!("{dir}/level")).ok()?.trim().parse().ok()?;
        let size = std::fs::read_to_string(format!("{dir}/size")).ok()?;
        let size = size.trim();
        let bytes = match size.strip_suffix('K') {
            Some(k) => k.parse::<usize>().ok()? << 10,
            None => size.strip_suffix('M')?.parse::<usize>().ok()? << 20,
        };
        Some((level, bytes))
    };
    (0..8).filter_map(read).find(|&(l, _)| l == level).map(|(_, b)| b)
}

/// A fit in its regimes, and what the table says of it.
struct Fitted {
    regimes: Regimes,
    /// Points whose working set reaches the last-level cache.
    spilled: usize,
    /// Whether the large regime took points beyond the last-level cache (too few below it).
    large_spilled: bool,
}

/// Fits `points` in the regimes of `model.rs`: the points whose working set (`working_set` of
/// their size) stays below `llc` up to `boundary` (small) and from it on (large; all points
/// from `boundary` on if fewer than two stay below `llc`); the memory β to the others, with
/// each point's α its size regime's.
fn fit_regimes(
    points: &[(usize, f64)],
    boundary: usize,
    llc: Option<usize>,
    working_set: impl Fn(usize) -> f64,
    what: &str,
) -> Result<Fitted, String> {
    let spills = |b: usize| llc.is_some_and(|llc| Memory { llc: llc as f64, beta: 0.0 }.spills(working_set(b)));
    let cached: Vec<_> = points.iter().copied().filter(|&(b, _)| !spills(b)).collect();
    let small: Vec<_> = cached.iter().copied().filter(|&(b, _)| b <= boundary).collect();
    let mut large: Vec<_> = cached.iter().copied().filter(|&(b, _)| b >= boundary).collect();
    let large_spilled = large.len() < 2;
    if large_spilled {
        large = points.iter().copied().filter(|&(b, _)| b >= boundary).collect();
    }
    let (fs, fl) = (fit(&small, what)?, fit(&large, what)?);
    let mut regimes = Regimes {
        small: Link { alpha: fs.alpha, beta: fs.beta },
        large: Link { alpha: fl.alpha, beta: fl.beta },
        boundary: boundary as f64,
        memory: None,
    };
    let spilled: Vec<(f64, f64)> = points.iter().filter(|&&(b, _)| spills(b)).map(|&(b, t)| (b as f64, t)).collect();
    if let (Some(llc), false) = (llc, spilled.is_empty()) {
        let (beta, _) = model::fit_slope(&spilled, |b| regimes.link(1.0, b).alpha)
            .ok_or_else(|| format!("cannot fit the memory regime of the {what} timings"))?;
        regimes.memory = Some(Memory { llc: llc as f64, beta });
    }
    Ok(Fitted { regimes, spilled: spilled.len(), large_spilled })
}

/// A probe's message of `bytes`: all of them stream from memory when the working set spills.
fn probe_time(r: &Regimes, bytes: usize, working_set: f64) -> f64 {
    r.time(1.0, bytes as f64, bytes as f64, working_set)
}

/// The residual of `(bytes, t)` under the regime that prices it, and that regime's initial.
fn residual((bytes, t): (usize, f64), r: &Regimes, working_set: f64) -> (f64, char) {
    let regime = match r.memory {
        Some(m) if m.spills(working_set) => 'm',
        _ if bytes as f64 > r.boundary => 'l',
        _ => 's',
    };
    ((probe_time(r, bytes, working_set) - t) / t, regime)
}

/// A time in µs, ms or s, with 3 significant digits or so.
fn time(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.1} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

fn size(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

fn link_text(l: &Link) -> String {
    format!("α = {:.2} µs, β = {:.4} ns/B ({:.2} GB/s)", l.alpha * 1e6, l.beta * 1e9, 1e-9 / l.beta)
}

fn regimes_text(r: &Regimes) -> String {
    let mut text = if r.boundary.is_finite() {
        format!("≤ {}: {}; above: {}", size(r.boundary as usize), link_text(&r.small), link_text(&r.large))
    } else {
        link_text(&r.small)
    };
    if let Some(m) = r.memory {
        text += &format!(
            "; working set ≥ {}: β = {:.4} ns/B ({:.2} GB/s), {:+.4} ns/B on the large regime",
            size(m.llc as usize),
            m.beta * 1e9,
            1e-9 / m.beta,
            (m.beta - r.large.beta) * 1e9
        );
    }
    text
}

/// Prints the fits of one transport's probes (the first on 2 ranks) with their residuals;
/// returns its parameters.
fn fitted_host(
    probes: &[Probe],
    gamma: Regimes,
    cores: f64,
    boundary: usize,
    llc: Option<usize>,
) -> Result<Host, String> {
    let pair = &probes[0];
    // Working set of a probe on n ranks: each rank's send and receive buffers.
    let ws = |n: usize| move |b: usize| (n * 2 * b) as f64;
    let one_way = fit_regimes(&pair.ping_pong, boundary, llc, ws(2), "ping-pong")?;
    let exchange = probes
        .iter()
        .map(|p| fit_regimes(&p.exchange, boundary, llc, ws(p.n), "exchange").map(|f| (p.n, f)))
        .collect::<Result<Vec<_>, _>>()?;
    let host = Host {
        exchange: exchange.iter().map(|(n, f)| (*n, f.regimes)).collect(),
        one_way: one_way.regimes,
        gamma,
        cores,
    };
    println!();
    println!("## {}: median per size; working set = N ranks × 2 buffers × m", pair.transport);
    let spilled = |f: &Fitted| {
        let memory = match (llc, f.spilled) {
            (None, _) => String::new(),
            (Some(_), 0) => " (no point's working set reaches the last-level cache: no memory regime)".into(),
            (Some(_), k) => format!(" (memory β from {k} points)"),
        };
        let large =
            if f.large_spilled { " (too few points above L2 stay in cache: the large regime takes all)" } else { "" };
        memory + large
    };
    println!("- one way (half a ping-pong round trip, N = 2): {}{}", regimes_text(&one_way.regimes), spilled(&one_way));
    for (n, f) in &exchange {
        println!(
            "- exchange, N = {n} (a ring step: every rank sends m to the next and receives m from the previous at \
             once): {}{}",
            regimes_text(&f.regimes),
            spilled(f)
        );
    }
    println!();
    let mut head = "| message | one way measured | fit | residual |".to_string();
    let mut rule = "|---:|---:|---:|---:|".to_string();
    for (n, _) in &exchange {
        head += &format!(" exchange N = {n} measured | fit | residual |");
        rule += "---:|---:|---:|";
    }
    println!("{head}");
    println!("{rule}");
    let cell = |point: (usize, f64), r: &Regimes, working_set: f64| {
        let (res, regime) = residual(point, r, working_set);
        format!(" {} | {} {regime} | {:+.1}% |", time(point.1), time(probe_time(r, point.0, working_set)), res * 100.0)
    };
    for (k, &(bytes, t)) in pair.ping_pong.iter().enumerate() {
        let mut row = format!("| {} |{}", size(bytes), cell((bytes, t), &host.one_way, ws(2)(bytes)));
        for (p, (n, f)) in probes.iter().zip(&exchange) {
            row += &cell(p.exchange[k], &f.regimes, ws(*n)(bytes));
        }
        println!("{row}");
    }
    println!();
    println!("(fit: s, l, m = the small, large or memory regime.)");
    Ok(host)
}

fn print_predictions(title: &str, cluster: &Cluster, sizes: &[usize], cut: &Cutting) {
    println!();
    println!("## Predictions: {title}");
    println!();
    println!("| size | N | hosts × ranks | ring | halving-doubling | hierarchical (rings) | fastest |");
    println!("|---:|---:|---:|---:|---:|---:|---|");
    for &bytes in sizes {
        for &n in PREDICT_NP {
            let (h, l) = cluster.shape(n);
            let t = [
                ("ring", cluster.ring(n, bytes, cut)),
                ("halving-doubling", cluster.halving_doubling(n, bytes, cut)),
                ("hierarchical", cluster.hierarchical(n, bytes, cut)),
            ];
            let best = t.iter().min_by(|a, b| a.1.total_cmp(&b.1)).map_or("", |b| b.0);
            println!(
                "| {} | {n} | {h} × {l} | {} | {} | {} | {best} |",
                size(bytes),
                time(t[0].1),
                time(t[1].1),
                time(t[2].1)
            );
        }
    }
}

/// One measured row of the plain bench's JSON.
#[derive(Deserialize)]
struct Measured {
    algorithm: String,
    transport: String,
    bytes: usize,
    median_s: f64,
}

/// Runs the plain bench quietly: allreduce of `sizes` with `algorithm` over `transport`.
fn measure(args: &Args, transport: TransportArg, algorithm: &str, np: usize) -> Result<Vec<Measured>, String> {
    let out = TempJson::new(&format!("{}-{algorithm}-{np}", transport_name(transport)));
    let sizes: Vec<String> = args.sizes().iter().map(|b| b.to_string()).collect();
    let child: Vec<OsString> = vec![
        "--op".into(),
        "allreduce".into(),
        "--sizes".into(),
        sizes.join(",").into(),
        "--min-time".into(),
        args.min_time.to_string().into(),
        "--min-iters".into(),
        args.min_iters.to_string().into(),
        "--json".into(),
        out.0.clone().into_os_string(),
    ];
    let env = [("FERROVOD_ALLREDUCE_ALGORITHM", algorithm)];
    launch(&Launch { np, hosts: 1, transport, args: &child, env: &env, quiet: true })?;
    let rows: Vec<Measured> = serde_json::from_str(&out.read()?).map_err(|e| format!("bench output: {e}"))?;
    if let Some(r) = rows.iter().find(|r| r.algorithm != algorithm || r.transport != transport_name(transport)) {
        return Err(format!(
            "asked for {algorithm} over {}, ran {} over {}",
            transport_name(transport),
            r.algorithm,
            r.transport
        ));
    }
    Ok(rows)
}

/// `--model`.
pub fn run(args: &Args) -> Result<(), String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let tuning = Config::from_env().map_err(|e| e.to_string())?.tuning;
    let cut = Cutting { segment: tuning.segment, chunk: tuning.ring_chunk, elem: 4 };
    if args.ranks_per_host == 0 {
        return Err("--ranks-per-host must be at least 1".into());
    }
    if let Some(n) = args.model_np.iter().find(|&&n| n < 2) {
        return Err(format!("--model-np {n}: an allreduce to measure needs 2 ranks or more"));
    }
    println!("# ferrovod-bench --model: the alpha-beta (Hockney) model, fitted on this host ({cores} cores)");
    println!();
    println!(
        "ferrovod's cutting: FERROVOD_SEGMENT = {} B, FERROVOD_RING_CHUNK = {} B; f32 sum.",
        cut.segment, cut.chunk
    );
    println!("Parameters: least squares of t = α + m·β on relative error; residual = (fit − measured) / measured.");

    let boundary = cache_size(2).unwrap_or(1 << 20);
    let llc = cache_size(3);
    println!(
        "Regimes: messages up to {} (this machine's L2 cache) and above it, both while the working set stays \
         below the last-level cache; {}",
        size(boundary),
        match llc {
            Some(l) => format!(
                "from {} (its L3) on, the memory regime: its β fitted alone, each point's α its size regime's.",
                size(l)
            ),
            None =>
                "sysfs names no level-3 cache, so no memory regime: the size regimes price every working set.".into(),
        }
    );
    let gamma_points = reduction_times();
    let gamma_fit = fit_regimes(&gamma_points, boundary, llc, |b| 2.0 * b as f64, "reduction")?;
    // The reduction's intercept is call overhead (near zero, even negative): γ is the slope.
    let g = gamma_fit.regimes;
    let gamma = Regimes { small: Link { alpha: 0.0, ..g.small }, large: Link { alpha: 0.0, ..g.large }, ..g };
    // The exchange probed at 2 ranks (the cluster's) and at every N measured. The allreduces
    // on N ranks are measured right after the probe on N: on a shared host the load moves
    // within a minute, and a fit should see the load that its predictions meet.
    let mut np = vec![2];
    np.extend(&args.model_np);
    np.sort_unstable();
    np.dedup();
    let mut measured = Vec::new();
    let mut hosts = Vec::new();
    for transport in [TransportArg::Tcp, TransportArg::Shm] {
        let mut probes = Vec::new();
        for &n in &np {
            probes.push(probe(transport, n)?);
            if !args.no_measure && args.model_np.contains(&n) {
                for algorithm in ["ring", "halving-doubling"] {
                    measured.push((transport, algorithm, n, measure(args, transport, algorithm, n)?));
                }
            }
        }
        hosts.push(fitted_host(&probes, gamma, cores as f64, boundary, llc)?);
    }
    let (tcp, shm) = (&hosts[0], &hosts[1]);
    println!();
    println!(
        "## γ: f32 sum of two buffers in this process (working set 2 × buffer): γ = {:.4} ns/B up to {}, {:.4} \
         ns/B above{}",
        gamma.small.beta * 1e9,
        size(boundary),
        gamma.large.beta * 1e9,
        match (gamma.memory, gamma_fit.spilled) {
            (Some(m), k) =>
                format!(", {:.4} ns/B from a working set of {} on ({k} points)", m.beta * 1e9, size(m.llc as usize)),
            (None, _) if llc.is_some() => " (no point reaches the last-level cache: no memory regime)".into(),
            (None, _) => String::new(),
        }
    );
    println!();
    println!("| buffer | measured | fit (slope only) | residual |");
    println!("|---:|---:|---:|---:|");
    for &(bytes, t) in &gamma_points {
        let working_set = 2.0 * bytes as f64;
        let (res, regime) = residual((bytes, t), &gamma, working_set);
        println!(
            "| {} | {} | {} {regime} | {:+.1}% |",
            size(bytes),
            time(t),
            time(probe_time(&gamma, bytes, working_set)),
            res * 100.0
        );
    }

    println!();
    println!(
        "Cluster predictions: {} ranks per host, one core each; within a host the shm fits of 2 ranks (the \
         memory regime when the host's ranks' buffers reach its last-level cache), between hosts the network \
         named; ranks ordered host by host. Ring: every step waits for the link between hosts (one flow per \
         host). Halving-doubling: a step with a partner ≥ {} ranks away crosses the network with all of a \
         host's ranks at once. Hierarchical (the textbook variant; ferrovod's own uses its shared stage within a host and is \
         measured with --hosts): ring reduce-scatter within \
         the host, then one ring allreduce per local rank across hosts on its 1/L share (the L rings share the \
         host's link), then ring allgather within the host. Every message pays α.",
        args.ranks_per_host, args.ranks_per_host
    );
    // The wire between hosts has no memory regime: the loopback fit's is this host's memory.
    let network = Regimes { memory: None, ..*tcp.exchange(2) };
    let base = Cluster { intra: Host { cores: 1.0, ..shm.clone() }, network, per_host: args.ranks_per_host };
    let sizes = args.sizes();
    print_predictions(
        &format!("network = the tcp loopback exchange fit of 2 ranks ({})", regimes_text(&network)),
        &base,
        sizes,
        &cut,
    );
    if args.alpha_us.is_some() || args.gbit.is_some() {
        let alpha_us = args.alpha_us.unwrap_or(network.small.alpha * 1e6);
        let gbit = args.gbit.unwrap_or(8e-9 / network.small.beta);
        if !(alpha_us >= 0.0 && gbit > 0.0) {
            return Err(format!("--alpha-us {alpha_us} and --gbit {gbit}: need α ≥ 0 and a positive bandwidth"));
        }
        let wire = Link::from_us_gbit(alpha_us, gbit);
        let given = Cluster { network: Regimes::one(wire), ..base.clone() };
        print_predictions(
            &format!("network as given: {alpha_us} µs, {gbit} Gbit/s ({})", link_text(&wire)),
            &given,
            sizes,
            &cut,
        );
    }
    if args.no_measure {
        return Ok(());
    }

    println!();
    println!(
        "## Measured on this host against the one-host prediction ({cores} cores: N > {cores} oversubscribes; \
         each phase takes the exchange fit probed at its active ranks, and γ counts ⌈active / cores⌉ times)"
    );
    println!();
    println!(
        "Measured: `ferrovod-bench --op allreduce` (median over iterations of the slowest rank, ≥ {} s and ≥ {} \
         iterations per size) with FERROVOD_ALLREDUCE_ALGORITHM set. Regime: memory where a phase's working set \
         (active ranks × buffer) reaches the last-level cache.",
        args.min_time, args.min_iters
    );
    println!();
    println!(
        "| algorithm | transport | N | size | regime | predicted | measured (median) | measured/predicted | within 25%? |"
    );
    println!("|---|---|---:|---:|---|---:|---:|---:|---|");
    let (mut hits, mut total) = (0, 0);
    for (transport, host) in [(TransportArg::Tcp, tcp), (TransportArg::Shm, shm)] {
        for algorithm in ["ring", "halving-doubling"] {
            for &np in &args.model_np {
                let rows = measured.iter().find(|m| (m.0, m.1, m.2) == (transport, algorithm, np)).map(|m| &m.3);
                for row in rows.into_iter().flatten() {
                    let phases = if algorithm == "ring" {
                        model::ring(np, row.bytes, &cut)
                    } else {
                        model::halving_doubling(np, row.bytes, &cut)
                    };
                    let predicted = model::time_on_host(&phases, host);
                    let memory = llc.is_some_and(|l| {
                        phases.iter().any(|p| Memory { llc: l as f64, beta: 0.0 }.spills(p.active as f64 * p.footprint))
                    });
                    let ratio = row.median_s / predicted;
                    let ok = (0.75..=1.25).contains(&ratio);
                    hits += usize::from(ok);
                    total += 1;
                    let over = if np > cores { " (oversubscribed)" } else { "" };
                    println!(
                        "| {algorithm} | {} | {np}{over} | {} | {} | {} | {} | {ratio:.2} | {} |",
                        row.transport,
                        size(row.bytes),
                        if memory { "memory" } else { "cache" },
                        time(predicted),
                        time(row.median_s),
                        if ok { "yes" } else { "**no**" }
                    );
                }
            }
        }
    }
    println!();
    println!("Within 25%: {hits} of {total} points.");
    Ok(())
}
