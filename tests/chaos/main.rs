//! ferrovod-chaos: random collectives on N ranks, one fault per trial, and a count of how every
//! trial ended (issue 18's chaos harness).
//!
//! `ferrovod-chaos [--trials 20] [--seed S] [--np 4] [--timeout SECS] [--json PATH] [--strict] [--hosts]`
//! runs the trials one after another and prints a table by fault and layout (`--hosts`: on two
//! faked hosts, allreduce hierarchical where the transport allows); it exits 1 unless
//! every trial was safe (with `--strict`, clean). Trial k uses seed S + k; `--seed S+k --trials 1` runs it again alone.
//! `ferrovod-chaos rank SEED` is one rank (started by the trials, with the rank environment).
//! See `trial.rs` for what a trial does and what makes it clean.

mod rank;
mod trial;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use trial::{Setup, Verdict};

struct Args {
    trials: usize,
    seed: u64,
    np: usize,
    timeout: Duration,
    json: Option<std::path::PathBuf>,
    strict: bool,
    hosts: bool,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut a = Args {
        trials: 20,
        seed: now.as_secs(),
        np: 4,
        timeout: Duration::from_secs(5),
        json: None,
        strict: false,
        hosts: false,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: &String| v.parse::<u64>().map_err(|e| format!("{flag} {v:?}: {e}"));
        match flag.as_str() {
            "--trials" => a.trials = number(value()?)? as usize,
            "--seed" => a.seed = number(value()?)?,
            "--np" => a.np = number(value()?)? as usize,
            "--timeout" => a.timeout = Duration::from_secs(number(value()?)?),
            "--json" => a.json = Some(value()?.into()),
            "--strict" => a.strict = true,
            "--hosts" => a.hosts = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.np < 4 || !a.np.is_multiple_of(2) {
        return Err(format!("--np {}: at least 4 and even (the tasks layout has two launchers)", a.np));
    }
    if a.timeout.is_zero() {
        return Err("--timeout must be at least 1 s".into());
    }
    Ok(a)
}

fn rank_main(seed: &str) -> ExitCode {
    let Ok(seed) = seed.parse::<u64>() else {
        eprintln!("chaos: bad seed {seed:?}");
        return ExitCode::from(2);
    };
    let engine = match ferrovod::Engine::from_env() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("chaos: failed: joining: {e}");
            return ExitCode::from(rank::FAILED as u8);
        }
    };
    let timeout = ferrovod::config::Config::from_env().map(|c| c.tuning.timeout).unwrap_or(Duration::from_secs(30));
    let (line, code) = match rank::run(&engine, seed, timeout) {
        rank::End::Failed(e) => (format!("chaos: failed: {e}"), rank::FAILED),
        rank::End::Wrong(e) => (format!("chaos: WRONG RESULT: {e}"), rank::WRONG),
        rank::End::Hang(e) => (format!("chaos: HANG: {e}"), rank::HANG),
    };
    eprintln!("{line}");
    // Not through the engine's drop: its shutdown is a round with ranks that may be gone.
    std::process::exit(code)
}

#[derive(Default)]
struct Row {
    trials: usize,
    safe: usize,
    clean: usize,
    survivors: usize,
    named: usize,
    wrong: usize,
    hangs: usize,
    leftovers: usize,
    max_detection: Duration,
}

impl Row {
    fn add(&mut self, v: &Verdict) {
        self.trials += 1;
        self.safe += usize::from(v.safe());
        self.clean += usize::from(v.clean());
        self.survivors += v.survivors;
        self.named += v.named;
        self.wrong += v.wrong_results;
        self.hangs += v.hangs;
        self.leftovers += v.leftovers;
        self.max_detection = self.max_detection.max(v.detection.unwrap_or_default());
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if let [cmd, seed] = argv.as_slice()
        && cmd == "rank"
    {
        return rank_main(seed);
    }
    let args = match parse(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ferrovod-chaos: {e}");
            return ExitCode::from(2);
        }
    };
    let (bin, launcher) = trial::binaries();
    if !launcher.exists() {
        eprintln!("ferrovod-chaos: {} is missing (cargo build --release --workspace)", launcher.display());
        return ExitCode::from(2);
    }
    let dir = std::env::temp_dir().join(format!("ferrovod-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    println!(
        "ferrovod-chaos: {} trials from seed {}, np {}, FERROVOD_TIMEOUT {:?}",
        args.trials, args.seed, args.np, args.timeout
    );
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let mut total = Row::default();
    let mut records = Vec::new();
    for k in 0..args.trials {
        let setup = Setup { hosts: args.hosts, ..Setup::draw(args.seed + k as u64, args.np) };
        let v = trial::run(&setup, args.np, args.timeout, &bin, &launcher, &dir);
        let detection = v.detection.map_or("-".to_string(), |d| format!("{:.2} s", d.as_secs_f64()));
        let verdict = match (v.safe(), v.clean()) {
            (_, true) => "clean".to_string(),
            (true, false) => format!("safe, NOT CLEAN: {}", v.misses.join("; ")),
            (false, _) => {
                format!("NOT SAFE: {}", v.problems.iter().chain(&v.misses).cloned().collect::<Vec<_>>().join("; "))
            }
        };
        println!("trial {k:>3}: {:<60} detection {detection:>7}  {verdict}", setup.describe());
        let key = format!("{:?} / {:?}", setup.fault, setup.layout);
        rows.entry(key).or_default().add(&v);
        total.add(&v);
        records.push(serde_json::json!({
            "seed": setup.seed, "layout": format!("{:?}", setup.layout), "fault": format!("{:?}", setup.fault),
            "transport": setup.transport, "victim": setup.victim, "safe": v.safe(), "clean": v.clean(),
            "detection_s": v.detection.map(|d| d.as_secs_f64()), "problems": v.problems, "misses": v.misses,
        }));
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!();
    println!(
        "| fault / layout | trials | safe | clean | survivors named the culprit in time | wrong results | hangs | leftovers | max detection |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let line = |name: &str, r: &Row| {
        println!(
            "| {name} | {} | {} | {} | {}/{} | {} | {} | {} | {:.2} s |",
            r.trials,
            r.safe,
            r.clean,
            r.named,
            r.survivors,
            r.wrong,
            r.hangs,
            r.leftovers,
            r.max_detection.as_secs_f64()
        )
    };
    for (name, r) in &rows {
        line(name, r);
    }
    line("**all**", &total);
    if let Some(path) = &args.json
        && let Err(e) = std::fs::write(path, serde_json::to_vec_pretty(&records).unwrap_or_default())
    {
        eprintln!("ferrovod-chaos: writing {}: {e}", path.display());
    }
    let passed = if args.strict { total.clean } else { total.safe };
    if passed == total.trials { ExitCode::SUCCESS } else { ExitCode::from(1) }
}
