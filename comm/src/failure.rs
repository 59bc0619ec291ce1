//! A job's failures, agreed through the store: the first-failure record every rank reads
//! (first writer wins), the watcher thread that stops a rank's waits when it appears and
//! answers roll calls, and whom a rank that timed out blames.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::bootstrap::{self, FirstFailure, RollCall, StoreClient};
use crate::error::Fault;
use crate::transport::AbortBell;

/// How long a failing rank waits for the root cause to appear in the store.
const RECORD_WAIT: Duration = Duration::from_secs(2);

/// How long a rank that serves the store keeps it up after a failure, for the other ranks to
/// read the first-failure record (without it they would only see this rank go away).
const RECORD_LINGER: Duration = Duration::from_secs(3);

/// How often a rank working out whom to blame looks whether another rank has recorded the
/// job's failure meanwhile.
const TRACE_SLICE: Duration = Duration::from_millis(50);

/// How long one store wait of the abort watcher lasts: bounds how long its thread outlives
/// the world.
const WATCH_SLICE: Duration = Duration::from_secs(1);

/// A thread that waits, on a store connection of its own, for the job's first failure, and
/// rings the links' abort bell when it appears. Without it, a rank blocked on a silent peer
/// would learn of a failure elsewhere only at its own timeout. It also answers the job's roll
/// calls for its rank (see [`RollCall`]): whatever the rank's other threads are doing, a rank
/// whose watcher answers is alive.
pub(crate) struct AbortWatch {
    stop: Arc<AtomicBool>,
}

impl AbortWatch {
    pub(crate) fn start(
        mut store: StoreClient,
        prefix: &str,
        rank: usize,
        bell: AbortBell,
    ) -> std::io::Result<AbortWatch> {
        let stop = Arc::new(AtomicBool::new(false));
        let (first, roll, quit) = (FirstFailure::new(prefix), RollCall::new(prefix), stop.clone());
        std::thread::Builder::new().name("ferrovod-abort-watch".into()).spawn(move || {
            let mut call = 1;
            while !quit.load(Ordering::Relaxed) {
                let keys = [first.value_key().to_string(), roll.call_key(call)];
                match store.wait_any(&keys, WATCH_SLICE) {
                    Ok(None) => {}
                    // A record that does not decode is a failure all the same.
                    Ok(Some((0, _))) => return bell.ring(),
                    Ok(Some(_)) => {
                        if roll.answer(&mut store, call, rank).is_err() {
                            return;
                        }
                        call += 1;
                    }
                    // The store is gone: the ranks' own links say what happened.
                    Err(_) => return,
                }
            }
        })?;
        Ok(AbortWatch { stop })
    }
}

impl Drop for AbortWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The first failure of a job, as the rank that saw it recorded it for every other rank.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureNote {
    /// The rank that saw it.
    pub by: u64,
    /// Its kind.
    pub fault: Fault,
    /// The ranks it blamed.
    pub culprits: Vec<u64>,
    /// What it saw, in words.
    pub text: String,
}

/// The job-wide record of the first failure, kept in the store (first writer wins), and a
/// count of the ranks that have read it.
pub(crate) struct FailureRecord {
    store: StoreClient,
    first: FirstFailure,
    readers: String,
    /// Prefix of the `stuck/<rank>` keys: whom a rank that timed out was waiting for.
    stuck: String,
    /// Which ranks are alive, asked of their watchers.
    roll: RollCall,
    /// The record this rank read, once it failed.
    seen: Option<FailureNote>,
}

impl FailureRecord {
    pub(crate) fn new(store: StoreClient, prefix: &str) -> FailureRecord {
        FailureRecord {
            store,
            roll: RollCall::new(prefix),
            first: FirstFailure::new(prefix),
            readers: format!("{prefix}/first_failure/read"),
            stuck: format!("{prefix}/stuck"),
            seen: None,
        }
    }

    /// Posts `note` if no rank has posted before, then returns the first post, and counts this
    /// rank among its readers.
    pub(crate) fn report(&mut self, note: &FailureNote) -> Option<FailureNote> {
        let _ = self.first.publish(&mut self.store, note);
        let first: FailureNote = self.first.first(&mut self.store, RECORD_WAIT)?;
        let _ = self.store.add(&self.readers, 1);
        self.seen = Some(first.clone());
        Some(first)
    }

    /// After this rank's wait for `waiting_for` went without progress: the ranks to blame.
    ///
    /// Two questions, asked within `window`. Who is alive: a roll call of the `others`, which
    /// every rank's watcher thread answers whatever its rank is doing; a rank that does not
    /// is dead or stopped ("gone"). Who waits for whom: this rank says whom it waits for
    /// (`stuck/<rank>`), then follows the same records of the ranks it waits for; a rank that
    /// is waiting must not be blamed for the rank it waits on.
    ///
    /// Blamed, the first that applies: the gone ranks this rank reaches through waiting ranks
    /// (direct peers first); any gone rank (one that broke a ring upstream leaves the ranks
    /// between it and this one idle, not waiting); the ranks reached that said nothing (alive,
    /// but busy past the timeout), direct peers first; when every rank reached is waiting (a
    /// cycle: they wait on each other, as when ranks disagree on what comes next), the direct
    /// peers.
    pub(crate) fn trace_silent(
        &mut self,
        rank: usize,
        waiting_for: &[usize],
        others: &[usize],
        window: Duration,
    ) -> Vec<usize> {
        // A quarter of the window is left for reporting the failure and for a loaded host (the
        // chaos runs measured 0.16 s of slack at an eighth, too little to count on).
        let deadline = Instant::now() + window - window / 4;
        let mine: Vec<u64> = waiting_for.iter().map(|&r| r as u64).collect();
        let Ok(bytes) = postcard::to_stdvec(&mine) else { return waiting_for.to_vec() };
        if self.store.set(&self.stuck_key(rank), &bytes).is_err() {
            return waiting_for.to_vec();
        }
        let gone = self.gone(others, deadline);
        let waits = self.follow_waits(rank, waiting_for, deadline);
        blame(rank, &waits, &gone)
    }

    /// The ranks of `others` that do not answer a roll call by `deadline`: dead or stopped.
    /// None when the store fails, or when another rank records the job's failure meanwhile.
    pub(crate) fn gone(&mut self, others: &[usize], deadline: Instant) -> Vec<usize> {
        let Ok(keys) = self.roll.call(&mut self.store, others) else { return Vec::new() };
        match self.wait_unless_failed(&keys, deadline) {
            Ok(Err(missing)) if !self.failed() => {
                others.iter().zip(&keys).filter(|(_, k)| missing.contains(k)).map(|(&r, _)| r).collect()
            }
            _ => Vec::new(),
        }
    }

    /// Whether a rank has recorded the job's first failure.
    fn failed(&mut self) -> bool {
        matches!(self.store.get(self.first.value_key()), Ok(Some(_)))
    }

    /// Waits for every key as `StoreClient::wait` does, until `deadline`, but gives up early
    /// (as on a timeout) once the job's first failure is recorded: what this rank would blame
    /// no longer matters then, and the sooner it reads that record, the sooner it fails.
    fn wait_unless_failed(
        &mut self,
        keys: &[String],
        deadline: Instant,
    ) -> Result<Result<Vec<Vec<u8>>, Vec<String>>, bootstrap::Error> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.store.wait(keys, left.min(TRACE_SLICE))? {
                Ok(values) => return Ok(Ok(values)),
                Err(missing) if left <= TRACE_SLICE || self.failed() => return Ok(Err(missing)),
                Err(_) => {}
            }
        }
    }

    /// The key of `rank`'s record of whom it waits for.
    fn stuck_key(&self, rank: usize) -> String {
        format!("{}/{rank}", self.stuck)
    }

    /// Who waits for whom, from this rank's wait for `waiting_for` on: the `stuck/<rank>`
    /// records of the ranks reached, waiting until `deadline` for those not yet written.
    fn follow_waits(&mut self, rank: usize, waiting_for: &[usize], deadline: Instant) -> BTreeMap<usize, Vec<usize>> {
        let mut waits: BTreeMap<usize, Vec<usize>> = BTreeMap::from([(rank, waiting_for.to_vec())]);
        let decode = |v: &[u8]| -> Option<Vec<usize>> {
            let ranks: Vec<u64> = postcard::from_bytes(v).ok()?;
            Some(ranks.into_iter().map(|r| r as usize).collect())
        };
        loop {
            let silent = silent_ranks(rank, &waits);
            if silent.is_empty() {
                return waits;
            }
            let keys: Vec<String> = silent.iter().map(|&r| self.stuck_key(r)).collect();
            match self.wait_unless_failed(&keys, deadline) {
                Ok(Ok(values)) => {
                    for (&r, v) in silent.iter().zip(&values) {
                        waits.insert(r, decode(v).unwrap_or_default());
                    }
                }
                // Those that spoke in time count; the rest are silent.
                Ok(Err(missing)) => {
                    for (&r, k) in silent.iter().zip(&keys).filter(|(_, k)| !missing.contains(k)) {
                        if let Ok(Some(v)) = self.store.get(k) {
                            waits.insert(r, decode(&v).unwrap_or_default());
                        }
                    }
                    return waits;
                }
                Err(_) => return waits,
            }
        }
    }

    /// On the rank that serves the store, after a failure: waits until every rank that is not
    /// blamed for it has read the record, or [`RECORD_LINGER`] passes.
    pub(crate) fn linger(&mut self, size: usize) {
        let Some(seen) = &self.seen else { return };
        let readers = size.saturating_sub(seen.culprits.len()) as i64;
        let deadline = std::time::Instant::now() + RECORD_LINGER;
        while std::time::Instant::now() < deadline {
            match self.store.add(&self.readers, 0) {
                Ok(n) if n < readers => std::thread::sleep(Duration::from_millis(20)),
                _ => return,
            }
        }
    }
}

/// The ranks reachable from `from` through `waits` (who waits for whom) that are not
/// themselves waiting: the silent ones.
fn silent_ranks(from: usize, waits: &BTreeMap<usize, Vec<usize>>) -> Vec<usize> {
    let mut seen = BTreeSet::from([from]);
    let mut todo = vec![from];
    let mut silent = BTreeSet::new();
    while let Some(r) = todo.pop() {
        match waits.get(&r) {
            None => {
                silent.insert(r);
            }
            Some(next) => todo.extend(next.iter().filter(|&&p| seen.insert(p))),
        }
    }
    silent.into_iter().collect()
}

/// Whom to blame once the time to ask is up (see `FailureRecord::trace_silent`): `waits` says
/// who waits for whom, `gone` which ranks missed the roll call.
fn blame(from: usize, waits: &BTreeMap<usize, Vec<usize>>, gone: &[usize]) -> Vec<usize> {
    let direct = &waits[&from];
    let reached = reached(from, waits);
    let gone_direct: Vec<usize> = direct.iter().copied().filter(|r| gone.contains(r)).collect();
    if !gone_direct.is_empty() {
        return gone_direct;
    }
    let gone_reached: Vec<usize> = reached.iter().copied().filter(|r| gone.contains(r)).collect();
    if !gone_reached.is_empty() {
        return gone_reached;
    }
    if !gone.is_empty() {
        return gone.to_vec();
    }
    // Everyone is alive. A silent rank further along may only be late to say that it waits
    // too (its own wait began later): the direct peers that said nothing come first.
    let silent = silent_ranks(from, waits);
    let silent_direct: Vec<usize> = direct.iter().copied().filter(|r| silent.contains(r)).collect();
    match (silent_direct.is_empty(), silent.is_empty()) {
        (false, _) => silent_direct,
        (true, false) => silent,
        (true, true) => direct.clone(),
    }
}

/// Every rank reachable from `from` through `waits`, `from` itself left out.
fn reached(from: usize, waits: &BTreeMap<usize, Vec<usize>>) -> BTreeSet<usize> {
    let mut seen = BTreeSet::from([from]);
    let mut todo = vec![from];
    while let Some(r) = todo.pop() {
        if let Some(next) = waits.get(&r) {
            todo.extend(next.iter().filter(|&&p| seen.insert(p)));
        }
    }
    seen.remove(&from);
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waits(edges: &[(usize, &[usize])]) -> BTreeMap<usize, Vec<usize>> {
        edges.iter().map(|(r, w)| (*r, w.to_vec())).collect()
    }

    #[test]
    fn a_stopped_rank_that_broke_the_ring_upstream_is_blamed_not_the_idle_peer() {
        // Rank 2 waits for rank 1 in a ring round that stopped rank 3 never passed on: rank 1
        // is idle (no record) but answered the roll call; rank 3 did not.
        assert_eq!(blame(2, &waits(&[(2, &[1])]), &[3]), vec![3]);
    }

    #[test]
    fn gone_ranks_reached_through_waiting_ranks_come_before_others() {
        let w = waits(&[(0, &[1]), (1, &[2])]);
        assert_eq!(blame(0, &w, &[2, 3]), vec![2]);
        assert_eq!(blame(0, &waits(&[(0, &[1, 2])]), &[2, 3]), vec![2]);
    }

    #[test]
    fn with_everyone_alive_the_silent_rank_along_the_chain_is_blamed() {
        // 0 waits for 1, which waits for 2, which is busy (alive, no record).
        assert_eq!(blame(0, &waits(&[(0, &[1]), (1, &[2])]), &[]), vec![2]);
        // A direct peer that said nothing comes first.
        assert_eq!(blame(0, &waits(&[(0, &[1, 3]), (1, &[2])]), &[]), vec![3]);
        // A cycle: the direct peers.
        assert_eq!(blame(0, &waits(&[(0, &[1]), (1, &[0])]), &[]), vec![1]);
    }
}
