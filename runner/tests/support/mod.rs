//! Helpers shared by the launcher's integration tests: the binaries, temporary directories,
//! bounded waits, and process liveness from /proc.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The launcher binary.
pub const RUN: &str = env!("CARGO_BIN_EXE_ferrovod-run");
/// The test worker binary.
pub const FAKE: &str = env!("CARGO_BIN_EXE_fake-worker");

/// A fresh directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "ferrovod-runner-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn arg(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A launcher command with a clean `FERROVOD_*` environment and a short grace period.
pub fn launcher() -> Command {
    let mut cmd = Command::new(RUN);
    for (k, _) in std::env::vars() {
        if k.starts_with("FERROVOD_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("FERROVOD_GRACE_PERIOD", "2").env("FERROVOD_CONNECT_TIMEOUT", "20").env("FERROVOD_STORE_LINGER", "20");
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// What a finished launcher produced.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// A started launcher whose output is being collected.
pub struct Running {
    pub child: Child,
    pub started: Instant,
    out: Option<std::thread::JoinHandle<String>>,
    err: Option<std::thread::JoinHandle<String>>,
}

fn collect(r: Option<impl Read + Send + 'static>) -> Option<std::thread::JoinHandle<String>> {
    r.map(|mut r| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    })
}

pub fn start(mut cmd: Command) -> Running {
    let mut child = cmd.spawn().expect("starting ferrovod-run");
    let out = collect(child.stdout.take());
    let err = collect(child.stderr.take());
    Running { child, started: Instant::now(), out, err }
}

impl Running {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for the launcher to exit, killing it (and failing) after `limit`.
    pub fn finish(mut self, limit: Duration) -> Finished {
        let deadline = self.started + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let out = self.out.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
                let err = self.err.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
                panic!("ferrovod-run did not finish within {limit:?}\nstdout:\n{out}\nstderr:\n{err}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let elapsed = self.started.elapsed();
        let stdout = self.out.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        let stderr = self.err.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        Finished { status, stdout, stderr, elapsed }
    }
}

/// Runs a launcher to completion (at most `limit`).
pub fn run(cmd: Command, limit: Duration) -> Finished {
    start(cmd).finish(limit)
}

/// Polls `cond` every few milliseconds until it holds or `limit` passes.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` is a live process (a zombie counts as dead).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            // "pid (comm) S ...": the state follows the last ')'.
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
    }
}

/// The pids in `dir/rank-R.pids` for every rank below `n` (own pid first, then grandchildren).
pub fn read_pids(dir: &Path, n: usize) -> Vec<Vec<u32>> {
    (0..n)
        .map(|r| {
            std::fs::read_to_string(dir.join(format!("rank-{r}.pids")))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect()
        })
        .collect()
}

/// Waits until every rank below `n` wrote its pid file.
pub fn wait_ready(dir: &Path, n: usize, limit: Duration) -> Vec<Vec<u32>> {
    let ok = wait_for(limit, || (0..n).all(|r| dir.join(format!("rank-{r}.pids")).exists()));
    assert!(ok, "not every rank of {n} became ready within {limit:?}");
    read_pids(dir, n)
}

/// The JSON reports (`rank-R.json`) of a report directory, by rank.
pub fn reports(dir: &Path) -> BTreeMap<usize, Value> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(r) = name.strip_prefix("rank-").and_then(|s| s.strip_suffix(".json")) {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            out.insert(r.parse().unwrap(), v);
        }
    }
    out
}

/// `report.env[name]` as a string.
pub fn env_of<'a>(report: &'a Value, name: &str) -> Option<&'a str> {
    report["env"][name].as_str()
}

/// Sends `sig` to `pid`.
pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) };
}

/// A port that is free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A fresh job secret.
pub fn secret() -> String {
    ferrovod::bootstrap::Secret::generate_hex().unwrap()
}

/// Writes `text` to `dir/name` and returns the path as an argument.
pub fn write_file(dir: &TempDir, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// The descriptor number the launcher gets its events channel on (`--events-fd 5`).
pub const EVENTS_FD: i32 = 5;

/// Starts `cmd` with the write end of a pipe as descriptor [`EVENTS_FD`]; the handle gives
/// back every line of the channel, parsed, once the launcher closed it.
pub fn start_with_events(mut cmd: Command) -> (Running, std::thread::JoinHandle<Vec<Value>>) {
    let (read, write) = ferrovod::os::pipe().unwrap();
    let raw = write.as_raw_fd();
    // SAFETY: dup2 and fcntl are async-signal-safe; the child execs right after. dup2 leaves
    // the new descriptor without close-on-exec, so the launcher inherits it; when the pipe end
    // already is that number, dup2 does nothing and close-on-exec is cleared by hand.
    unsafe {
        cmd.pre_exec(move || {
            let rc = if raw == EVENTS_FD { libc::fcntl(raw, libc::F_SETFD, 0) } else { libc::dup2(raw, EVENTS_FD) };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let running = start(cmd);
    drop(write);
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::fs::File::from(read).read_to_string(&mut text);
        text.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
            .collect()
    });
    (running, reader)
}

/// Runs `cmd` to the end with an events channel: what the launcher did and every event.
pub fn run_with_events(cmd: Command, limit: Duration) -> (Finished, Vec<Value>) {
    let (running, reader) = start_with_events(cmd);
    let f = running.finish(limit);
    (f, reader.join().unwrap())
}

pub fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}
