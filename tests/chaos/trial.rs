//! One chaos trial: start a job of `np` ranks running random collectives, wait until every rank
//! is busy, strike once (kill a rank or a launcher with SIGKILL, or SIGSTOP a rank past the
//! timeout), then judge what every survivor did.
//!
//! Layouts: `bare` (ranks started here, the store served here: the runtime's own detection,
//! every rank must fail naming the culprit), `local` (`ferrovod-run -np`), `tasks` (two
//! launchers on a plan, as two Spark barrier tasks: the failure crosses launchers through the
//! store). A trial is safe when every survivor failed, no rank ever saw a wrong result or a
//! hang, and no process of the trial is left; clean when, besides, every survivor failed within
//! the timeout naming the culprit.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrovod::bootstrap::{Secret, StoreServer};
use ferrovod_tests::Rng;

use crate::rank;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Bare,
    Local,
    Tasks,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    KillRank,
    StopRank,
    KillLauncher,
}

/// What a trial is, drawn from its seed.
#[derive(Clone, Debug)]
pub struct Setup {
    pub seed: u64,
    pub layout: Layout,
    pub fault: Fault,
    pub transport: &'static str,
    /// Fake two hosts (`--hosts`, not drawn): the bare ranks' halves and the two tasks get a
    /// host name each, and allreduce runs hierarchically where the transport allows it.
    pub hosts: bool,
    /// After every rank is ready.
    pub strike_after: Duration,
    /// The rank struck, or the task whose launcher is killed.
    pub victim: usize,
}

impl Setup {
    pub fn draw(seed: u64, np: usize) -> Setup {
        let mut rng = Rng::new(seed);
        let layout = [Layout::Bare, Layout::Local, Layout::Tasks][rng.below(3) as usize];
        let fault = match (layout, rng.below(3)) {
            (_, 0) => Fault::KillRank,
            (_, 1) | (Layout::Bare, _) => Fault::StopRank,
            _ => Fault::KillLauncher,
        };
        let transport = ["auto", "tcp"][rng.below(2) as usize];
        let strike_after = Duration::from_millis(rng.below(1500));
        let victim = match fault {
            Fault::KillLauncher if layout == Layout::Tasks => rng.below(2) as usize,
            Fault::KillLauncher => 0,
            _ => rng.below(np as u64) as usize,
        };
        Setup { seed, layout, fault, transport, hosts: false, strike_after, victim }
    }

    pub fn describe(&self) -> String {
        let what = match self.fault {
            Fault::KillRank => format!("kill -9 rank {}", self.victim),
            Fault::StopRank => format!("SIGSTOP rank {}", self.victim),
            Fault::KillLauncher => format!("kill -9 task {}'s launcher", self.victim),
        };
        format!(
            "seed {} {:?} {}{} {what} at +{} ms",
            self.seed,
            self.layout,
            self.transport,
            // A single launcher's ranks share its one host name.
            if self.hosts && self.layout != Layout::Local { " on 2 hosts" } else { "" },
            self.strike_after.as_millis()
        )
    }
}

/// How a trial went.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Survivors (ranks in `bare`, launchers otherwise) expected to report the failure.
    pub survivors: usize,
    /// Of those, how many failed within the timeout naming the culprit.
    pub named: usize,
    /// Longest time from the strike to a survivor's report.
    pub detection: Option<Duration>,
    pub wrong_results: usize,
    pub hangs: usize,
    /// Processes of the trial still alive once its job ended.
    pub leftovers: usize,
    /// Why the trial is not safe, if it is not: a wrong result, a hang, a leftover, a
    /// survivor that did not fail.
    pub problems: Vec<String>,
    /// Safe, but a survivor blamed another rank, or failed later than the timeout.
    pub misses: Vec<String>,
}

impl Verdict {
    /// Every survivor failed, nothing wrong came back, nothing hung, nothing is left.
    pub fn safe(&self) -> bool {
        self.problems.is_empty()
    }

    /// Safe, and every survivor named the culprit within the timeout.
    pub fn clean(&self) -> bool {
        self.safe() && self.misses.is_empty()
    }
}

/// A process whose output lines are kept with their arrival times.
struct Watched {
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    /// The threads that read its stdout and stderr into `lines`.
    readers: Vec<std::thread::JoinHandle<()>>,
    ended: Option<(Instant, Option<i32>)>,
}

impl Watched {
    fn start(mut cmd: Command) -> Watched {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let pipes: [Box<dyn Read + Send>; 2] =
            [Box::new(child.stdout.take().unwrap()), Box::new(child.stderr.take().unwrap())];
        let readers = pipes
            .into_iter()
            .map(|pipe| {
                let lines = lines.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                        lines.lock().unwrap().push((Instant::now(), line));
                    }
                })
            })
            .collect();
        Watched { child, lines, readers, ended: None }
    }

    fn poll(&mut self) -> bool {
        if self.ended.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            let at = Instant::now();
            // Its last lines may still be in its pipes: the readers take them before the trial
            // is judged (a verdict printed just before the exit once read as none). A
            // grandchild holding a pipe open must not hold the trial up: at most 2 s.
            let deadline = at + Duration::from_secs(2);
            while !self.readers.iter().all(|r| r.is_finished()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.ended = Some((at, status.code()));
        }
        self.ended.is_some()
    }

    fn all_lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().iter().map(|(_, l)| l.clone()).collect()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid (not reaped while we hold it).
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

/// The environment variable that marks every process of a trial, to find leftovers.
const MARK: &str = "FERROVOD_CHAOS_TRIAL";

/// Pids of live processes whose environment carries `mark`.
fn marked(mark: &str) -> Vec<i32> {
    let needle = format!("{MARK}={mark}\0");
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // A zombie is already dead, waiting for its parent (this process) to reap it.
            let zombie = state.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'));
            !zombie && env.windows(needle.len()).any(|w| w == needle.as_bytes())
        })
        .collect()
}

/// The stall timeout the trials run with: what is left of the timeout once the engine's
/// backstop for a stalled rank 0 (1 s), its question to the store (the blame window, 1.25 s at
/// 5 s) and a little for the report are taken.
pub fn stall_timeout(timeout: Duration) -> Duration {
    timeout.saturating_sub(Duration::from_millis(2500)).max(Duration::from_secs(1))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// Runs one trial. `bin` is this binary (the ranks run `bin rank SEED`); `launcher` is
/// `ferrovod-run`; `dir` holds the plans.
pub fn run(setup: &Setup, np: usize, timeout: Duration, bin: &Path, launcher: &Path, dir: &Path) -> Verdict {
    let grace = Duration::from_secs(1);
    let mark = format!("{}-{}", std::process::id(), setup.seed);
    let secret = Secret::generate_hex().expect("random secret");
    let env = |cmd: &mut Command| {
        cmd.env(MARK, &mark)
            .env("FERROVOD_TIMEOUT", timeout.as_secs_f64().to_string())
            // A rank stopped between rounds is a stall: the others see no collective, only
            // tensors that wait for it.
            .env("FERROVOD_STALL_TIMEOUT", stall_timeout(timeout).as_secs_f64().to_string())
            .env("FERROVOD_TRANSPORT", setup.transport)
            .env("FERROVOD_SECRET", &secret)
            .env_remove("FERROVOD_RANK");
        if setup.hosts {
            // Forced, so that every allreduce takes it; TCP alone cannot (the knob refuses it).
            let hierarchical = if setup.transport == "tcp" { "off" } else { "on" };
            cmd.env("FERROVOD_HIERARCHICAL_ALLREDUCE", hierarchical);
        }
    };
    // Under `--hosts`, the host of bare rank `r` (of `np`) or of task `r` (of 2).
    let host_of = |cmd: &mut Command, host: usize| {
        if setup.hosts {
            cmd.env("FERROVOD_HOSTNAME", format!("chaos-host-{host}"));
        }
    };
    let rank_cmd = |cmd: &mut Command| {
        cmd.arg(bin).args(["rank", &setup.seed.to_string()]);
    };
    let launcher_cmd = || {
        let mut cmd = Command::new(launcher);
        cmd.args(["--grace-period", &grace.as_secs().to_string(), "--connect-timeout", "30"]);
        cmd
    };
    let mut _store = None;
    let mut procs: Vec<Watched> = match setup.layout {
        Layout::Bare => {
            let store = StoreServer::bind("127.0.0.1:0", Secret::new(secret.clone().into_bytes())).expect("store");
            let addr = store.local_addr().to_string();
            _store = Some(store);
            (0..np)
                .map(|r| {
                    let mut cmd = Command::new(bin);
                    cmd.args(["rank", &setup.seed.to_string()]);
                    env(&mut cmd);
                    cmd.env("FERROVOD_RANK", r.to_string())
                        .env("FERROVOD_SIZE", np.to_string())
                        .env("FERROVOD_RENDEZVOUS", &addr);
                    host_of(&mut cmd, r / (np / 2));
                    Watched::start(cmd)
                })
                .collect()
        }
        Layout::Local => {
            let mut cmd = launcher_cmd();
            cmd.args(["-np", &np.to_string(), "--"]);
            rank_cmd(&mut cmd);
            env(&mut cmd);
            vec![Watched::start(cmd)]
        }
        Layout::Tasks => {
            let (port, per_task) = (free_port(), np / 2);
            let tasks: Vec<String> = (0..2)
                .map(|t| format!(r#"{{"index": {t}, "host": "127.0.0.1", "gpus": [], "slots": {per_task}}}"#))
                .collect();
            (0..2)
                .map(|t| {
                    let plan = format!(
                        r#"{{"version": 1, "job_id": "chaos-{mark}", "rendezvous": "127.0.0.1:{port}", "task_index": {t}, "tasks": [{}]}}"#,
                        tasks.join(", ")
                    );
                    let path = dir.join(format!("plan-{mark}-{t}.json"));
                    std::fs::write(&path, plan).expect("write the plan");
                    let mut cmd = launcher_cmd();
                    cmd.arg("--plan").arg(&path).arg("--");
                    rank_cmd(&mut cmd);
                    env(&mut cmd);
                    host_of(&mut cmd, t);
                    Watched::start(cmd)
                })
                .collect()
        }
    };
    let mut verdict = Verdict::default();
    let rank_of_line = |line: &str| -> Option<usize> {
        match setup.layout {
            Layout::Bare => None,
            _ => line.strip_prefix('[')?.split(']').next()?.parse().ok(),
        }
    };
    // Every rank ready: its pid, by rank.
    let mut pids: Vec<Option<i32>> = vec![None; np];
    let deadline = Instant::now() + Duration::from_secs(60);
    while pids.iter().any(Option::is_none) {
        for (i, p) in procs.iter_mut().enumerate() {
            p.poll();
            for line in p.all_lines() {
                let Some(pos) = line.find("ready ") else { continue };
                let r = if setup.layout == Layout::Bare { Some(i) } else { rank_of_line(&line) };
                if let (Some(r), Ok(pid)) = (r, line[pos + 6..].trim().parse::<i32>()) {
                    pids[r] = Some(pid);
                }
            }
        }
        if procs.iter().any(|p| p.ended.is_some()) || Instant::now() > deadline {
            let out: Vec<Vec<String>> = procs.iter().map(Watched::all_lines).collect();
            verdict.problems.push(format!("the job did not start: {out:?}"));
            for p in &mut procs {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
            return verdict;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(setup.strike_after);

    // Strike.
    let struck_at = Instant::now();
    let victim_pid = |r: usize| pids[r].expect("ready");
    let signal = |pid: i32, sig: i32| {
        // SAFETY: kill(2) on a rank's pid, read from its own output; at worst it is gone.
        unsafe { libc::kill(pid, sig) };
    };
    let (culprits, survivors): (Vec<usize>, Vec<usize>) = match setup.fault {
        Fault::KillRank | Fault::StopRank => {
            let sig = if setup.fault == Fault::KillRank { libc::SIGKILL } else { libc::SIGSTOP };
            signal(victim_pid(setup.victim), sig);
            let survivors = match setup.layout {
                Layout::Bare => (0..np).filter(|&r| r != setup.victim).collect(),
                Layout::Local => vec![0],
                Layout::Tasks => vec![0, 1],
            };
            (vec![setup.victim], survivors)
        }
        Fault::KillLauncher => {
            procs[setup.victim].signal(libc::SIGKILL);
            let per_task = np / 2;
            let culprits = match setup.layout {
                Layout::Tasks => (setup.victim * per_task..(setup.victim + 1) * per_task).collect(),
                _ => (0..np).collect(),
            };
            let survivors = (0..procs.len()).filter(|&t| t != setup.victim).collect();
            (culprits, survivors)
        }
    };

    // Every process ends: survivors within the timeout (plus the launchers' grace and the
    // stop that follows); anything past that is a hang.
    let limit = timeout + grace + Duration::from_secs(10);
    loop {
        // Every process polled (not `any` over a lazy map: that would stop at the first).
        let running = procs.iter_mut().map(Watched::poll).filter(|ended| !ended).count();
        if running == 0 || struck_at.elapsed() >= limit {
            break;
        }
        if setup.layout == Layout::Bare && setup.fault == Fault::StopRank {
            // The stopped rank cannot fail: once every other rank ended, it is killed.
            let others_done = (0..np).filter(|&r| r != setup.victim).all(|r| procs[r].ended.is_some());
            if others_done {
                procs[setup.victim].signal(libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for (i, p) in procs.iter_mut().enumerate() {
        if p.ended.is_none() {
            verdict.hangs += 1;
            verdict.problems.push(format!("process {i} still running {limit:?} after the strike"));
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    // Judge each survivor.
    verdict.survivors = survivors.len();
    // A rank's own error lists whom it blames; a launcher names the job's first failing rank.
    let blamed = |line: &str| -> Vec<usize> {
        let list = |s: &str| -> Vec<usize> { s.split(',').filter_map(|x| x.trim().parse().ok()).collect() };
        if let Some(rest) = line.split("culprits [").nth(1) {
            return list(rest.split(']').next().unwrap_or(""));
        }
        line.split("job failed: rank ").nth(1).and_then(|r| r.split(' ').next()?.parse().ok()).into_iter().collect()
    };
    let names_culprit = |line: &str| {
        let b = blamed(line);
        !b.is_empty() && b.iter().all(|r| culprits.contains(r))
    };
    let lost_store = setup.fault == Fault::KillLauncher && setup.victim == 0;
    let reports = |p: &Watched| -> Vec<(Instant, String)> {
        let lines = p.lines.lock().unwrap();
        let report = |l: &str| match setup.layout {
            Layout::Bare => l.contains("chaos: failed:"),
            // A launcher's verdict, or its ranks' own errors, forwarded as they come: the
            // verdict waits for the job's processes to stop (a stopped rank: the grace period).
            _ => {
                l.contains("ferrovod-run: job failed:")
                    || l.contains("lost the rendezvous store")
                    || l.contains("] chaos: failed:")
            }
        };
        lines.iter().filter(|(_, l)| report(l)).cloned().collect()
    };
    for &s in &survivors {
        let p = &procs[s];
        let said = reports(p);
        let Some((first_at, first)) = said.first().cloned() else {
            verdict.problems.push(format!("survivor {s} reported no failure: {:?}", p.all_lines()));
            continue;
        };
        let took = first_at.saturating_duration_since(struck_at);
        verdict.detection = verdict.detection.max(Some(took));
        let right = |l: &String| names_culprit(l) || (lost_store && l.contains("lost the rendezvous store"));
        // Bare ranks each blame the culprit; a launcher says it, or one of its ranks does.
        let named = match setup.layout {
            Layout::Bare => right(&first),
            _ => said.iter().any(|(_, l)| right(l)),
        };
        if !named {
            verdict.misses.push(format!("survivor {s} named someone else: {said:?}"));
        } else if took > timeout {
            verdict.misses.push(format!("survivor {s} took {took:?} (timeout {timeout:?}): {first}"));
        } else {
            verdict.named += 1;
        }
        if p.ended.is_some_and(|(_, code)| code == Some(0)) {
            verdict.problems.push(format!("survivor {s} exited 0"));
        }
    }
    // No rank anywhere saw a wrong result or a hang.
    for p in &procs {
        for line in p.all_lines() {
            if line.contains("chaos: WRONG RESULT") {
                verdict.wrong_results += 1;
                verdict.problems.push(line);
            } else if line.contains("chaos: HANG") {
                verdict.hangs += 1;
                verdict.problems.push(line);
            }
        }
    }
    if setup.layout == Layout::Bare {
        for &s in &survivors {
            let code = procs[s].ended.map(|(_, code)| code);
            if code != Some(Some(rank::FAILED)) {
                verdict.problems.push(format!("rank {s} ended with {code:?}, not as a failed collective"));
            }
        }
    }

    // Nothing of the trial is left (ranks die with their launcher, or are stopped by it).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left = marked(&mark);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        left = marked(&mark);
    }
    if !left.is_empty() {
        verdict.leftovers = left.len();
        verdict.problems.push(format!("processes left: {left:?}"));
        for pid in left {
            signal(pid, libc::SIGKILL);
        }
    }
    verdict
}

/// This program's path, and `ferrovod-run` next to it.
pub fn binaries() -> (PathBuf, PathBuf) {
    let me = std::env::current_exe().expect("own path");
    let launcher = me.with_file_name("ferrovod-run");
    (me, launcher)
}
