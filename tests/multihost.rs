//! Many hosts, faked: 4 network namespaces on one bridge (`tests/multihost/hosts.sh`), each a
//! "host" with its own address and its own host name (a UTS namespace), 2 ranks each. One
//! `ferrovod-run` per host reads the same plan a Spark barrier stage would produce, with its own
//! `task_index`. Needs root (CI runs as root); elsewhere set FERROVOD_MULTIHOST=skip.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrovod_tests::workspace_bin;

const HOSTS: usize = 4;
const RANKS_PER_HOST: usize = 2;

/// The namespaces of one test; removed (and whatever still runs in them killed) on drop.
struct Hosts {
    name: String,
    subnet: String,
    dir: PathBuf,
}

impl Hosts {
    /// `id` tells apart the tests of one run (they run in parallel threads of one process).
    fn up(id: u32) -> Option<Hosts> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            let skip = std::env::var("FERROVOD_MULTIHOST").is_ok_and(|v| v == "skip");
            assert!(
                skip,
                "the multi-host tests need root (network namespaces); set FERROVOD_MULTIHOST=skip to skip them"
            );
            return None;
        }
        let pid = std::process::id();
        let hosts = Hosts {
            name: format!("fv{pid}x{id}"),
            subnet: format!("10.{}.{}", 200 + id, pid % 250 + 1),
            dir: std::env::temp_dir().join(format!("ferrovod-multihost-{pid}-{id}")),
        };
        std::fs::create_dir_all(&hosts.dir).unwrap();
        hosts.script(&["up", &hosts.name, &HOSTS.to_string(), &hosts.subnet]);
        Some(hosts)
    }

    fn script(&self, args: &[&str]) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("multihost/hosts.sh");
        let out = Command::new("bash").arg(script).args(args).output().expect("run hosts.sh");
        assert!(out.status.success(), "hosts.sh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn address(&self, host: usize) -> String {
        format!("{}.{}", self.subnet, 10 + host)
    }

    fn namespace(&self, host: usize) -> String {
        format!("{}-h{host}", self.name)
    }

    /// Starts host `host`'s launcher on the job's plan, running the test worker with `args`
    /// and `env` added to the launcher's (and so its ranks') environment.
    fn launch(&self, host: usize, secret: &str, args: &[&str], env: &[(&str, &str)]) -> Launcher {
        let tasks: Vec<String> = (0..HOSTS)
            .map(|t| format!(r#"{{"index": {t}, "host": "{}", "gpus": [0, 1], "slots": 2}}"#, self.address(t)))
            .collect();
        let plan = format!(
            r#"{{"version": 1, "job_id": "{}", "rendezvous": "{}:29400", "task_index": {host}, "tasks": [{}]}}"#,
            self.name,
            self.address(0),
            tasks.join(", ")
        );
        let plan_path = self.dir.join(format!("plan{host}.json"));
        std::fs::write(&plan_path, plan).unwrap();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.namespace(host), "unshare", "--uts", "sh", "-c"])
            .arg(r#"hostname "$0" && exec "$@""#)
            .arg(format!("fv-host-{host}"))
            .arg(workspace_bin("ferrovod-run"))
            .arg("--plan")
            .arg(&plan_path)
            .args(["--grace-period", "2", "--connect-timeout", "30", "--"])
            .arg(workspace_bin("ferrovod-test-worker"))
            .args(args)
            .env("FERROVOD_SECRET", secret)
            .env("FERROVOD_TIMEOUT", "10")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ip netns exec");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let lines = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let text = stderr.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(err).read_to_string(&mut s);
            text.lock().unwrap().push_str(&s);
        });
        Launcher { child, stdout, stderr }
    }

    /// The processes still in host `host`'s namespace.
    fn pids(&self, host: usize) -> Vec<String> {
        let out = Command::new("ip").args(["netns", "pids", &self.namespace(host)]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect()
    }

    /// The remote ends of host `host`'s established TCP connections.
    fn peers(&self, host: usize) -> Vec<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.namespace(host), "ss", "-tnH", "state", "established"])
            .output();
        let out = out.expect("run ss in the namespace");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
            .collect()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.script(&["down", &self.name, &HOSTS.to_string()]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Launcher {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Launcher {
    fn count(&self, text: &str) -> usize {
        self.stdout.lock().unwrap().iter().filter(|l| l.contains(text)).count()
    }

    /// Waits up to `timeout` for the launcher to exit; its exit code, stdout and stderr.
    fn wait(&mut self, timeout: Duration) -> (Option<i32>, Vec<String>, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The readers finish once the launcher's pipes close.
        std::thread::sleep(Duration::from_millis(200));
        let code = status.and_then(|s| s.code());
        (code, self.stdout.lock().unwrap().clone(), self.stderr.lock().unwrap().clone())
    }
}

fn secret() -> String {
    ferrovod::bootstrap::Secret::generate_hex().expect("random secret")
}

#[test]
fn four_hosts_of_two_ranks_are_placed_as_hosts_and_every_collective_is_exact() {
    let Some(hosts) = Hosts::up(0) else { return };
    // The hierarchical allreduce (shared memory within each host) forced on, then off (flat
    // over TCP); `check_collectives` checks which ran.
    for hierarchical in ["on", "off"] {
        let secret = secret();
        let env = [("FERROVOD_HIERARCHICAL_ALLREDUCE", hierarchical)];
        let launchers: Vec<Launcher> = (0..HOSTS).map(|h| hosts.launch(h, &secret, &["placement"], &env)).collect();
        check_placement(launchers);
    }
}

fn check_placement(mut launchers: Vec<Launcher>) {
    for (host, launcher) in launchers.iter_mut().enumerate() {
        let (code, stdout, stderr) = launcher.wait(Duration::from_secs(240));
        assert_eq!(code, Some(0), "host {host}'s launcher: {stdout:?} {stderr}");
        for local in 0..RANKS_PER_HOST {
            let rank = host * RANKS_PER_HOST + local;
            // Ranks task by task; local and cross rank by host; its host's two GPUs, by local
            // rank; its host's name;
            // TCP between hosts (shared memory needs every rank on one host).
            let want = format!(
                "[{rank}] placement rank={rank} size=8 local={local}/2 cross={host}/4 cvd=0,1 host=fv-host-{host} transport=tcp"
            );
            assert!(stdout.contains(&want), "host {host} lacks {want:?}: {stdout:#?}");
            assert!(stdout.contains(&format!("[{rank}] ok over tcp")), "rank {rank}: {stdout:#?} {stderr}");
        }
    }
}

#[test]
fn a_launcher_killed_on_one_host_ends_the_job_on_every_host() {
    // A host of ranks only, and the host that serves the store.
    for (id, killed) in [(1, 2), (2, 0)] {
        kill_one(id, killed, Victim::Launcher);
    }
}

#[test]
fn a_rank_killed_on_one_host_ends_the_job_on_every_host() {
    kill_one(3, 3, Victim::Rank);
}

#[derive(Clone, Copy, PartialEq)]
enum Victim {
    Launcher,
    Rank,
}

/// A rank process (the test worker) in host `host`'s namespace: its pid and global rank.
fn a_rank_of(hosts: &Hosts, host: usize) -> (i32, usize) {
    for pid in hosts.pids(host) {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let rank = environ
            .split(|&b| b == 0)
            .filter_map(|kv| std::str::from_utf8(kv).ok()?.strip_prefix("FERROVOD_RANK=")?.parse().ok())
            .next();
        if let (true, Some(rank)) = (comm.trim() == "ferrovod-test-w", rank) {
            return (pid.parse().unwrap(), rank);
        }
    }
    panic!("no rank process on host {host}");
}

/// Kills host `killed`'s launcher, or one of its ranks, while every rank allreduces in a loop:
/// every launcher ends within 10 s (the job's timeout), the failure names
/// the victim, and nothing is left on any host.
fn kill_one(id: u32, killed: usize, victim: Victim) {
    let Some(hosts) = Hosts::up(id) else { return };
    let secret = secret();
    let mut launchers: Vec<Launcher> =
        (0..HOSTS).map(|h| hosts.launch(h, &secret, &["loop", "4194304"], &[])).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while launchers.iter().map(|l| l.count("ready")).sum::<usize>() < HOSTS * RANKS_PER_HOST {
        assert!(
            Instant::now() < deadline,
            "the ranks did not all start: {:?}",
            launchers.iter().map(|l| l.count("ready")).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The job's connections run between the hosts' own addresses: nothing over loopback.
    for host in 0..HOSTS {
        let peers = hosts.peers(host);
        assert!(!peers.is_empty(), "host {host} has no connections");
        for peer in &peers {
            assert!(peer.starts_with(&format!("{}.", hosts.subnet)), "host {host} talks to {peer}: {peers:?}");
        }
    }

    let started = Instant::now();
    let mut ended: Vec<Option<Duration>> = vec![None; HOSTS];
    let culprits: Vec<usize> = match victim {
        Victim::Launcher => {
            launchers[killed].child.kill().unwrap();
            let _ = launchers[killed].child.wait();
            ended[killed] = Some(Duration::ZERO);
            (0..RANKS_PER_HOST).map(|i| killed * RANKS_PER_HOST + i).collect()
        }
        Victim::Rank => {
            let (pid, rank) = a_rank_of(&hosts, killed);
            // SAFETY: kill(2) on a pid just read from the namespace; at worst it is gone.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            vec![rank]
        }
    };
    // When each launcher ended.
    while ended.iter().any(Option::is_none) && started.elapsed() < Duration::from_secs(30) {
        for (host, launcher) in launchers.iter_mut().enumerate() {
            if ended[host].is_none() && launcher.child.try_wait().unwrap().is_some() {
                ended[host] = Some(started.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut everything = Vec::new();
    let survivors = |h: usize| victim == Victim::Rank || h != killed;
    for (host, launcher) in launchers.iter_mut().enumerate().filter(|&(h, _)| survivors(h)) {
        // The issue's bound, task 0's launcher included: it keeps the store only until every
        // other launcher is done or dead (the store sees a killed one's connection close).
        let limit = Duration::from_secs(10);
        let (code, stdout, stderr) = launcher.wait(Duration::from_secs(1));
        assert!(code.is_some_and(|c| c != 0), "host {host}'s launcher: {code:?} {stdout:?} {stderr}");
        let took = ended[host].expect("it ended");
        assert!(took < limit, "host {host}'s launcher took {took:?}");
        eprintln!("host {host}'s launcher ended {took:?} after host {killed}'s was killed");
        // It reports the job's first failure, or (the store's host killed) the store's loss,
        // naming its address.
        let lost_store = format!("lost the rendezvous store: rendezvous store at {}", hosts.address(0));
        assert!(
            stderr.contains("ferrovod-run: job failed: rank") || (killed == 0 && stderr.contains(&lost_store)),
            "host {host}: {stderr}"
        );
        everything.extend(stdout);
        everything.extend(stderr.lines().map(str::to_string));
    }
    // The first to fail saw the victim go and said which rank it was (or, the store's host
    // killed, every launcher says it lost the store there).
    let lost_store = format!("lost the rendezvous store: rendezvous store at {}", hosts.address(0));
    let culprit = |l: &String| {
        (victim == Victim::Launcher && killed == 0 && l.contains(&lost_store))
            || culprits.iter().any(|r| {
                l.contains(&format!("connection to rank {r} closed"))
                    || l.contains(&format!("job failed: rank {r} (host {}", hosts.address(killed)))
            })
    };
    assert!(everything.iter().any(culprit), "nothing named rank(s) {culprits:?}: {everything:#?}");
    // Nothing is left on any host, the killed one included (its ranks die with their launcher).
    let deadline = Instant::now() + Duration::from_secs(10);
    while (0..HOSTS).any(|h| !hosts.pids(h).is_empty()) {
        assert!(
            Instant::now() < deadline,
            "processes left: {:?}",
            (0..HOSTS).map(|h| hosts.pids(h)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
