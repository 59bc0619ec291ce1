//! Joining a job, apart from running collectives: the [`World`] is what a rank knows about the
//! job (its rank, the topology, the agreed tuning, the store and the job's first-failure
//! record); the [`Links`] are its transports to every peer.
//!
//! Joining, in order:
//! 1. Rank 0 serves the store if asked (`FERROVOD_HOST_STORE`); every rank connects to it.
//! 2. Every transport of [`endpoints`] binds and yields an opaque address.
//! 3. Rendezvous: every rank publishes its host identity, pid, addresses and the knobs that
//!    must agree, and reads everyone else's.
//! 4. Tuning is checked to agree; the ranks take shared memory if every one of them is on this
//!    host and can hand its segment to the others ([`connect_shm`], decided through the store),
//!    and TCP otherwise.
//! 5. In a job that spans hosts, each host's ranks also set up shared memory among themselves
//!    for the hierarchical allreduce ([`local_group`]), unless turned off.
//!
//! A new network transport registers in [`endpoints`]; backends register in
//! [`crate::backend::registry`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::bootstrap::{self, PeerInfo, StoreClient, StoreServer, Topology, exchange_peers};
use crate::config::{self, Config, Hierarchical, Knob, TransportChoice, Tuning};
use crate::error::{Error, Operation, Result};
use crate::failure::{AbortWatch, FailureNote, FailureRecord};
use crate::os::Doorbell;
use crate::transport::mem::MemTransport;
use crate::transport::shm::ShmEndpoint;
use crate::transport::tcp::TcpEndpoint;
use crate::transport::{AbortBell, Endpoint, Transport};

/// Per rendezvous address and rank, the worlds this process joined (so that a rank joining
/// again uses fresh store keys) and the generation of the last one (its process sets' keys live
/// under it). Kept per rank, not per process: ranks that are threads of one process (tests) then
/// count alike, as ranks in processes of their own do.
static GENERATIONS: Mutex<BTreeMap<(String, usize), (u32, u32)>> = Mutex::new(BTreeMap::new());

/// The key of `config`'s rank in [`GENERATIONS`].
fn joiner(config: &Config) -> (String, usize) {
    (config.rendezvous.clone().unwrap_or_default(), config.rank)
}

/// The transports of a communicator, lent to backends for one request at a time.
pub struct Links {
    /// Every peer, for host memory: shared memory when the whole world is on one host, TCP
    /// otherwise.
    pub host: Box<dyn Transport>,
    /// In a job that spans hosts, this host's ranks sharing memory (see [`LocalGroup`]).
    pub local: Option<LocalGroup>,
}

impl Links {
    /// Closes every link so that peers waiting on this rank fail at once.
    pub fn close(&mut self) {
        self.host.close();
        if let Some(local) = &mut self.local {
            local.transport.close();
        }
    }
}

/// This host's ranks, sharing memory, in a job that spans hosts with the same number of ranks
/// each: the hierarchical allreduce runs its steps within a host over `transport` and its step
/// between hosts over the job's links among `cross`.
pub struct LocalGroup {
    /// Shared memory among this host's ranks; its rank i is the job's rank `ranks[i]`.
    pub transport: Box<dyn Transport>,
    /// The job's ranks on this host, in order.
    pub ranks: Vec<usize>,
    /// The job's ranks with this rank's local rank, one per host, in order.
    pub cross: Vec<usize>,
}

/// What a rank knows about its job.
pub struct World {
    rank: usize,
    size: usize,
    topology: Topology,
    tuning: Tuning,
    record: Option<FailureRecord>,
    /// Rung by `_watch`; the links and the NCCL backend watch it.
    abort: Option<AbortBell>,
    /// Rings this rank's links when another rank records the job's first failure.
    _watch: Option<AbortWatch>,
    // Last: a communicator drops its links before its world, so peers see closed links
    // before a dead store.
    _store: Option<StoreServer>,
}

/// The first knob on which `peer`'s published tuning (`theirs`) differs from this rank's
/// (`agreed`), by name: a value that differs, a knob it does not publish, or one this rank does
/// not know (a peer of another version). The knob's name, and what differs.
fn disagreement(
    agreed: &[(&'static str, String)],
    theirs: &[(String, String)],
    peer: usize,
    rank: usize,
) -> Option<(&'static str, String)> {
    for (name, mine) in agreed {
        match theirs.iter().find(|(k, _)| k == name) {
            Some((_, t)) if t == mine => {}
            Some((_, t)) => {
                let detail = format!("rank {peer} has {t}, rank {rank} has {mine}: every rank must use the same value");
                return Some((name, detail));
            }
            None => return Some((name, format!("rank {peer} does not publish it (another ferrovod version?)"))),
        }
    }
    let unknown = theirs.iter().find(|(k, _)| !agreed.iter().any(|(n, _)| n == k))?;
    let detail = format!(
        "rank {peer} publishes {}, which rank {rank} does not know (another ferrovod version?)",
        crate::error::quoted(&unknown.0)
    );
    Some(("the settings every rank must agree on", detail))
}

/// The transports this rank offers, each bound and with its address: the one place a
/// transport registers.
fn endpoints(ip: IpAddr, tuning: &Tuning) -> std::result::Result<Vec<Box<dyn Endpoint>>, bootstrap::Error> {
    Ok(vec![Box::new(TcpEndpoint::bind(ip, tuning)?)])
}

/// How often a rank waiting for the others' shared-memory verdicts looks for dead peers.
const GONE_CHECK: Duration = Duration::from_millis(100);

/// The name of the shared-memory address in a rendezvous record.
const SHM: &str = "shm";

/// This rank's shared-memory segment and socket, unless TCP was chosen. Under `auto` a host
/// that cannot create them publishes no address (and the job uses TCP); under `shm` it fails.
fn shm_endpoint(size: usize, tuning: &Tuning) -> std::result::Result<Option<ShmEndpoint>, bootstrap::Error> {
    match (tuning.transport, ShmEndpoint::bind(size, tuning)) {
        (TransportChoice::Tcp, _) => Ok(None),
        (_, Ok(e)) => Ok(Some(e)),
        (TransportChoice::Auto, Err(_)) => Ok(None),
        (TransportChoice::Shm, Err(source)) => {
            Err(bootstrap::Error::Io { what: "creating the shared-memory segment".into(), source: source.into() })
        }
    }
}

/// Every rank's address for transport `name`, in rank order.
fn published<'a>(peers: &'a [PeerInfo], name: &str) -> std::result::Result<Vec<&'a [u8]>, bootstrap::Error> {
    peers
        .iter()
        .enumerate()
        .map(|(r, p)| {
            p.addresses
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, a)| a.as_slice())
                .ok_or_else(|| bootstrap::Error::World(format!("rank {r} published no {name} address")))
        })
        .collect()
}

/// Shared memory among `peers` (the job's ranks, or one host's), when possible: every rank
/// on this host, every rank with a segment, and every rank able to hand its segment to every
/// other (asked through the store, so that all ranks take the same decision). `None`: it
/// cannot be had. When the knob `forced` demands it, each way of not getting it is an error
/// that says why.
#[allow(clippy::too_many_arguments)]
fn connect_shm(
    shm: Option<ShmEndpoint>,
    rank: usize,
    peers: &[PeerInfo],
    forced: Option<Knob>,
    tuning: &Tuning,
    store: &mut StoreClient,
    prefix: &str,
    gone: &crate::transport::Gone<'_>,
) -> Result<Option<Box<dyn Transport>>> {
    let refuse = |why: String| -> Result<Option<Box<dyn Transport>>> {
        match forced {
            Some(knob) => Err(Error::Config { name: knob.name, detail: format!("shared memory: {why}") }),
            None => Ok(None),
        }
    };
    let Some(shm) = shm else { return Ok(None) };
    let me = &peers[rank];
    if let Some((r, p)) = peers
        .iter()
        .enumerate()
        .find(|(_, p)| p.hostname != me.hostname || p.boot_id != me.boot_id || p.boot_id.is_empty())
    {
        return refuse(format!("rank {r} runs on host {} and rank {rank} on {}", p.hostname, me.hostname));
    }
    // Peers are named and watched by pid (the segment's sender, a dead peer's pidfd).
    if let Some((r, _)) = peers.iter().enumerate().find(|&(r, p)| r != rank && !sees_pid(p, me)) {
        return refuse(format!("rank {r} runs in another pid namespace than rank {rank}"));
    }
    let Ok(addresses) = published(peers, SHM) else {
        let r = peers.iter().position(|p| !p.addresses.iter().any(|(n, _)| n == SHM)).unwrap_or(0);
        return refuse(format!("rank {r} could not create a shared-memory segment"));
    };
    let boot = |cause| Error::Bootstrap { rank, cause };
    let pids: Vec<u32> = peers.iter().map(|p| p.pid).collect();
    let verdict = shm.offer(rank, &addresses, &pids).err().unwrap_or_default();
    store.set(&format!("{prefix}/shm/{rank}"), verdict.as_bytes()).map_err(boot)?;
    let verdicts =
        wait_all(store, &format!("{prefix}/shm"), peers.len(), rank, tuning, gone, "setting up shared memory")?;
    if let Some(why) = verdicts.iter().find(|v| !v.is_empty()) {
        return refuse(String::from_utf8_lossy(why).into_owned());
    }
    Ok(Some(Box::new(shm.accept(rank, &addresses, &pids).map_err(boot)?)))
}

/// Every rank's value under `{key}/{rank}` (ranks 0..n), once all are set. Waits in slices, so
/// that a rank that died meanwhile (`gone`) fails the others at once, naming it and what it was
/// `doing` (a gerund: "setting up shared memory"); at most the connect timeout.
fn wait_all(
    store: &mut StoreClient,
    key: &str,
    n: usize,
    rank: usize,
    tuning: &Tuning,
    gone: &crate::transport::Gone<'_>,
    doing: &str,
) -> Result<Vec<Vec<u8>>> {
    let boot = |cause| Error::Bootstrap { rank, cause };
    let keys: Vec<String> = (0..n).map(|r| format!("{key}/{r}")).collect();
    let deadline = std::time::Instant::now() + tuning.connect_timeout;
    loop {
        let missing = match store.wait(&keys, GONE_CHECK).map_err(boot)? {
            Ok(v) => return Ok(v),
            Err(missing) => missing,
        };
        let ranks: Vec<usize> = missing.iter().filter_map(|k| k.rsplit('/').next()?.parse().ok()).collect();
        if let Some(why) = ranks.iter().find_map(|&r| gone(r).map(|why| format!("rank {r} {why}"))) {
            return Err(boot(bootstrap::Error::World(format!("{why} before {doing}"))));
        }
        if std::time::Instant::now() >= deadline {
            let what = format!("waiting for ranks {ranks:?}, {doing}");
            return Err(boot(bootstrap::Error::Timeout { what, waited: tuning.connect_timeout }));
        }
    }
}

/// Shared memory among this host's ranks, for the hierarchical allreduce: when the job spans
/// hosts with the same number (at least 2) of ranks each and neither
/// `FERROVOD_HIERARCHICAL_ALLREDUCE` nor `FERROVOD_TRANSPORT` rules it out. A second, small
/// rendezvous among the host's ranks (under the host's own keys) sets up the memory; then every
/// rank of the job says whether its host has it, and the job takes the hierarchical path only
/// if every host does, since every rank must run the same algorithm.
#[allow(clippy::too_many_arguments)]
fn local_group(
    rank: usize,
    topology: &Topology,
    me: &PeerInfo,
    tuning: &Tuning,
    store: &mut StoreClient,
    prefix: &str,
    gone: &crate::transport::Gone<'_>,
) -> Result<Option<LocalGroup>> {
    let spans_hosts = topology.homogeneous && topology.local_size >= 2 && topology.cross_size >= 2;
    if tuning.hierarchical == Hierarchical::Off || !spans_hosts {
        return Ok(None);
    }
    let forced = (tuning.hierarchical == Hierarchical::On).then_some(config::HIERARCHICAL_ALLREDUCE);
    // `on` with TCP only is refused before rendezvous (`Config::validate`).
    if tuning.transport == TransportChoice::Tcp {
        return Ok(None);
    }
    let boot = |cause| Error::Bootstrap { rank, cause };
    let (local_rank, ranks) = (topology.local_rank, &topology.local_ranks);
    let shm = match (ShmEndpoint::bind(ranks.len(), tuning), forced) {
        (Ok(e), _) => Some(e),
        (Err(_), None) => None,
        (Err(source), Some(_)) => {
            let what = "creating the shared-memory segment of this host's ranks".into();
            return Err(boot(bootstrap::Error::Io { what, source: source.into() }));
        }
    };
    let host_prefix = format!("{prefix}/host{}", ranks[0]);
    let mine = PeerInfo { addresses: shm.iter().map(|s| (SHM.to_string(), s.address())).collect(), ..me.clone() };
    let local_peers =
        exchange_peers(store, &host_prefix, local_rank, ranks.len(), &mine, tuning.connect_timeout).map_err(boot)?;
    let local_gone = |i: usize| gone(ranks[i]);
    let transport = connect_shm(shm, local_rank, &local_peers, forced, tuning, store, &host_prefix, &local_gone)?;
    let has = if transport.is_some() { "1" } else { "0" };
    store.set(&format!("{prefix}/hierarchical/{rank}"), has.as_bytes()).map_err(boot)?;
    let n = topology.local_size * topology.cross_size;
    let all = wait_all(
        store,
        &format!("{prefix}/hierarchical"),
        n,
        rank,
        tuning,
        gone,
        "setting up its host's shared memory",
    )?;
    Ok(transport.filter(|_| all.iter().all(|v| v == b"1")).map(|transport| LocalGroup {
        transport,
        ranks: ranks.clone(),
        cross: topology.cross_ranks.clone(),
    }))
}

/// Whether `me` can see `peer`'s process by its pid: same host, same pid namespace (or both
/// unknown, on a kernel without pid namespaces).
fn sees_pid(peer: &PeerInfo, me: &PeerInfo) -> bool {
    peer.hostname == me.hostname && peer.boot_id == me.boot_id && !peer.boot_id.is_empty() && peer.pid_ns == me.pid_ns
}

/// Why `peer` can no longer connect, as far as `me` can see: a peer on this host whose
/// process is gone. (A peer on another host, or in another pid namespace, is only noticed by
/// its silence.)
fn peer_gone(peer: &PeerInfo, me: &PeerInfo) -> Option<String> {
    if !sees_pid(peer, me) {
        return None;
    }
    (!crate::os::process_exists(peer.pid)).then(|| format!("(pid {}, this host) exited", peer.pid))
}

/// FNV-1a over the ranks: the same value in every process, whatever its build.
fn fnv1a(ranks: &[usize]) -> u64 {
    ranks
        .iter()
        .flat_map(|r| (*r as u64).to_le_bytes())
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

impl World {
    /// Joins the job `config` describes.
    pub fn join(config: &Config) -> Result<(World, Links)> {
        config.validate()?;
        let generation = {
            let mut all = GENERATIONS.lock().unwrap_or_else(|p| p.into_inner());
            let (next, current) = all.entry(joiner(config)).or_insert((0, 0));
            *current = *next;
            *next += 1;
            *current
        };
        World::join_at(config, &format!("ferrovod/comm{generation}"))
    }

    /// Joins process set `id` of the job `config` describes: the ranks `members` (global ranks,
    /// ascending, this one among them) as a world of their own, this rank being its position in
    /// `members`. Every member calls it with the same `id` and `members` (after the job's world
    /// was joined: the keys live in its store, under its generation); the others do not.
    pub fn join_set(config: &Config, id: u32, members: &[usize]) -> Result<(World, Links)> {
        config.validate()?;
        let refuse =
            |detail: String| Error::InvalidArgument { rank: config.rank, op: Operation::ProcessSet(id), detail };
        if id == 0 {
            return Err(refuse("id 0 is the whole job's".into()));
        }
        if let Some(w) = members.windows(2).find(|w| w[0] >= w[1]) {
            return Err(refuse(format!("ranks must be ascending and distinct ({} then {})", w[0], w[1])));
        }
        if let Some(r) = members.iter().find(|&&r| r >= config.size) {
            return Err(refuse(format!("rank {r} is not a rank of this job of {}", config.size)));
        }
        let position = members
            .iter()
            .position(|&r| r == config.rank)
            .ok_or_else(|| refuse(format!("this rank is not one of its ranks {members:?}")))?;
        let sub = Config { rank: position, size: members.len(), host_store: false, ..config.clone() };
        // The ranks are in the keys: members that disagree on them wait for each other in vain
        // and time out naming who is missing, rather than join one world.
        let generation = GENERATIONS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&joiner(config))
            .map_or(0, |&(_, current)| current);
        World::join_at(&sub, &format!("ferrovod/comm{generation}/set{id}-{:016x}", fnv1a(members)))
    }

    /// Joins the world `config` describes, its keys under `prefix` in the store.
    fn join_at(config: &Config, prefix: &str) -> Result<(World, Links)> {
        let rank = config.rank;
        if config.size == 1 {
            let [t] = <[MemTransport; 1]>::try_from(MemTransport::world(1, config.tuning.timeout))
                .unwrap_or_else(|_| unreachable!("world(1) has one rank"));
            let (mut world, links) = World::local(Box::new(t), config.tuning.clone());
            world.topology = Topology::single();
            return Ok((world, links));
        }
        let missing = |k: config::Knob| Error::Config {
            name: k.name,
            detail: format!("required when FERROVOD_SIZE={} > 1", config.size),
        };
        let addr = config.rendezvous.clone().ok_or_else(|| missing(config::RENDEZVOUS))?;
        let secret = config.secret.clone().ok_or_else(|| missing(config::SECRET))?;
        let boot = |cause| Error::Bootstrap { rank, cause };
        let tuning = &config.tuning;

        let store_server = if config.host_store && rank == 0 {
            Some(StoreServer::bind(addr.as_str(), secret.clone()).map_err(boot)?)
        } else {
            None
        };
        let mut store = StoreClient::connect(&addr, &secret, tuning.connect_timeout).map_err(boot)?;
        // Peers reach this rank the way it reaches the store, unless told otherwise.
        let ip = match config.advertise_addr {
            Some(ip) => ip,
            None => store.local_addr().map_err(boot)?.ip(),
        };
        // The links time out early, leaving the rest of the timeout to find whom to blame.
        let links = tuning.for_links();
        let endpoints = endpoints(ip, &links).map_err(boot)?;
        let shm = shm_endpoint(config.size, &links).map_err(boot)?;
        let agreed = tuning.agreed();
        let mut addresses: Vec<(String, Vec<u8>)> =
            endpoints.iter().map(|e| (e.name().to_string(), e.address())).collect();
        addresses.extend(shm.as_ref().map(|s| (SHM.to_string(), s.address())));
        let me = PeerInfo {
            hostname: config.hostname.clone().unwrap_or_else(crate::os::hostname),
            boot_id: crate::os::boot_id(),
            addresses,
            pid: std::process::id(),
            pid_ns: crate::os::pid_namespace(),
            tuning: agreed.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        };
        let peers = exchange_peers(&mut store, prefix, rank, config.size, &me, tuning.connect_timeout).map_err(boot)?;
        for (peer, info) in peers.iter().enumerate() {
            if let Some((name, detail)) = disagreement(&agreed, &info.tuning, peer, rank) {
                return Err(Error::Config { name, detail });
            }
        }
        let gone = |peer: usize| peer_gone(&peers[peer], &me);
        let forced = (tuning.transport == TransportChoice::Shm).then_some(config::TRANSPORT);
        let topology = Topology::compute(&peers, rank);
        let (mut host, mut local) = match connect_shm(shm, rank, &peers, forced, &links, &mut store, prefix, &gone)? {
            Some(t) => (t, None),
            None => {
                let mut host = None;
                for endpoint in endpoints {
                    let addresses = published(&peers, endpoint.name()).map_err(boot)?;
                    host = Some(endpoint.connect(rank, &addresses, &secret, &gone).map_err(boot)?);
                }
                let host = host.ok_or_else(|| boot(bootstrap::Error::World("no transport for host memory".into())))?;
                (host, local_group(rank, &topology, &me, &links, &mut store, prefix, &gone)?)
            }
        };
        let bell: AbortBell = Arc::new(
            Doorbell::new()
                .map_err(|source| boot(bootstrap::Error::Io { what: "abort bell".into(), source: source.into() }))?,
        );
        host.watch_abort(bell.clone());
        if let Some(local) = &mut local {
            local.transport.watch_abort(bell.clone());
        }
        let watcher = StoreClient::connect(&addr, &secret, tuning.connect_timeout).map_err(boot)?;
        let watch = AbortWatch::start(watcher, prefix, rank, bell.clone()).map_err(|source| {
            boot(bootstrap::Error::Io { what: "starting the abort watcher".into(), source: source.into() })
        })?;
        let world = World {
            rank,
            size: config.size,
            topology,
            tuning: tuning.clone(),
            record: Some(FailureRecord::new(store, prefix)),
            abort: Some(bell),
            _watch: Some(watch),
            _store: store_server,
        };
        Ok((world, Links { host, local }))
    }

    /// A world over an existing transport, all ranks on one host, no store.
    pub fn local(transport: Box<dyn Transport>, tuning: Tuning) -> (World, Links) {
        let (rank, size) = (transport.rank(), transport.size());
        let topology = Topology {
            local_rank: rank,
            local_size: size,
            cross_rank: 0,
            cross_size: 1,
            local_ranks: (0..size).collect(),
            cross_ranks: vec![rank],
            homogeneous: true,
        };
        let world = World { rank, size, topology, tuning, record: None, abort: None, _watch: None, _store: None };
        (world, Links { host: transport, local: None })
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The placement of every rank.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The tuning every rank agreed on.
    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }

    /// The bell rung when the job's first failure is on record, for waits outside the links
    /// (NCCL's); `None` in a world without a store.
    pub fn abort_bell(&self) -> Option<AbortBell> {
        self.abort.clone()
    }

    /// Records `note` as the job's first failure unless a rank did first; returns the first
    /// (`None` without a store, or when it cannot be read in time).
    pub(crate) fn report_failure(&mut self, note: &FailureNote) -> Option<FailureNote> {
        self.record.as_mut()?.report(note)
    }

    /// Whether failures are recorded for every rank (the world has a store).
    pub(crate) fn records_failures(&self) -> bool {
        self.record.is_some()
    }

    /// The other ranks that are dead or stopped: those that do not answer a roll call within
    /// the blame window (see [`RollCall`]). Without a store, none.
    pub(crate) fn gone_others(&mut self) -> Vec<usize> {
        let (rank, window) = (self.rank, self.tuning.blame_window());
        let others: Vec<usize> = (0..self.size).filter(|&r| r != rank).collect();
        match &mut self.record {
            Some(record) => record.gone(&others, std::time::Instant::now() + window),
            None => Vec::new(),
        }
    }

    /// The ranks to blame after this rank waited for `waiting_for` without progress: the dead
    /// or stopped ones first, then those it reaches through ranks that are themselves waiting
    /// and that said nothing (see `FailureRecord::trace_silent`). Without a store,
    /// `waiting_for` itself.
    pub(crate) fn trace_silent(&mut self, waiting_for: &[usize]) -> Vec<usize> {
        let (rank, window) = (self.rank, self.tuning.blame_window());
        match &mut self.record {
            Some(record) => {
                let others: Vec<usize> = (0..self.size).filter(|&r| r != rank).collect();
                record.trace_silent(rank, waiting_for, &others, window)
            }
            None => waiting_for.to_vec(),
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // A store that goes away with this rank would leave the others naming this rank as the
        // cause of a failure it only reported.
        if self._store.is_some()
            && let Some(record) = &mut self.record
        {
            record.linger(self.size);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::disagreement;

    fn theirs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn tunings_are_compared_by_name_and_a_missing_or_unknown_knob_disagrees() {
        let mine = vec![("FERROVOD_A", "1".to_string()), ("FERROVOD_B", "2".to_string())];
        assert_eq!(disagreement(&mine, &theirs(&[("FERROVOD_B", "2"), ("FERROVOD_A", "1")]), 1, 0), None);
        let (name, detail) = disagreement(&mine, &theirs(&[("FERROVOD_A", "1"), ("FERROVOD_B", "3")]), 1, 0).unwrap();
        assert_eq!(name, "FERROVOD_B");
        assert!(detail.contains("rank 1 has 3, rank 0 has 2"), "{detail}");
        // A peer that publishes fewer knobs used to pass (the lists were zipped).
        let (name, detail) = disagreement(&mine, &theirs(&[("FERROVOD_A", "1")]), 2, 0).unwrap();
        assert_eq!(name, "FERROVOD_B");
        assert!(detail.contains("rank 2 does not publish it"), "{detail}");
        let extra = theirs(&[("FERROVOD_A", "1"), ("FERROVOD_B", "2"), ("FERROVOD_C", "9")]);
        let (_, detail) = disagreement(&mine, &extra, 3, 0).unwrap();
        assert!(detail.contains("\"FERROVOD_C\"") && detail.contains("rank 3"), "{detail}");
    }
}
