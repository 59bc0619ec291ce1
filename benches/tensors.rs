//! `ferrovod-bench --tensors resnet50|small`: one training step's gradients through the engine.
//!
//! Every rank submits the gradient set (ResNet-50's parameters, or 1024 tensors of 1 KiB, f32,
//! in backward order: last layer first) asynchronously, then waits for all: one step. Four variants run interleaved in
//! the same processes, each on its own communicator, so that machine noise hits all alike:
//!
//! - `allreduce`: one plain allreduce of the same total bytes (the floor fusion aims for);
//! - `engine`: fusion at `FERROVOD_FUSION_THRESHOLD` (default 64 MiB), no timeline;
//! - `engine-nofusion`: `FERROVOD_FUSION_THRESHOLD=0`;
//! - `engine-timeline`: as `engine`, with `FERROVOD_TIMELINE` on.
//!
//! A step's time is the maximum over ranks; the table shows the median per variant and its
//! ratio to the plain allreduce.

use std::time::Instant;

use ferrovod::config::{Config, EngineSettings};
use ferrovod::{Collective, Communicator, DType, Engine, ReduceOp, Submission};

/// One variant's result.
pub struct Measured {
    pub variant: &'static str,
    /// The transport that carried it.
    pub transport: &'static str,
    pub tensors: usize,
    pub bytes: usize,
    pub iters: usize,
    pub median_s: f64,
}

/// The engine variants: name, fusion threshold override, timeline.
const VARIANTS: [(&str, Option<usize>, bool); 3] =
    [("engine", None, false), ("engine-nofusion", Some(0), false), ("engine-timeline", None, true)];

fn comm(threshold: Option<usize>) -> Result<Communicator, String> {
    let mut config = Config::from_env().map_err(|e| e.to_string())?;
    if let Some(t) = threshold {
        config.tuning.fusion_threshold = t;
    }
    Communicator::from_config(config).map_err(|e| e.to_string())
}

/// One step: submit every gradient (moving its buffer in), wait for all, take the buffers back.
fn step(engine: &Engine, names: &[String], shapes: &[Vec<usize>], bufs: &mut [Vec<u8>]) -> Result<(), String> {
    let mut handles = Vec::with_capacity(names.len());
    for i in (0..names.len()).rev() {
        let data = std::mem::take(&mut bufs[i]);
        let sub = Submission::new(&names[i], Collective::Allreduce(ReduceOp::Sum), DType::F32, &shapes[i], data);
        handles.push((i, engine.submit(sub).map_err(|e| e.to_string())?));
    }
    for (i, h) in handles {
        bufs[i] = h.wait().map_err(|e| e.to_string())?.data.into_host().ok_or("a host tensor came back on a device")?;
    }
    Ok(())
}

fn sync(engine: &Engine) -> Result<(), String> {
    engine.allreduce("bench.sync", &[0u8], ReduceOp::Sum).map(drop).map_err(|e| e.to_string())
}

/// Runs the comparison on this rank; returns rows (meaningful on rank 0).
pub fn run(
    params: Vec<(String, Vec<usize>)>,
    min_time: f64,
    min_iters: usize,
    timeline_dir: &std::path::Path,
) -> Result<Vec<Measured>, String> {
    let names: Vec<String> = params.iter().map(|(n, _)| n.clone()).collect();
    let shapes: Vec<Vec<usize>> = params.iter().map(|(_, s)| s.clone()).collect();
    let elems: Vec<usize> = shapes.iter().map(|s| s.iter().product()).collect();
    let total: usize = elems.iter().sum::<usize>() * 4;

    let mut plain = comm(None)?;
    let (rank, n, transport) = (plain.rank(), plain.size(), plain.transport());
    let mut engines = Vec::new();
    for (variant, threshold, timeline) in VARIANTS {
        let settings = EngineSettings {
            timeline: timeline.then(|| timeline_dir.join("ferrovod-bench-timeline.json")),
            ..EngineSettings::default()
        };
        engines.push((variant, Engine::start(comm(threshold)?, &settings).map_err(|e| e.to_string())?));
    }

    // Check once, with data: every gradient must come back summed over the ranks.
    let mut bufs: Vec<Vec<u8>> = elems.iter().map(|&e| bytemuck_f32(&vec![(rank + 1) as f32; e])).collect();
    let want = (n * (n + 1) / 2) as f32;
    for (variant, engine) in &engines {
        let mut b = bufs.clone();
        step(engine, &names, &shapes, &mut b)?;
        if b.iter().any(|t| t.chunks_exact(4).any(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]]) != want)) {
            return Err(format!("{variant}: rank {rank}: a gradient is not the sum over ranks"));
        }
    }
    // Zeros from here on, so that sums stay finite.
    bufs.iter_mut().for_each(|b| b.fill(0));
    let mut flat = vec![0f32; total / 4];

    // Size the run from one step of the plain allreduce.
    let t = Instant::now();
    plain.allreduce(&mut flat, ReduceOp::Sum).map_err(|e| e.to_string())?;
    let mut est = [t.elapsed().as_secs_f64()];
    plain.allreduce(&mut est, ReduceOp::Max).map_err(|e| e.to_string())?;
    let iters = ((min_time / est[0].max(1e-6)).ceil() as usize).max(min_iters);

    // times[v][i]: variant v's i-th step on this rank; v = 0 is the plain allreduce.
    let mut times = vec![Vec::with_capacity(iters); 1 + engines.len()];
    for _ in 0..iters {
        plain.barrier().map_err(|e| e.to_string())?;
        let t = Instant::now();
        plain.allreduce(&mut flat, ReduceOp::Sum).map_err(|e| e.to_string())?;
        times[0].push(t.elapsed().as_secs_f64());
        for (v, (_, engine)) in engines.iter().enumerate() {
            sync(engine)?;
            let t = Instant::now();
            step(engine, &names, &shapes, &mut bufs)?;
            times[v + 1].push(t.elapsed().as_secs_f64());
        }
    }
    let mut rows = Vec::new();
    for (v, t) in times.iter_mut().enumerate() {
        plain.allreduce(t, ReduceOp::Max).map_err(|e| e.to_string())?;
        let variant = if v == 0 { "allreduce" } else { engines[v - 1].0 };
        let tensors = if v == 0 { 1 } else { names.len() };
        rows.push(Measured { variant, transport, tensors, bytes: total, iters, median_s: crate::median(t) });
    }
    for (_, engine) in engines {
        engine.shutdown().map_err(|e| e.to_string())?;
    }
    Ok(rows)
}

fn bytemuck_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
