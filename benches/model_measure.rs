//! `ferrovod-bench --model`: fits the parameters of `model.rs` on this host, prints its
//! predictions, and measures allreduces next to them.
//!
//! 1. α and β per transport (tcp over loopback, shm): 2 ranks of this binary (`--probe`) time
//!    a ping-pong (one way = half the round trip) and a simultaneous exchange (both ranks send
//!    and receive m bytes) over the raw transport at sizes from 64 B to 4 MiB, the median of
//!    many iterations each; t = α + m·β is fitted to each by least squares on relative error.
//! 2. γ: this process times ferrovod's f32 sum kernel on two buffers at sizes from 64 KiB to
//!    16 MiB, fitted the same way (the slope is γ).
//! 3. Predictions for 2 to 1,024 ranks (ring, halving-doubling, hierarchical) on a cluster of
//!    `--ranks-per-host` ranks per host: shm within a host, the tcp fit (and, with
//!    `--alpha-us`/`--gbit`, the given network) between hosts.
//! 4. Unless `--no-measure`: allreduce with FERROVOD_ALLREDUCE_ALGORITHM=ring and
//!    =halving-doubling over tcp and shm at `--model-np` ranks, measured the way the plain
//!    bench measures (it is the plain bench, run quietly with `--json`), next to the one-host
//!    prediction. No parameter is taken from these measurements.

use std::ffi::OsString;
use std::time::Instant;

use ferrovod::config::Config;
use ferrovod::reduce::{Order, reduce_into};
use ferrovod::transport::{Step, Tag, Transport};
use ferrovod::{DType, ReduceOp, World};
use serde::{Deserialize, Serialize};

use crate::model::{self, Cluster, Cutting, Fit, Host, Link, Regimes};
use crate::{Args, Launch, TransportArg, launch, median, transport_name};

/// Message sizes of the point-to-point probes.
const PROBE_SIZES: &[usize] = &[64, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20];

/// Buffer sizes of the reduction timing.
const GAMMA_SIZES: &[usize] = &[64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20];

/// World sizes of the predictions.
const PREDICT_NP: &[usize] = &[2, 3, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// Tag of every probe message.
const PROBE_TAG: Tag = 0x6d6f_64656c;

/// What the probe ranks report: (bytes, median seconds) per size.
#[derive(Serialize, Deserialize)]
struct Probe {
    transport: String,
    ping_pong: Vec<(usize, f64)>,
    exchange: Vec<(usize, f64)>,
}

/// Rounds over all sizes: noise on this shared host comes in bursts, so each size is timed in
/// several rounds and the median taken over all of them.
const PROBE_ROUNDS: usize = 3;

/// Iterations for `bytes` per round: the same on both ranks without asking, about 0.1 s at
/// loopback speeds, at least 10.
fn probe_iters(bytes: usize) -> usize {
    (100_000_000 / (bytes + 20_000)).clamp(10, 3000)
}

/// `--worker --probe`: rank 0 and 1 time a ping-pong and an exchange over the raw transport.
pub fn probe_worker(args: &Args) -> Result<(), String> {
    let config = Config::from_env().map_err(|e| e.to_string())?;
    let (_world, mut links) = World::join(&config).map_err(|e| e.to_string())?;
    let t: &mut dyn Transport = links.host.as_mut();
    let (r, n) = (t.rank(), t.size());
    if n != 2 {
        return Err(format!("the probe runs on 2 ranks, not {n}"));
    }
    let peer = 1 - r;
    let e = |e: ferrovod::transport::Error| format!("probe on rank {r}: {e}");
    let mut out = Probe { transport: t.name().to_string(), ping_pong: Vec::new(), exchange: Vec::new() };
    let mut ping_pong = vec![Vec::new(); PROBE_SIZES.len()];
    let mut exchange = vec![Vec::new(); PROBE_SIZES.len()];
    for round in 0..PROBE_ROUNDS {
        for (k, &bytes) in PROBE_SIZES.iter().enumerate() {
            let send = vec![1u8; bytes];
            let mut recv = vec![0u8; bytes];
            let warm = if round == 0 { 5 } else { 2 };
            for i in 0..warm + probe_iters(bytes) {
                let start = Instant::now();
                let mut ping = [Step::Send { peer, buf: &send }];
                let mut pong = [Step::Recv { peer, buf: &mut recv }];
                if r == 0 {
                    t.exchange(PROBE_TAG, &mut ping).map_err(e)?;
                    t.exchange(PROBE_TAG, &mut pong).map_err(e)?;
                } else {
                    t.exchange(PROBE_TAG, &mut pong).map_err(e)?;
                    t.exchange(PROBE_TAG, &mut ping).map_err(e)?;
                }
                if i >= warm {
                    ping_pong[k].push(start.elapsed().as_secs_f64() / 2.0);
                }
            }
            for i in 0..warm + probe_iters(bytes) {
                let start = Instant::now();
                t.exchange(PROBE_TAG, &mut [Step::Send { peer, buf: &send }, Step::Recv { peer, buf: &mut recv }])
                    .map_err(e)?;
                if i >= warm {
                    exchange[k].push(start.elapsed().as_secs_f64());
                }
            }
        }
    }
    for (k, &bytes) in PROBE_SIZES.iter().enumerate() {
        out.ping_pong.push((bytes, median(&mut ping_pong[k])));
        out.exchange.push((bytes, median(&mut exchange[k])));
    }
    // Both ranks are done with every message before either closes.
    let mut done = [0u8; 1];
    t.exchange(PROBE_TAG, &mut [Step::Send { peer, buf: &[1] }, Step::Recv { peer, buf: &mut done }]).map_err(e)?;
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

fn probe(transport: TransportArg) -> Result<Probe, String> {
    let out = TempJson::new(&format!("probe-{}", transport_name(transport)));
    let args: Vec<OsString> = vec!["--probe".into(), "--json".into(), out.0.clone().into_os_string()];
    launch(&Launch { np: 2, transport, args: &args, env: &[], quiet: true })?;
    serde_json::from_str(&out.read()?).map_err(|e| format!("probe output: {e}"))
}

/// (bytes, median seconds) of ferrovod's f32 sum kernel on two buffers of each size.
fn reduction_times() -> Vec<(usize, f64)> {
    GAMMA_SIZES
        .iter()
        .map(|&bytes| {
            let mut acc = vec![0u8; bytes];
            let src = vec![0u8; bytes];
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

/// The size where the fits split: this machine's L2 cache (sysfs), 1 MiB if unknown. Above it
/// a probe's per-byte cost rises 2-3x here (its buffers no longer stay in cache).
fn cache_boundary() -> usize {
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
    (0..8).filter_map(read).find(|&(level, _)| level == 2).map_or(1 << 20, |(_, b)| b)
}

/// Fits the points up to `boundary` (the small regime) and from it on (the large one).
fn fit_regimes(points: &[(usize, f64)], boundary: usize, what: &str) -> Result<(Regimes, Fit, Fit), String> {
    let small: Vec<_> = points.iter().copied().filter(|&(b, _)| b <= boundary).collect();
    let large: Vec<_> = points.iter().copied().filter(|&(b, _)| b >= boundary).collect();
    let (fs, fl) = (fit(&small, what)?, fit(&large, what)?);
    let regimes = Regimes {
        small: Link { alpha: fs.alpha, beta: fs.beta },
        large: Link { alpha: fl.alpha, beta: fl.beta },
        boundary: boundary as f64,
    };
    Ok((regimes, fs, fl))
}

/// The residual of point `i` of `points` under the regime that prices it.
fn residual(points: &[(usize, f64)], i: usize, r: &Regimes) -> f64 {
    let (bytes, t) = points[i];
    (r.time(1.0, bytes as f64) - t) / t
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
    format!("≤ {}: {}; above: {}", size(r.boundary as usize), link_text(&r.small), link_text(&r.large))
}

/// Prints the fits of one transport's probe with their residuals; returns its parameters.
fn fitted_host(p: &Probe, gamma: Regimes, cores: f64, boundary: usize) -> Result<Host, String> {
    let (one_way, ..) = fit_regimes(&p.ping_pong, boundary, "ping-pong")?;
    let (exchange, ..) = fit_regimes(&p.exchange, boundary, "exchange")?;
    let host = Host { exchange, one_way, gamma, cores };
    println!();
    println!("## {}: 2 ranks, median per size", p.transport);
    println!("- one way (half a ping-pong round trip): {}", regimes_text(&host.one_way));
    println!("- exchange (both ranks send and receive m at once): {}", regimes_text(&host.exchange));
    println!();
    println!("| message | one way measured | one way fit | residual | exchange measured | exchange fit | residual |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (i, (&(bytes, t1), &(_, t2))) in p.ping_pong.iter().zip(&p.exchange).enumerate() {
        println!(
            "| {} | {} | {} | {:+.1}% | {} | {} | {:+.1}% |",
            size(bytes),
            time(t1),
            time(host.one_way.time(1.0, bytes as f64)),
            residual(&p.ping_pong, i, &host.one_way) * 100.0,
            time(t2),
            time(host.exchange.time(1.0, bytes as f64)),
            residual(&p.exchange, i, &host.exchange) * 100.0
        );
    }
    Ok(host)
}

fn print_predictions(title: &str, cluster: &Cluster, sizes: &[usize], cut: &Cutting) {
    println!();
    println!("## Predictions: {title}");
    println!();
    println!("| size | N | hosts × ranks | ring | halving-doubling | hierarchical (prediction only) | fastest |");
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
    launch(&Launch { np, transport, args: &child, env: &env, quiet: true })?;
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
    println!("# ferrovod-bench --model: the alpha-beta (Hockney) model, fitted on this host ({cores} cores)");
    println!();
    println!(
        "ferrovod's cutting: FERROVOD_SEGMENT = {} B, FERROVOD_RING_CHUNK = {} B; f32 sum.",
        cut.segment, cut.chunk
    );
    println!("Parameters: least squares of t = α + m·β on relative error; residual = (fit − measured) / measured.");

    let boundary = cache_boundary();
    println!(
        "Two regimes per fit, split at {} (this machine's L2 cache): messages up to it and above it.",
        size(boundary)
    );
    let gamma_points = reduction_times();
    let (gamma, ..) = fit_regimes(&gamma_points, boundary, "reduction")?;
    // The reduction's intercept is call overhead (near zero, even negative): γ is the slope.
    let gamma =
        Regimes { small: Link { alpha: 0.0, ..gamma.small }, large: Link { alpha: 0.0, ..gamma.large }, ..gamma };
    let tcp = fitted_host(&probe(TransportArg::Tcp)?, gamma, cores as f64, boundary)?;
    let shm = fitted_host(&probe(TransportArg::Shm)?, gamma, cores as f64, boundary)?;
    println!();
    println!(
        "## γ: f32 sum of two buffers in this process: γ = {:.4} ns/B up to {}, {:.4} ns/B above",
        gamma.small.beta * 1e9,
        size(boundary),
        gamma.large.beta * 1e9,
    );
    println!();
    println!("| buffer | measured | fit (slope only) | residual |");
    println!("|---:|---:|---:|---:|");
    for (i, &(bytes, t)) in gamma_points.iter().enumerate() {
        let fitted = gamma.time(1.0, bytes as f64);
        println!(
            "| {} | {} | {} | {:+.1}% |",
            size(bytes),
            time(t),
            time(fitted),
            residual(&gamma_points, i, &gamma) * 100.0
        );
    }

    println!();
    println!(
        "Cluster predictions: {} ranks per host, one core each; within a host the shm fit, between hosts the \
         network named; ranks ordered host by host. Ring: every step waits for the link between hosts (one \
         flow per host). Halving-doubling: a step with a partner ≥ {} ranks away crosses the network with \
         all of a host's ranks at once. Hierarchical (ferrovod has none: a prediction only): ring \
         reduce-scatter within the host, then one ring allreduce per local rank across hosts on its 1/L share \
         (the L rings share the host's link), then ring allgather within the host. Every message pays α.",
        args.ranks_per_host, args.ranks_per_host
    );
    let base = Cluster { intra: Host { cores: 1.0, ..shm }, network: tcp.exchange, per_host: args.ranks_per_host };
    let sizes = args.sizes();
    print_predictions(
        &format!("network = the tcp loopback exchange fit ({})", regimes_text(&tcp.exchange)),
        &base,
        sizes,
        &cut,
    );
    if args.alpha_us.is_some() || args.gbit.is_some() {
        let alpha_us = args.alpha_us.unwrap_or(tcp.exchange.small.alpha * 1e6);
        let gbit = args.gbit.unwrap_or(8e-9 / tcp.exchange.small.beta);
        if !(alpha_us >= 0.0 && gbit > 0.0) {
            return Err(format!("--alpha-us {alpha_us} and --gbit {gbit}: need α ≥ 0 and a positive bandwidth"));
        }
        let network = Link::from_us_gbit(alpha_us, gbit);
        let given = Cluster { network: Regimes::one(network), ..base };
        print_predictions(
            &format!("network as given: {alpha_us} µs, {gbit} Gbit/s ({})", link_text(&network)),
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
        "## Measured on this host against the one-host prediction ({cores} cores: N > {cores} oversubscribes, \
         and the model scales a phase's β and γ terms by active ranks / cores)"
    );
    println!();
    println!(
        "Measured: `ferrovod-bench --op allreduce` (median over iterations of the slowest rank, ≥ {} s and ≥ {} \
         iterations per size) with FERROVOD_ALLREDUCE_ALGORITHM set.",
        args.min_time, args.min_iters
    );
    println!();
    println!("| algorithm | transport | N | size | predicted | measured (median) | measured/predicted | within 25%? |");
    println!("|---|---|---:|---:|---:|---:|---:|---|");
    let (mut hits, mut total) = (0, 0);
    for (transport, host) in [(TransportArg::Tcp, &tcp), (TransportArg::Shm, &shm)] {
        for algorithm in ["ring", "halving-doubling"] {
            for &np in &args.model_np {
                let rows = measure(args, transport, algorithm, np)?;
                for row in rows {
                    let phases = if algorithm == "ring" {
                        model::ring(np, row.bytes, &cut)
                    } else {
                        model::halving_doubling(np, row.bytes, &cut)
                    };
                    let predicted = model::time_on_host(&phases, host);
                    let ratio = row.median_s / predicted;
                    let ok = (0.75..=1.25).contains(&ratio);
                    hits += usize::from(ok);
                    total += 1;
                    let over = if np > cores { " (oversubscribed)" } else { "" };
                    println!(
                        "| {algorithm} | {} | {np}{over} | {} | {} | {} | {ratio:.2} | {} |",
                        row.transport,
                        size(row.bytes),
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
