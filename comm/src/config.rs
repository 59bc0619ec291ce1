//! Every `FERROVOD_*` knob, declared once: name, default, one-line doc.
//!
//! [`KNOBS`] is the table (printed by `--help` texts and the README); [`Config::from_env`] reads
//! it. A value that does not parse is an error that names the variable, never a silent default.

use std::time::Duration;

use crate::error::{Error, Result, quoted};

/// One environment knob.
#[derive(Debug, Clone, Copy)]
pub struct Knob {
    /// Environment variable name.
    pub name: &'static str,
    /// Default value as text ("" when there is none).
    pub default: &'static str,
    /// What it does.
    pub doc: &'static str,
}

macro_rules! knobs {
    ($($id:ident = $name:literal, $default:literal, $doc:literal;)*) => {
        $(#[doc = $doc] pub const $id: Knob = Knob { name: $name, default: $default, doc: $doc };)*
        /// All knobs, in declaration order.
        pub const KNOBS: &[Knob] = &[$($id),*];
    };
}

knobs! {
    RANK = "FERROVOD_RANK", "0", "This process's rank in the job.";
    SIZE = "FERROVOD_SIZE", "1", "Number of ranks in the job.";
    LOCAL_RANK = "FERROVOD_LOCAL_RANK", "", "Rank among the processes on this host (set by the launcher; the rendezvous recomputes and checks it).";
    LOCAL_SIZE = "FERROVOD_LOCAL_SIZE", "", "Number of processes on this host (set by the launcher).";
    CROSS_RANK = "FERROVOD_CROSS_RANK", "", "Index of this process among those with the same local rank (set by the launcher).";
    CROSS_SIZE = "FERROVOD_CROSS_SIZE", "", "Number of processes with this local rank (set by the launcher).";
    RENDEZVOUS = "FERROVOD_RENDEZVOUS", "", "host:port of the rendezvous store; required when FERROVOD_SIZE > 1.";
    SECRET = "FERROVOD_SECRET", "", "Job secret for the HMAC handshake on every connection; required when FERROVOD_SIZE > 1.";
    JOB_TAG = "FERROVOD_JOB_TAG", "", "Set by the launcher on every process it starts (random, one per launcher): marks the job's processes and what they start, so that the launcher, or its reaper when the launcher is killed, can end them all; not read by ranks.";
    HOST_STORE = "FERROVOD_HOST_STORE", "0", "1: rank 0 binds FERROVOD_RENDEZVOUS and serves the store itself (when no launcher does).";
    TIMEOUT = "FERROVOD_TIMEOUT", "600", "Seconds a collective may wait without progress before it fails naming the silent peers.";
    CONNECT_TIMEOUT = "FERROVOD_CONNECT_TIMEOUT", "120", "Seconds to wait for the store and for every peer at start-up.";
    HOSTNAME = "FERROVOD_HOSTNAME", "", "This process's host name as the rendezvous publishes it (default: the kernel's). Ranks with the same name and boot id count as one host (local ranks, shared memory); tests fake several hosts on one machine with it, as Horovod's HOROVOD_HOSTNAME does.";
    ADVERTISE_ADDR = "FERROVOD_ADVERTISE_ADDR", "", "IP address peers use to reach this process (default: the local address of the route to the store).";
    TCP_STREAMS = "FERROVOD_TCP_STREAMS", "2", "TCP connections per peer; large messages are striped across them, pipelined messages take them in turn.";
    TCP_BUFFER = "FERROVOD_TCP_BUFFER", "0", "SO_SNDBUF/SO_RCVBUF in bytes; 0 keeps the kernel's auto-tuning.";
    STRIPE_MIN = "FERROVOD_STRIPE_MIN", "262144", "Messages of at least this many bytes are striped across all TCP streams.";
    SPIN_US = "FERROVOD_SPIN_US", "50", "Microseconds a waiting thread keeps looking (a rank inside a collective at its links, the idle engine thread for news, a caller at its handle), yielding its core between looks, before it sleeps (at most 10000); 0 never spins. The default trades a little CPU time for wake-ups that a halted vCPU makes slow: see benches/RESULTS.md.";
    TRANSPORT = "FERROVOD_TRANSPORT", "auto", "How ranks reach each other for host memory: auto (shared memory when every rank of the job, or of the process set, is on one host and can map the others' memory, TCP otherwise), shm (shared memory or an error), tcp.";
    SHM_RING = "FERROVOD_SHM_RING", "1048576", "Bytes of each shared-memory ring (one per ordered pair of ranks on a host) and of each of a rank's two stage regions (the pieces of the shared-memory collectives); a power of two, at least 4096.";
    ALLREDUCE_ALGORITHM = "FERROVOD_ALLREDUCE_ALGORITHM", "auto", "auto, ring, halving-doubling, recursive-doubling, stage-slots or stage-split (auto: by size, world size and transport; the stage ones need shared memory and fall back to auto without it).";
    HIERARCHICAL_ALLREDUCE = "FERROVOD_HIERARCHICAL_ALLREDUCE", "auto", "When the job spans hosts with the same number (at least 2) of ranks each: auto (the hierarchical allreduce, shared memory within each host and TCP between hosts, wherever the alpha-beta model finds it cheaper than the flat one), on (always; an error if a host's ranks cannot share memory), off (never: every rank talks TCP to every other).";
    SMALL_ALLREDUCE = "FERROVOD_SMALL_ALLREDUCE", "65536", "Allreduce up to this many bytes uses recursive doubling, larger ones the ring.";
    SMALL_BROADCAST = "FERROVOD_SMALL_BROADCAST", "65536", "Broadcast up to this many bytes uses a binomial tree, larger ones a pipelined chain.";
    SEGMENT = "FERROVOD_SEGMENT", "262144", "Pipeline segment in bytes: one message of the ring and halving-doubling schedules.";
    BROADCAST_SEGMENT = "FERROVOD_BROADCAST_SEGMENT", "4194304", "Pipeline segment in bytes for the chain broadcast (no reduction to overlap: larger is cheaper per byte).";
    RING_CHUNK = "FERROVOD_RING_CHUNK", "1048576", "The ring allreduce runs on pieces of this many bytes, so that reduced data is still in cache when sent.";
    FUSION_THRESHOLD = "FERROVOD_FUSION_THRESHOLD", "67108864", "Engine: tensors ready together are fused into buckets of up to this many bytes; 0 turns fusion off.";
    EAGER_BYTES = "FERROVOD_EAGER_BYTES", "8192", "Engine: cached allreduces up to this many bytes in all per round travel inside the negotiation round itself and are reduced on arrival, saving an exchange; 0 turns it off.";
    CACHE_CAPACITY = "FERROVOD_CACHE_CAPACITY", "1024", "Engine: tensors whose agreed metadata is cached, so that steady-state steps negotiate with a bit each.";
    STALL_WARNING = "FERROVOD_STALL_WARNING", "60", "Engine: seconds a tensor may wait for other ranks before rank 0 logs the missing ranks and names; 0 turns it off.";
    STALL_TIMEOUT = "FERROVOD_STALL_TIMEOUT", "600", "Engine: seconds a tensor may wait for other ranks before every rank fails; 0 turns it off.";
    TIMELINE = "FERROVOD_TIMELINE", "", "Engine: write a Chrome trace (Perfetto, chrome://tracing) of every tensor's phases to this path (rank N > 0 appends .N).";
    GPU_BACKEND = "FERROVOD_GPU_BACKEND", "auto", "How collectives on GPU memory run: auto (NCCL where every rank loaded it and holds a GPU of its own, else the staged path), nccl (NCCL or an error on every rank naming why), staged (through pinned host buffers and the host backend).";
    STAGED_PIECE = "FERROVOD_STAGED_PIECE", "4194304", "Staged GPU path: bytes of each piece of a pipelined allreduce or broadcast (the copy of one piece overlaps the transfer of the next).";
    NCCL_LIBRARY = "FERROVOD_NCCL_LIBRARY", "", "Path of the NCCL library to load (default: the copy pip's nvidia-nccl wheel installed for torch, then libnccl.so.2 from the dynamic loader's search).";
    GRACE_PERIOD = "FERROVOD_GRACE_PERIOD", "10", "ferrovod-run: seconds between SIGTERM and SIGKILL when stopping a job.";
    STORE_LINGER = "FERROVOD_STORE_LINGER", "600", "ferrovod-run: seconds task 0 keeps serving the store for the other tasks' launchers.";
    OUTPUT_DIR = "FERROVOD_OUTPUT_DIR", "", "ferrovod-run: also write each rank's output to DIR/rank.N/{stdout,stderr}.";
    NO_PREFIX = "FERROVOD_NO_PREFIX", "0", "ferrovod-run: 1 forwards output lines without the [rank] prefix.";
    NO_WATCH_PARENT = "FERROVOD_NO_WATCH_PARENT", "0", "ferrovod-run: 1 keeps the job running when the launcher's parent dies.";
    VERBOSE = "FERROVOD_VERBOSE", "0", "ferrovod-run: verbosity level (0, 1, 2).";
    SPARK_SLOT_WAIT = "FERROVOD_SPARK_SLOT_WAIT", "10", "ferrovod.spark: seconds to wait for a cluster's executors to register enough task slots before refusing the job (local masters: no wait).";
    SPARK_LOG = "FERROVOD_SPARK_LOG", "", "ferrovod.spark: host:port of the driver's log channel, set for each process by its barrier task (log_to_driver uses it).";
}

/// Which allreduce algorithm runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllreduceAlgorithm {
    /// By message size and world size (see the host backend).
    Auto,
    /// Pipelined ring.
    Ring,
    /// Recursive halving then doubling.
    HalvingDoubling,
    /// Recursive doubling (whole buffer every round).
    RecursiveDoubling,
    /// Shared memory: every rank reduces every rank's region.
    StageSlots,
    /// Shared memory: reduce-scatter then allgather, read in place.
    StageSplit,
}

impl AllreduceAlgorithm {
    /// Every algorithm, in the order the knob's doc names them.
    pub const ALL: [AllreduceAlgorithm; 6] = [
        AllreduceAlgorithm::Auto,
        AllreduceAlgorithm::Ring,
        AllreduceAlgorithm::HalvingDoubling,
        AllreduceAlgorithm::RecursiveDoubling,
        AllreduceAlgorithm::StageSlots,
        AllreduceAlgorithm::StageSplit,
    ];

    /// The name `FERROVOD_ALLREDUCE_ALGORITHM` gives it.
    pub fn name(self) -> &'static str {
        match self {
            AllreduceAlgorithm::Auto => "auto",
            AllreduceAlgorithm::Ring => "ring",
            AllreduceAlgorithm::HalvingDoubling => "halving-doubling",
            AllreduceAlgorithm::RecursiveDoubling => "recursive-doubling",
            AllreduceAlgorithm::StageSlots => "stage-slots",
            AllreduceAlgorithm::StageSplit => "stage-split",
        }
    }
}

/// Which transport carries host memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportChoice {
    /// Shared memory when every rank is on this host and it can be set up, TCP otherwise.
    Auto,
    /// Shared memory, or an error saying why not.
    Shm,
    /// TCP.
    Tcp,
}

/// Whether allreduce runs hierarchically (within hosts, then between them) in a job that spans
/// hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hierarchical {
    /// Where the alpha-beta model finds it cheaper, when a host's ranks can share memory.
    Auto,
    /// Always, or an error saying why it cannot be set up.
    On,
    /// Never.
    Off,
}

/// Tuning shared by the transport and the algorithms.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// See [`TIMEOUT`].
    pub timeout: Duration,
    /// See [`CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// See [`TCP_STREAMS`].
    pub tcp_streams: usize,
    /// See [`TCP_BUFFER`].
    pub tcp_buffer: usize,
    /// See [`STRIPE_MIN`].
    pub stripe_min: usize,
    /// See [`SPIN_US`].
    pub spin: Duration,
    /// See [`TRANSPORT`].
    pub transport: TransportChoice,
    /// See [`SHM_RING`].
    pub shm_ring: usize,
    /// See [`ALLREDUCE_ALGORITHM`].
    pub allreduce: AllreduceAlgorithm,
    /// See [`HIERARCHICAL_ALLREDUCE`].
    pub hierarchical: Hierarchical,
    /// See [`SMALL_ALLREDUCE`].
    pub small_allreduce: usize,
    /// See [`SMALL_BROADCAST`].
    pub small_broadcast: usize,
    /// See [`SEGMENT`].
    pub segment: usize,
    /// See [`RING_CHUNK`].
    pub ring_chunk: usize,
    /// See [`BROADCAST_SEGMENT`].
    pub broadcast_segment: usize,
    /// See [`FUSION_THRESHOLD`].
    pub fusion_threshold: usize,
    /// See [`CACHE_CAPACITY`].
    pub cache_capacity: usize,
    /// See [`EAGER_BYTES`].
    pub eager_bytes: usize,
    /// See [`GPU_BACKEND`].
    pub gpu_backend: GpuBackend,
    /// See [`STAGED_PIECE`].
    pub staged_piece: usize,
}

/// Which backend runs collectives on GPU memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuBackend {
    /// The best that works: NCCL when built and loadable, the staged path otherwise.
    Auto,
    /// NCCL, or an error.
    Nccl,
    /// Through host memory.
    Staged,
}

/// Engine settings that each rank may choose for itself.
#[derive(Debug, Clone, Default)]
pub struct EngineSettings {
    /// See [`STALL_WARNING`]; `None` is off.
    pub stall_warning: Option<Duration>,
    /// See [`STALL_TIMEOUT`]; `None` is off.
    pub stall_timeout: Option<Duration>,
    /// See [`TIMELINE`].
    pub timeline: Option<std::path::PathBuf>,
}

impl Tuning {
    /// The part of the timeout a rank keeps, once a wait has gone without progress, to learn
    /// whether the peers it waits for are waiting on others themselves (and so not to blame):
    /// a quarter, at most 2 s.
    pub fn blame_window(&self) -> Duration {
        (self.timeout / 4).min(Duration::from_secs(2))
    }

    /// The tuning the links run with when the job has a store: their waits give up a
    /// [`Tuning::blame_window`] before the timeout, so that the whole failure, the question
    /// of whom to blame included, is decided within it.
    pub fn for_links(&self) -> Tuning {
        Tuning { timeout: self.timeout - self.blame_window(), ..self.clone() }
    }

    /// The knobs every rank must agree on, with their values: exchanged at rendezvous, so that
    /// ranks started with different settings fail at once, naming the knob.
    pub fn agreed(&self) -> Vec<(&'static str, String)> {
        vec![
            (TCP_STREAMS.name, self.tcp_streams.to_string()),
            (STRIPE_MIN.name, self.stripe_min.to_string()),
            (TRANSPORT.name, format!("{:?}", self.transport)),
            (SHM_RING.name, self.shm_ring.to_string()),
            (ALLREDUCE_ALGORITHM.name, format!("{:?}", self.allreduce)),
            (HIERARCHICAL_ALLREDUCE.name, format!("{:?}", self.hierarchical)),
            (SMALL_ALLREDUCE.name, self.small_allreduce.to_string()),
            (SMALL_BROADCAST.name, self.small_broadcast.to_string()),
            (SEGMENT.name, self.segment.to_string()),
            (BROADCAST_SEGMENT.name, self.broadcast_segment.to_string()),
            (RING_CHUNK.name, self.ring_chunk.to_string()),
            (FUSION_THRESHOLD.name, self.fusion_threshold.to_string()),
            (CACHE_CAPACITY.name, self.cache_capacity.to_string()),
            (EAGER_BYTES.name, self.eager_bytes.to_string()),
            (GPU_BACKEND.name, format!("{:?}", self.gpu_backend)),
            (STAGED_PIECE.name, self.staged_piece.to_string()),
        ]
    }
}

impl Default for Tuning {
    fn default() -> Self {
        let num = |k: Knob| k.default.parse::<usize>().unwrap_or(0);
        Tuning {
            timeout: Duration::from_secs(num(TIMEOUT) as u64),
            connect_timeout: Duration::from_secs(num(CONNECT_TIMEOUT) as u64),
            tcp_streams: num(TCP_STREAMS),
            tcp_buffer: num(TCP_BUFFER),
            stripe_min: num(STRIPE_MIN),
            spin: Duration::from_micros(num(SPIN_US) as u64),
            transport: TransportChoice::Auto,
            shm_ring: num(SHM_RING),
            allreduce: AllreduceAlgorithm::Auto,
            hierarchical: Hierarchical::Auto,
            small_allreduce: num(SMALL_ALLREDUCE),
            small_broadcast: num(SMALL_BROADCAST),
            segment: num(SEGMENT),
            ring_chunk: num(RING_CHUNK),
            broadcast_segment: num(BROADCAST_SEGMENT),
            fusion_threshold: num(FUSION_THRESHOLD),
            cache_capacity: num(CACHE_CAPACITY),
            eager_bytes: num(EAGER_BYTES),
            gpu_backend: GpuBackend::Auto,
            staged_piece: num(STAGED_PIECE),
        }
    }
}

/// Largest eager budget: it is part of every round's fixed frame.
const MAX_EAGER: usize = 1 << 20;

/// Longest spin before sleeping, in microseconds.
const MAX_SPIN_US: usize = 10_000;

/// Longest accepted timeout, in seconds.
const MAX_SECS: f64 = 365.0 * 24.0 * 3600.0;

/// Everything a process reads from its environment to join a job.
#[derive(Debug, Clone)]
pub struct Config {
    /// See [`RANK`].
    pub rank: usize,
    /// See [`SIZE`].
    pub size: usize,
    /// See [`RENDEZVOUS`].
    pub rendezvous: Option<String>,
    /// See [`SECRET`]; never printed.
    pub secret: Option<crate::bootstrap::Secret>,
    /// See [`HOST_STORE`].
    pub host_store: bool,
    /// See [`HOSTNAME`].
    pub hostname: Option<String>,
    /// See [`ADVERTISE_ADDR`].
    pub advertise_addr: Option<std::net::IpAddr>,
    /// Transport and algorithm tuning.
    pub tuning: Tuning,
    /// Engine settings.
    pub engine: EngineSettings,
}

impl Config {
    /// Reads every knob from the process environment.
    pub fn from_env() -> Result<Config> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads every knob through `get` (the environment, or a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let text = |k: Knob| get(k.name).filter(|v| !v.is_empty());
        let parse = |k: Knob, what: &str| -> Result<usize> {
            let v = text(k).unwrap_or_else(|| k.default.to_string());
            v.trim()
                .parse::<usize>()
                .map_err(|_| Error::Config { name: k.name, detail: format!("{} is not {what}", quoted(&v)) })
        };
        let secs = |k: Knob| -> Result<Duration> {
            let v = text(k).unwrap_or_else(|| k.default.to_string());
            match v.trim().parse::<f64>() {
                // At most a year: later deadlines overflow `Instant` arithmetic.
                Ok(s) if s > 0.0 && s.is_finite() => Ok(Duration::from_secs_f64(s.min(MAX_SECS))),
                _ => Err(Error::Config {
                    name: k.name,
                    detail: format!("{} is not a positive number of seconds", quoted(&v)),
                }),
            }
        };
        let size = parse(SIZE, "a positive integer")?;
        let rank = parse(RANK, "a non-negative integer")?;
        let tuning = Tuning {
            timeout: secs(TIMEOUT)?,
            connect_timeout: secs(CONNECT_TIMEOUT)?,
            tcp_streams: parse(TCP_STREAMS, "a positive integer")?.clamp(1, 16),
            tcp_buffer: parse(TCP_BUFFER, "a byte count")?,
            stripe_min: parse(STRIPE_MIN, "a byte count")?,
            spin: Duration::from_micros(parse(SPIN_US, "a number of microseconds")?.min(MAX_SPIN_US) as u64),
            transport: match text(TRANSPORT).as_deref().map(str::trim).unwrap_or("auto") {
                "auto" => TransportChoice::Auto,
                "shm" => TransportChoice::Shm,
                "tcp" => TransportChoice::Tcp,
                v => {
                    return Err(Error::Config {
                        name: TRANSPORT.name,
                        detail: format!("{} is not auto, shm or tcp", quoted(v)),
                    });
                }
            },
            shm_ring: match parse(SHM_RING, "a byte count")? {
                n if n >= 4096 && n.is_power_of_two() => n,
                n => {
                    return Err(Error::Config {
                        name: SHM_RING.name,
                        detail: format!("{n} is not a power of two of at least 4096"),
                    });
                }
            },
            allreduce: {
                let v = text(ALLREDUCE_ALGORITHM);
                let v = v.as_deref().map(str::trim).unwrap_or("auto");
                match AllreduceAlgorithm::ALL.into_iter().find(|a| a.name() == v) {
                    Some(a) => a,
                    None => {
                        let names: Vec<&str> = AllreduceAlgorithm::ALL.iter().map(|a| a.name()).collect();
                        return Err(Error::Config {
                            name: ALLREDUCE_ALGORITHM.name,
                            detail: format!("{} is not one of {}", quoted(v), names.join(", ")),
                        });
                    }
                }
            },
            hierarchical: match text(HIERARCHICAL_ALLREDUCE).as_deref().map(str::trim).unwrap_or("auto") {
                "auto" => Hierarchical::Auto,
                "on" | "1" => Hierarchical::On,
                "off" | "0" => Hierarchical::Off,
                v => {
                    return Err(Error::Config {
                        name: HIERARCHICAL_ALLREDUCE.name,
                        detail: format!("{} is not auto, on or off", quoted(v)),
                    });
                }
            },
            small_allreduce: parse(SMALL_ALLREDUCE, "a byte count")?,
            small_broadcast: parse(SMALL_BROADCAST, "a byte count")?,
            segment: parse(SEGMENT, "a byte count")?.max(4096),
            ring_chunk: parse(RING_CHUNK, "a byte count")?.max(4096),
            broadcast_segment: parse(BROADCAST_SEGMENT, "a byte count")?.max(4096),
            fusion_threshold: parse(FUSION_THRESHOLD, "a byte count")?,
            cache_capacity: parse(CACHE_CAPACITY, "a count")?,
            eager_bytes: parse(EAGER_BYTES, "a byte count")?.min(MAX_EAGER),
            gpu_backend: match text(GPU_BACKEND).as_deref().map(str::trim).unwrap_or("auto") {
                "auto" => GpuBackend::Auto,
                "nccl" => GpuBackend::Nccl,
                "staged" => GpuBackend::Staged,
                v => {
                    return Err(Error::Config {
                        name: GPU_BACKEND.name,
                        detail: format!("{} is not auto, nccl or staged", quoted(v)),
                    });
                }
            },
            staged_piece: parse(STAGED_PIECE, "a byte count")?.max(4096),
        };
        let optional_secs = |k: Knob| -> Result<Option<Duration>> {
            let v = text(k).unwrap_or_else(|| k.default.to_string());
            match v.trim().parse::<f64>() {
                Ok(0.0) => Ok(None),
                Ok(s) if s > 0.0 && s.is_finite() => Ok(Some(Duration::from_secs_f64(s.min(MAX_SECS)))),
                _ => Err(Error::Config {
                    name: k.name,
                    detail: format!("{} is not a number of seconds (0: off)", quoted(&v)),
                }),
            }
        };
        let engine = EngineSettings {
            stall_warning: optional_secs(STALL_WARNING)?,
            stall_timeout: optional_secs(STALL_TIMEOUT)?,
            timeline: text(TIMELINE).map(std::path::PathBuf::from),
        };
        let advertise_addr = match text(ADVERTISE_ADDR) {
            None => None,
            Some(v) => Some(v.trim().parse().map_err(|_| Error::Config {
                name: ADVERTISE_ADDR.name,
                detail: format!("{} is not an IP address", quoted(&v)),
            })?),
        };
        let host_store = match text(HOST_STORE).as_deref().map(str::trim) {
            None | Some("0") | Some("false") => false,
            Some("1") | Some("true") => true,
            Some(v) => {
                return Err(Error::Config { name: HOST_STORE.name, detail: format!("{} is not 0 or 1", quoted(v)) });
            }
        };
        let config = Config {
            rank,
            size,
            rendezvous: text(RENDEZVOUS),
            secret: text(SECRET).map(|s| crate::bootstrap::Secret::new(s.into_bytes())),
            host_store,
            hostname: text(HOSTNAME).map(|h| h.trim().to_string()),
            advertise_addr,
            tuning,
            engine,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks what every way of building a config must satisfy.
    pub fn validate(&self) -> Result<()> {
        if self.size == 0 {
            return Err(Error::Config { name: SIZE.name, detail: "must be at least 1".into() });
        }
        if self.rank >= self.size {
            return Err(Error::Config {
                name: RANK.name,
                detail: format!("rank {} is not below FERROVOD_SIZE={}", self.rank, self.size),
            });
        }
        if self.tuning.hierarchical == Hierarchical::On && self.tuning.transport == TransportChoice::Tcp {
            return Err(Error::Config {
                name: HIERARCHICAL_ALLREDUCE.name,
                detail: "on needs shared memory within each host, which FERROVOD_TRANSPORT=tcp turns off".into(),
            });
        }
        if self.secret.as_ref().is_some_and(|s| s.as_bytes().is_empty()) {
            return Err(Error::Config { name: SECRET.name, detail: "must not be empty".into() });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config> {
        let map: std::collections::HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_make_a_single_rank() {
        let c = cfg(&[]).unwrap();
        assert_eq!((c.rank, c.size), (0, 1));
        assert_eq!(c.tuning.timeout, Duration::from_secs(600));
        assert!(c.secret.is_none());
    }

    #[test]
    fn a_huge_bad_value_is_cut_in_the_message() {
        let huge = "x".repeat(10 << 20);
        let e = cfg(&[("FERROVOD_TIMEOUT", huge.as_str())]).unwrap_err().to_string();
        assert!(e.contains("FERROVOD_TIMEOUT") && e.contains("more bytes cut"), "{}", &e[..300.min(e.len())]);
        assert!(e.len() < 500, "a 10 MB value became a {}-byte message", e.len());
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = cfg(&[("FERROVOD_TIMEOUT", "soon")]).unwrap_err().to_string();
        assert!(e.contains("FERROVOD_TIMEOUT") && e.contains("soon"), "{e}");
        let e = cfg(&[("FERROVOD_RANK", "4"), ("FERROVOD_SIZE", "4")]).unwrap_err().to_string();
        assert!(e.contains("FERROVOD_RANK") && e.contains("rank 4"), "{e}");
        let e = cfg(&[("FERROVOD_ALLREDUCE_ALGORITHM", "bubble")]).unwrap_err().to_string();
        assert!(e.contains("FERROVOD_ALLREDUCE_ALGORITHM") && e.contains("bubble"), "{e}");
        assert_eq!(cfg(&[("FERROVOD_TIMEOUT", "1e30")]).unwrap().tuning.timeout, Duration::from_secs_f64(MAX_SECS));
        let e = cfg(&[("FERROVOD_SIZE", "0")]).unwrap_err().to_string();
        assert!(e.contains("FERROVOD_SIZE"), "{e}");
        let e = cfg(&[("FERROVOD_SPIN_US", "-5")]).unwrap_err().to_string();
        assert!(e.contains("FERROVOD_SPIN_US") && e.contains("-5"), "{e}");
    }

    #[test]
    fn spinning_is_bounded_50_us_by_default_and_off_when_asked() {
        assert_eq!(cfg(&[]).unwrap().tuning.spin, Duration::from_micros(50));
        assert_eq!(Tuning::default().spin, Duration::from_micros(50));
        assert!(cfg(&[("FERROVOD_SPIN_US", "0")]).unwrap().tuning.spin.is_zero());
        assert_eq!(cfg(&[("FERROVOD_SPIN_US", "7")]).unwrap().tuning.spin, Duration::from_micros(7));
        assert_eq!(cfg(&[("FERROVOD_SPIN_US", "99999999")]).unwrap().tuning.spin, Duration::from_millis(10));
    }

    #[test]
    fn the_transport_is_a_choice_and_the_ring_a_power_of_two() {
        assert_eq!(cfg(&[]).unwrap().tuning.transport, TransportChoice::Auto);
        assert_eq!(cfg(&[("FERROVOD_TRANSPORT", "tcp")]).unwrap().tuning.transport, TransportChoice::Tcp);
        assert_eq!(cfg(&[("FERROVOD_TRANSPORT", "shm")]).unwrap().tuning.transport, TransportChoice::Shm);
        let e = cfg(&[("FERROVOD_TRANSPORT", "udp")]).unwrap_err().to_string();
        assert!(e.contains("FERROVOD_TRANSPORT") && e.contains("udp"), "{e}");
        assert_eq!(cfg(&[]).unwrap().tuning.shm_ring, 1 << 20);
        assert_eq!(Tuning::default().shm_ring, 1 << 20);
        for bad in ["3000", "1000000", "2048"] {
            let e = cfg(&[("FERROVOD_SHM_RING", bad)]).unwrap_err().to_string();
            assert!(e.contains("FERROVOD_SHM_RING") && e.contains("power of two"), "{e}");
        }
    }
}
