//! Data-parallel training of a small MLP with tch, under `ferrovod-run -np N -- tch_train`.
//!
//! Every rank makes the same synthetic regression data and trains on its own shard of each
//! global batch; `DistributedOptimizer` averages the gradients. At the end every rank checks that
//! its parameters equal rank 0's.
//!
//! `--reference N` trains one process on the concatenated shards of N ranks, without ferrovod:
//! the distributed run must end within rounding of it (the tests check 1e-5).
//!
//! Options: `--epochs E` `--steps S` (per epoch) `--batch B` (rows per rank and pass) `--hidden H`
//! `--layers L` `--lr LR` `--backward-passes K` `--fp16` `--save DIR` (rank 0's parameters as
//! DIR/params.safetensors) `--time` (median step time) `--hidden-for-rank R:H` (rank R builds
//! its hidden layers H wide: a model that differs between ranks, which must fail on every rank).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ferrovod::{Engine, ReduceOp};
use ferrovod_tch::{Compression, DistributedOptimizer, broadcast_parameters};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

const INPUTS: i64 = 16;
const DATA_SEED: i64 = 7;
const MODEL_SEED: i64 = 100;

struct Options {
    epochs: usize,
    steps: usize,
    batch: i64,
    hidden: i64,
    layers: usize,
    lr: f64,
    passes: usize,
    fp16: bool,
    save: Option<PathBuf>,
    time: bool,
    reference: Option<usize>,
    hidden_for_rank: Option<(usize, i64)>,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("tch_train: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let opts = parse(std::env::args().skip(1))?;
    // One intra-op thread: ranks share the host's cores, and results do not depend on a
    // thread count.
    tch::set_num_threads(1);
    match opts.reference {
        Some(ranks) => reference(&opts, ranks),
        None => distributed(&opts),
    }
}

/// The job's training: this rank's shard of every global batch.
fn distributed(opts: &Options) -> Result<(), Box<dyn std::error::Error>> {
    let engine = Arc::new(Engine::from_env()?);
    let (rank, size) = (engine.rank(), engine.size());
    // Each rank starts from its own random parameters; the broadcast makes them rank 0's.
    tch::manual_seed(MODEL_SEED + rank as i64);
    let hidden = match opts.hidden_for_rank {
        Some((r, h)) if r == rank => h,
        _ => opts.hidden,
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let model = mlp(&vs.root(), hidden, opts.layers);
    broadcast_parameters(&engine, &vs, 0)?;

    let (x, y) = data(opts, size);
    let sgd = nn::Sgd { momentum: 0.9, ..Default::default() }.build(&vs, opts.lr)?;
    let compression = if opts.fp16 { Compression::Fp16 } else { Compression::None };
    let mut opt = DistributedOptimizer::new(sgd, &vs, engine.clone())?
        .compression(compression)
        .backward_passes_per_step(opts.passes)?;

    let (mut step_times, mut compute_times) = (Vec::new(), Vec::new());
    for epoch in 0..opts.epochs {
        let mut loss_sum = Tensor::zeros([], (Kind::Float, Device::Cpu));
        for step in 0..opts.steps {
            let started = Instant::now();
            opt.zero_grad()?;
            for pass in 0..opts.passes {
                let first = shard_start(opts, size, step, pass) + rank as i64 * opts.batch;
                let loss = mse(&model, &x.narrow(0, first, opts.batch), &y.narrow(0, first, opts.batch));
                opt.backward(&loss)?;
                loss_sum += loss.detach();
            }
            let computed = started.elapsed().as_secs_f64();
            opt.step()?;
            step_times.push(started.elapsed().as_secs_f64());
            compute_times.push(computed);
        }
        let mean = loss_sum / (opts.steps * opts.passes) as f64;
        let mean =
            ferrovod_tch::allreduce_async(&engine, &format!("loss.{epoch}"), &mean, ReduceOp::Average)?.wait()?;
        if rank == 0 {
            println!("epoch {epoch} loss {:.6}", mean.double_value(&[]));
        }
    }

    let worst = differs_from_root(&engine, &vs)?;
    if worst.is_nan() {
        return Err(format!("rank {rank}: the parameters are not finite: training diverged (lower --lr)").into());
    }
    if worst > 0.0 {
        return Err(format!("rank {rank}: parameters differ from rank 0's by up to {worst:e}").into());
    }
    println!("rank {rank}: parameters equal rank 0's on every one of {size} ranks");
    if opts.time {
        // Compute: zero_grad, forward, backward (each gradient goes to the engine during it); the
        // rest of the step waits for the reduction and applies it.
        let (step, compute) = (median_ms(&mut step_times), median_ms(&mut compute_times));
        println!("rank {rank}: median step {step:.3} ms over {} steps (compute {compute:.3} ms)", step_times.len());
    }
    if rank == 0 {
        save(opts, &vs)?;
    }
    engine.shutdown()?;
    Ok(())
}

/// One process, the concatenated shards of `ranks` ranks per pass: what the job must match.
fn reference(opts: &Options, ranks: usize) -> Result<(), Box<dyn std::error::Error>> {
    tch::manual_seed(MODEL_SEED);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = mlp(&vs.root(), opts.hidden, opts.layers);
    let (x, y) = data(opts, ranks);
    let mut opt = nn::Sgd { momentum: 0.9, ..Default::default() }.build(&vs, opts.lr)?;
    let rows = opts.batch * ranks as i64;
    let mut step_times = Vec::new();
    for epoch in 0..opts.epochs {
        let mut loss_sum = 0.0;
        for step in 0..opts.steps {
            let started = Instant::now();
            opt.zero_grad();
            for pass in 0..opts.passes {
                let first = shard_start(opts, ranks, step, pass);
                let loss = mse(&model, &x.narrow(0, first, rows), &y.narrow(0, first, rows));
                loss.f_backward()?;
                loss_sum += loss.double_value(&[]);
            }
            opt.step();
            step_times.push(started.elapsed().as_secs_f64());
        }
        println!("epoch {epoch} loss {:.6}", loss_sum / (opts.steps * opts.passes) as f64);
    }
    if opts.time {
        println!("reference: median step {:.3} ms over {} steps", median_ms(&mut step_times), step_times.len());
    }
    save(opts, &vs)
}

/// The row where a global batch (all ranks' shards of one pass) begins.
fn shard_start(opts: &Options, ranks: usize, step: usize, pass: usize) -> i64 {
    ((step * opts.passes + pass) * ranks) as i64 * opts.batch
}

/// Inputs and targets for every pass of an epoch, the same on every rank: a random smooth
/// function of the inputs plus noise.
fn data(opts: &Options, ranks: usize) -> (Tensor, Tensor) {
    tch::manual_seed(DATA_SEED);
    let rows = (opts.steps * opts.passes * ranks) as i64 * opts.batch;
    let x = Tensor::randn([rows, INPUTS], (Kind::Float, Device::Cpu));
    let w = Tensor::randn([INPUTS, 1], (Kind::Float, Device::Cpu)) / (INPUTS as f64).sqrt();
    let y = x.matmul(&w).sin() + 0.05 * Tensor::randn([rows, 1], (Kind::Float, Device::Cpu));
    (x, y)
}

fn mlp(path: &nn::Path, hidden: i64, layers: usize) -> nn::Sequential {
    let mut seq = nn::seq();
    let mut width = INPUTS;
    for i in 0..layers {
        seq = seq.add(nn::linear(path / format!("hidden{i}"), width, hidden, Default::default())).add_fn(|t| t.tanh());
        width = hidden;
    }
    seq.add(nn::linear(path / "out", width, 1, Default::default()))
}

fn mse(model: &impl Module, x: &Tensor, y: &Tensor) -> Tensor {
    (model.forward(x) - y).square().mean(Kind::Float)
}

/// The largest difference between this rank's parameters and rank 0's; NaN if a parameter is
/// not finite (NaN and infinity compare unequal to everything, themselves included).
fn differs_from_root(engine: &Engine, vs: &nn::VarStore) -> ferrovod::Result<f64> {
    let mut worst = 0.0f64;
    for (name, var) in ferrovod_tch::variables(vs) {
        let root = ferrovod_tch::broadcast_async(engine, &format!("check.{name}"), &var.detach().copy(), 0)?.wait()?;
        let here = var.detach();
        if !bool::try_from(here.isfinite().all()).unwrap_or(false) {
            return Ok(f64::NAN);
        }
        worst = worst.max((root - here).abs().max().double_value(&[]));
    }
    Ok(worst)
}

fn save(opts: &Options, vs: &nn::VarStore) -> Result<(), Box<dyn std::error::Error>> {
    let Some(dir) = &opts.save else { return Ok(()) };
    std::fs::create_dir_all(dir)?;
    Tensor::write_safetensors(&ferrovod_tch::variables(vs), dir.join("params.safetensors"))?;
    Ok(())
}

fn median_ms(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times.get(times.len() / 2).map_or(f64::NAN, |t| t * 1e3)
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut o = Options {
        epochs: 5,
        steps: 20,
        batch: 32,
        hidden: 64,
        layers: 2,
        lr: 0.05,
        passes: 1,
        fp16: false,
        save: None,
        time: false,
        reference: None,
        hidden_for_rank: None,
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--epochs" => o.epochs = number(&flag, &value()?)?,
            "--steps" => o.steps = number(&flag, &value()?)?,
            "--batch" => o.batch = number(&flag, &value()?)?,
            "--hidden" => o.hidden = number(&flag, &value()?)?,
            "--layers" => o.layers = number(&flag, &value()?)?,
            "--lr" => o.lr = number(&flag, &value()?)?,
            "--backward-passes" => o.passes = number(&flag, &value()?)?,
            "--fp16" => o.fp16 = true,
            "--save" => o.save = Some(PathBuf::from(value()?)),
            "--time" => o.time = true,
            "--reference" => o.reference = Some(number(&flag, &value()?)?),
            "--hidden-for-rank" => {
                let v = value()?;
                let (r, h) = v.split_once(':').ok_or_else(|| format!("{flag} takes RANK:WIDTH, not {v:?}"))?;
                o.hidden_for_rank = Some((number(&flag, r)?, number(&flag, h)?));
            }
            other => return Err(format!("unknown option {other:?} (see the source's header for the options)")),
        }
    }
    if o.batch < 1 || o.hidden < 1 || o.steps < 1 || o.passes < 1 || o.reference == Some(0) {
        return Err("--batch, --hidden, --steps, --backward-passes and --reference must be at least 1".into());
    }
    Ok(o)
}

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("{flag}: {v:?} is not a valid number"))
}
