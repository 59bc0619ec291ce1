//! Shared pieces of ferrovod's integration tests: deterministic inputs, the serial reference
//! they are checked against, and a harness that runs ranks as real processes with a store
//! hosted by the test (as the launcher hosts it).
//!
//! Inputs are small integers chosen per (dtype, op) so that every reduction is exact in every
//! dtype; the reference folds the ranks' values in rank order in `i64` and applies the
//! dtype's own wrapping and rounding once, as the kernels are documented to.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrovod::bootstrap::{Secret, StoreServer};
use ferrovod::{Collective, DType, ReduceOp, bf16, f16};

/// A small deterministic generator (splitmix64): the same seed gives the same draws in every
/// process, so ranks agree on random choices without talking.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    /// The next 64 random bits.
    pub fn bits(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A draw from `0..n` (`n` > 0; the modulo bias is negligible for the small `n` used).
    pub fn below(&mut self, n: u64) -> u64 {
        self.bits() % n
    }
}

/// Bytes aligned for every dtype.
pub struct Aligned(Vec<u64>, usize);

impl Aligned {
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> Aligned {
        Aligned(vec![0; len.div_ceil(8)], len)
    }
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.0)[..self.1]
    }
    /// The bytes, mutably.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.0)[..self.1]
    }
}

/// Input value of element `i` on `rank`, before encoding in the dtype.
pub fn pattern(dtype: DType, op: ReduceOp, rank: usize, i: usize) -> i64 {
    // A hash, not a short period, so that misplaced blocks do not go unnoticed.
    let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (rank as u64 + 1).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    let h = (h ^ (h >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9) >> 40;
    let signed = !matches!(dtype, DType::U8);
    if dtype == DType::Bool {
        return (h % 2) as i64;
    }
    match op {
        ReduceOp::Product => [1, 2, if signed { -1 } else { 1 }][(h % 3) as usize],
        ReduceOp::Min | ReduceOp::Max => (h % 100) as i64 - if signed { 50 } else { 0 },
        ReduceOp::Sum | ReduceOp::Average => (h % 9) as i64 - if signed { 4 } else { 0 },
    }
}

/// Writes `v` as one element of `dtype` (integers wrap, as the kernels do).
pub fn encode(dtype: DType, v: i64, out: &mut [u8]) {
    match dtype {
        DType::U8 => out.copy_from_slice(&[v as u8]),
        DType::I8 => out.copy_from_slice(&(v as i8).to_ne_bytes()),
        DType::I16 => out.copy_from_slice(&(v as i16).to_ne_bytes()),
        DType::Bool => out.copy_from_slice(&[u8::from(v != 0)]),
        DType::I32 => out.copy_from_slice(&(v as i32).to_ne_bytes()),
        DType::I64 => out.copy_from_slice(&v.to_ne_bytes()),
        DType::F16 => out.copy_from_slice(&f16::from_f32(v as f32).to_ne_bytes()),
        DType::BF16 => out.copy_from_slice(&bf16::from_f32(v as f32).to_ne_bytes()),
        DType::F32 => out.copy_from_slice(&(v as f32).to_ne_bytes()),
        DType::F64 => out.copy_from_slice(&(v as f64).to_ne_bytes()),
    }
}

/// Rank `rank`'s input of `count` elements.
pub fn input(dtype: DType, op: ReduceOp, rank: usize, count: usize) -> Aligned {
    let e = dtype.size();
    let mut a = Aligned::zeroed(count * e);
    for (i, out) in a.bytes_mut().chunks_exact_mut(e).enumerate() {
        encode(dtype, pattern(dtype, op, rank, i), out);
    }
    a
}

/// What an allreduce of every rank's [`input`] must produce. The last answer is kept, since
/// ranks that are threads of one test ask for the same one in turn.
pub fn expected_allreduce(dtype: DType, op: ReduceOp, n: usize, count: usize) -> Arc<Aligned> {
    type Key = (DType, ReduceOp, usize, usize);
    static LAST: Mutex<Option<(Key, Arc<Aligned>)>> = Mutex::new(None);
    let key = (dtype, op, n, count);
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    match last.as_ref() {
        Some((k, v)) if *k == key => v.clone(),
        _ => {
            let v = Arc::new(compute_expected(dtype, op, n, count));
            *last = Some((key, v.clone()));
            v
        }
    }
}

fn compute_expected(dtype: DType, op: ReduceOp, n: usize, count: usize) -> Aligned {
    let e = dtype.size();
    let mut a = Aligned::zeroed(count * e);
    for (i, out) in a.bytes_mut().chunks_exact_mut(e).enumerate() {
        let mut vals = (0..n).map(|r| pattern(dtype, op, r, i));
        let v = match op {
            // Booleans reduce as logic: sum and max "or", min and product "and".
            _ if dtype == DType::Bool => match op {
                ReduceOp::Min | ReduceOp::Product => i64::from(vals.all(|v| v != 0)),
                _ => i64::from(vals.any(|v| v != 0)),
            },
            ReduceOp::Sum | ReduceOp::Average => vals.sum::<i64>(),
            ReduceOp::Product => vals.product(),
            ReduceOp::Min => vals.min().unwrap_or(0),
            ReduceOp::Max => vals.max().unwrap_or(0),
        };
        match (op, dtype) {
            (ReduceOp::Average, DType::F32) => out.copy_from_slice(&(v as f32 / n as f32).to_ne_bytes()),
            (ReduceOp::Average, DType::F64) => out.copy_from_slice(&(v as f64 / n as f64).to_ne_bytes()),
            (ReduceOp::Average, DType::F16) => out.copy_from_slice(&f16::from_f32(v as f32 / n as f32).to_ne_bytes()),
            (ReduceOp::Average, DType::BF16) => out.copy_from_slice(&bf16::from_f32(v as f32 / n as f32).to_ne_bytes()),
            (ReduceOp::Average, _) => encode(dtype, v / n as i64, out),
            _ => encode(dtype, v, out),
        }
    }
    a
}

/// Compares element by element; the error names the first differing element and both values.
pub fn check(what: &str, dtype: DType, got: &[u8], want: &[u8]) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{what}: {} bytes, expected {}", got.len(), want.len()));
    }
    if got == want {
        return Ok(());
    }
    let e = dtype.size();
    let i = got.chunks(e).zip(want.chunks(e)).position(|(a, b)| a != b).unwrap_or(0);
    Err(format!("{what}: element {i} is {:?}, expected {:?}", &got[i * e..(i + 1) * e], &want[i * e..(i + 1) * e]))
}

/// Counts used by the collective tests: 0, 1, 7, 4093 elements, 1 MiB and (optionally) 64 MiB
/// of data.
pub fn counts(dtype: DType, with_64mib: bool) -> Vec<usize> {
    let mut c = vec![0, 1, 7, 4093, (1 << 20) / dtype.size()];
    if with_64mib {
        c.push((64 << 20) / dtype.size());
    }
    c
}

/// A path to a binary of this workspace, next to the running test's target directory.
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/test-binary → target/<profile>/<name>
    let dir = exe.parent().and_then(|d| d.parent()).map(|d| d.to_path_buf()).unwrap_or_default();
    dir.join(name)
}

/// N ranks as OS processes, with the store in this (test) process, or served by rank 0.
pub struct World {
    /// The store every rank connects to, when this process serves it.
    pub store: Option<StoreServer>,
    /// The job secret (hex), as the ranks got it.
    pub secret: String,
    /// Rank processes, in rank order.
    pub children: Vec<Child>,
}

/// How one rank ended.
#[derive(Debug)]
pub struct Ended {
    /// Exit code (None: killed by a signal).
    pub code: Option<i32>,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

impl World {
    /// Starts `n` copies of `bin args` with the rank environment; `env` adds variables.
    pub fn spawn(n: usize, bin: &std::path::Path, args: &[&str], env: &[(&str, String)]) -> World {
        World::spawn_first(n, n, bin, args, env)
    }

    /// [`World::spawn`] of a world of `n` that starts only its first `started` ranks: the
    /// others are the caller's to start, so no process of ours claims their ranks first.
    pub fn spawn_first(
        n: usize,
        started: usize,
        bin: &std::path::Path,
        args: &[&str],
        env: &[(&str, String)],
    ) -> World {
        World::with_store((n, started), None, bin, args, env)
    }

    /// Starts ranks `0..started` of a world of `n` with a store of this process's (see
    /// [`World::start_on`]).
    fn with_store(
        (n, started): (usize, usize),
        per_host: Option<usize>,
        bin: &std::path::Path,
        args: &[&str],
        env: &[(&str, String)],
    ) -> World {
        let secret = Secret::generate_hex().expect("random secret");
        let store = StoreServer::bind("127.0.0.1:0", Secret::new(secret.clone().into_bytes())).expect("store binds");
        let addr = store.local_addr().to_string();
        World::start_on((n, started), per_host, bin, args, env, secret, &addr, Some(store))
    }

    /// [`World::spawn`] of `hosts` × `per_host` ranks on hosts faked on this machine: rank r
    /// publishes the host name `fake-host-{r / per_host}` (`FERROVOD_HOSTNAME`), so each
    /// group of ranks shares memory and the groups talk TCP, as on as many hosts.
    pub fn spawn_hosts(
        hosts: usize,
        per_host: usize,
        bin: &std::path::Path,
        args: &[&str],
        env: &[(&str, String)],
    ) -> World {
        let n = hosts * per_host;
        World::with_store((n, n), Some(per_host), bin, args, env)
    }

    /// [`World::spawn`] without a launcher's store: rank 0 serves it (`FERROVOD_HOST_STORE=1`)
    /// on a free loopback port.
    pub fn spawn_host_store(n: usize, bin: &std::path::Path, args: &[&str], env: &[(&str, String)]) -> World {
        let secret = Secret::generate_hex().expect("random secret");
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let mut env = env.to_vec();
        env.push(("FERROVOD_HOST_STORE", "1".into()));
        World::start_on((n, n), None, bin, args, &env, secret, &format!("127.0.0.1:{port}"), None)
    }

    /// Starts ranks `0..started` of a world of `n` (`(n, started)`), on faked hosts of
    /// `per_host` ranks each if given.
    #[allow(clippy::too_many_arguments)]
    fn start_on(
        (n, started): (usize, usize),
        per_host: Option<usize>,
        bin: &std::path::Path,
        args: &[&str],
        env: &[(&str, String)],
        secret: String,
        rendezvous: &str,
        store: Option<StoreServer>,
    ) -> World {
        let children = (0..started)
            .map(|rank| {
                let mut cmd = Command::new(bin);
                cmd.args(args)
                    .env("FERROVOD_RANK", rank.to_string())
                    .env("FERROVOD_SIZE", n.to_string())
                    .env("FERROVOD_RENDEZVOUS", rendezvous)
                    .env("FERROVOD_SECRET", &secret)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                for (k, v) in env {
                    cmd.env(k, v);
                }
                if let Some(per_host) = per_host {
                    cmd.env("FERROVOD_HOSTNAME", format!("fake-host-{}", rank / per_host));
                }
                cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
            })
            .collect();
        World { store, secret, children }
    }

    /// Waits until rank `rank` prints a line containing `text` on stdout (the rest of its
    /// output stays readable by [`World::wait`]); panics after `timeout`.
    pub fn wait_for_line(&mut self, rank: usize, text: &str, timeout: Duration) -> Vec<String> {
        let out = self.children[rank].stdout.take().expect("stdout piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let wanted = text.to_string();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let hit = line.contains(&wanted);
                seen.push(line);
                if hit {
                    let _ = tx.send(seen.clone());
                }
            }
        });
        rx.recv_timeout(timeout).unwrap_or_else(|_| panic!("rank {rank} did not print {:?} within {timeout:?}", text))
    }

    /// Waits for every rank to exit (killing all after `timeout`) and returns how each ended.
    pub fn wait(mut self, timeout: Duration) -> Vec<Ended> {
        let deadline = Instant::now() + timeout;
        let readers: Vec<_> = self
            .children
            .iter_mut()
            .map(|c| {
                let out = c.stdout.take();
                let err = c.stderr.take();
                std::thread::spawn(move || {
                    let read = |r: Option<Box<dyn std::io::Read + Send>>| {
                        let mut s = String::new();
                        if let Some(mut r) = r {
                            let _ = r.read_to_string(&mut s);
                        }
                        s
                    };
                    (read(out.map(|o| Box::new(o) as _)), read(err.map(|e| Box::new(e) as _)))
                })
            })
            .collect();
        let mut codes = vec![None; self.children.len()];
        let mut done = vec![false; self.children.len()];
        while done.iter().any(|d| !d) {
            for (i, c) in self.children.iter_mut().enumerate() {
                if !done[i]
                    && let Ok(Some(status)) = c.try_wait()
                {
                    codes[i] = status.code();
                    done[i] = true;
                }
            }
            if Instant::now() > deadline {
                for c in &mut self.children {
                    let _ = c.kill();
                }
                panic!(
                    "ranks still running after {timeout:?}: {:?}",
                    done.iter().enumerate().filter(|(_, d)| !**d).map(|(i, _)| i).collect::<Vec<_>>()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        readers
            .into_iter()
            .zip(codes)
            .map(|(r, code)| {
                let (stdout, stderr) = r.join().unwrap_or_default();
                Ended { code, stdout, stderr }
            })
            .collect()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Which collectives [`check_collectives`] runs.
#[derive(Clone, Copy, Debug)]
pub struct Plan<'a> {
    /// Dtypes to cover.
    pub dtypes: &'a [DType],
    /// Reductions to cover (allreduce and reducescatter).
    pub ops: &'a [ReduceOp],
    /// Element counts for allreduce.
    pub allreduce_counts: &'a [usize],
    /// Element counts for the other collectives.
    pub other_counts: &'a [usize],
}

/// Checks that the allreduce just run took the shared-memory stage exactly when it should: over
/// shared memory by default or when a stage algorithm is forced, never without shared memory.
fn check_algorithm(what: &str, comm: &ferrovod::Communicator) -> Result<(), String> {
    let forced = std::env::var("FERROVOD_ALLREDUCE_ALGORITHM").unwrap_or_default();
    let ran = comm.last_algorithm();
    let staged = ran.starts_with("stage-");
    let hierarchical = std::env::var("FERROVOD_HIERARCHICAL_ALLREDUCE").unwrap_or_default();
    let spans_hosts = comm.local_size() >= 2 && comm.cross_size() >= 2;
    let right = match (comm.transport(), forced.as_str()) {
        _ if spans_hosts && hierarchical == "on" => ran == "hierarchical",
        _ if hierarchical == "off" => ran != "hierarchical",
        ("shm", "" | "auto") => staged,
        ("shm", f) if f.starts_with("stage-") => ran == f,
        (_, f) if f.starts_with("stage-") => !staged,
        _ => true,
    };
    match right {
        true => Ok(()),
        false => {
            let knobs =
                format!("FERROVOD_ALLREDUCE_ALGORITHM={forced:?}, FERROVOD_HIERARCHICAL_ALLREDUCE={hierarchical:?}");
            Err(format!("{what}: ran {ran:?} over {} with {knobs}", comm.transport()))
        }
    }
}

/// [`check_collectives`] for every dtype and op at the first four of [`counts`] (0, 1, 7 and
/// 4093 elements).
pub fn check_small_counts(comm: &mut ferrovod::Communicator) -> Result<(), String> {
    for dtype in DType::ALL {
        let small = &counts(dtype, false)[..4];
        check_collectives(
            comm,
            Plan { dtypes: &[dtype], ops: &ReduceOp::ALL, allreduce_counts: small, other_counts: small },
        )?;
    }
    Ok(())
}

/// Runs every collective of `plan` on `comm` and checks each result element by element
/// against the serial reference. Every rank must call it with the same plan.
pub fn check_collectives(comm: &mut ferrovod::Communicator, plan: Plan<'_>) -> Result<(), String> {
    let (r, n) = (comm.rank(), comm.size());
    let fail = |what: String| move |e: ferrovod::Error| format!("{what}: {e}");
    for &dtype in plan.dtypes {
        let e = dtype.size();
        // Refused combinations (a bool average) are tested on their own.
        for &op in plan.ops.iter().filter(|&&op| Collective::Allreduce(op).refuses(dtype).is_none()) {
            for &count in plan.allreduce_counts {
                let what = format!("allreduce {dtype} {op} n={n} count={count}");
                let mut buf = input(dtype, op, r, count);
                comm.allreduce_bytes(buf.bytes_mut(), dtype, op).map_err(fail(what.clone()))?;
                check(&what, dtype, buf.bytes(), expected_allreduce(dtype, op, n, count).bytes())?;
                check_algorithm(&what, comm)?;
            }
            for &count in plan.other_counts {
                let what = format!("reducescatter {dtype} {op} n={n} count={count}");
                let mut buf = input(dtype, op, r, count);
                let blocks = ferrovod::algorithms::even_blocks(count, n, e);
                comm.reducescatter_bytes(buf.bytes_mut(), &blocks, dtype, op).map_err(fail(what.clone()))?;
                let want = expected_allreduce(dtype, op, n, count);
                check(&what, dtype, &buf.bytes()[blocks[r].clone()], &want.bytes()[blocks[r].clone()])?;
            }
        }
        for &count in plan.other_counts {
            let op = ReduceOp::Sum;
            for root in [0, n - 1, n / 2] {
                let what = format!("broadcast {dtype} n={n} count={count} root={root}");
                let want = input(dtype, op, root, count);
                let mut buf = if r == root { input(dtype, op, root, count) } else { Aligned::zeroed(count * e) };
                comm.broadcast_bytes(buf.bytes_mut(), dtype, root).map_err(fail(what.clone()))?;
                check(&what, dtype, buf.bytes(), want.bytes())?;
            }
            // Unequal inputs: rank i contributes count + 3i elements.
            let what = format!("allgather {dtype} n={n} count={count}+3·rank");
            let mine = input(dtype, op, r, count + 3 * r);
            let counts = comm.allgather_counts(count + 3 * r, dtype).map_err(fail(what.clone()))?;
            if counts != (0..n).map(|i| count + 3 * i).collect::<Vec<_>>() {
                return Err(format!("{what}: counts {counts:?}"));
            }
            let mut out = Aligned::zeroed(counts.iter().sum::<usize>() * e);
            comm.allgatherv_into(mine.bytes(), out.bytes_mut(), &counts, dtype).map_err(fail(what.clone()))?;
            let want: Vec<u8> = (0..n).flat_map(|i| input(dtype, op, i, count + 3 * i).bytes().to_vec()).collect();
            check(&what, dtype, out.bytes(), &want)?;
            // All-to-all: rank i sends (count + i + 2j) % 11 + j elements to rank j, drawn
            // from its input in order.
            let what = format!("alltoall {dtype} n={n} base={count}");
            let split = |i: usize, j: usize| (count + i + 2 * j) % 11 + j + count / 8;
            let send_counts: Vec<usize> = (0..n).map(|j| split(r, j)).collect();
            let total = send_counts.iter().sum::<usize>();
            let data = input(dtype, op, r, total);
            let recv_counts = comm.alltoall_counts(total, &send_counts, dtype).map_err(fail(what.clone()))?;
            let mut out = Aligned::zeroed(recv_counts.iter().sum::<usize>() * e);
            comm.alltoall_into(data.bytes(), &send_counts, out.bytes_mut(), &recv_counts, dtype)
                .map_err(fail(what.clone()))?;
            let mut want = Vec::new();
            for i in 0..n {
                let theirs = input(dtype, op, i, (0..n).map(|j| split(i, j)).sum());
                let start: usize = (0..r).map(|j| split(i, j)).sum();
                want.extend_from_slice(&theirs.bytes()[start * e..(start + split(i, r)) * e]);
            }
            check(&what, dtype, out.bytes(), &want)?;
            if comm.transport() == "shm" && comm.last_algorithm() != "stage" {
                return Err(format!("{what}: ran {:?} over shared memory, not the stage", comm.last_algorithm()));
            }
        }
    }
    comm.barrier().map_err(fail("barrier".into()))
}

/// Runs `body` on `n` ranks as threads of this process over the in-process transport, each
/// communicator handed to `setup` first; panics naming the first rank that failed.
pub fn in_threads(
    n: usize,
    tuning: ferrovod::config::Tuning,
    setup: impl Fn(&mut ferrovod::Communicator) + Sync,
    body: impl Fn(&mut ferrovod::Communicator) -> Result<(), String> + Sync,
) {
    let transports = ferrovod::transport::mem::MemTransport::world(n, tuning.timeout);
    std::thread::scope(|s| {
        let handles: Vec<_> = transports
            .into_iter()
            .map(|t| {
                let (tuning, setup, body) = (tuning.clone(), &setup, &body);
                s.spawn(move || {
                    let mut comm = ferrovod::Communicator::from_transport(Box::new(t), tuning);
                    setup(&mut comm);
                    body(&mut comm)
                })
            })
            .collect();
        for (rank, h) in handles.into_iter().enumerate() {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("rank {rank} of {n}: {e}"),
                Err(_) => panic!("rank {rank} of {n} panicked"),
            }
        }
    });
}
