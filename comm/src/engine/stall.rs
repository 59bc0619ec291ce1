//! Stall watch: tensors that some ranks submitted and others did not, for how long.
//!
//! Every rank keeps the same list (it follows from the rounds' agreements), and rank 0 acts on
//! it: past `FERROVOD_STALL_WARNING` it logs the tensors with the ranks they wait for; past
//! `FERROVOD_STALL_TIMEOUT` it returns a verdict that every rank then fails with. The engine
//! records it as the job's failure in the store, whose watchers stop every rank at once; only
//! a world without a store sends it in a round, which needs every rank, the stalled ones too.
//! Should rank 0 be the rank that stalls (hung, stopped), no verdict comes: the other ranks
//! then act themselves, [`BACKSTOP`] later, through the job's failure record.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::negotiate::Agreement;
use crate::config::EngineSettings;

/// How long an idle engine sleeps between looks at its stall clocks (when it has none).
const IDLE: Duration = Duration::from_secs(3600);

/// How long past the stall timeout the other ranks wait for rank 0's verdict before they act
/// on their own clocks. A live rank 0 records it at once, or after its roll call's window when
/// a rank is dead or stopped; the others' backstop may then come first, blaming the same ranks.
pub(crate) const BACKSTOP: Duration = Duration::from_secs(1);

/// Rank 0's decision that tensors stalled: what waited how long for whom, and those ranks.
pub(crate) struct Verdict {
    pub(crate) detail: String,
    pub(crate) culprits: Vec<usize>,
}

/// A tensor waiting for other ranks.
struct Wait {
    since: Instant,
    missing: Vec<usize>,
    warned: bool,
}

/// The stall clocks of one rank.
pub(crate) struct Stalls {
    rank: usize,
    waits: HashMap<String, Wait>,
    warning: Option<Duration>,
    timeout: Option<Duration>,
}

impl Stalls {
    pub(crate) fn new(rank: usize, settings: &EngineSettings) -> Stalls {
        Stalls { rank, waits: HashMap::new(), warning: settings.stall_warning, timeout: settings.stall_timeout }
    }

    /// Takes a round's list of waiting tensors: new ones start their clocks.
    pub(crate) fn track(&mut self, agreement: &Agreement) {
        let now = Instant::now();
        let mut waits = HashMap::with_capacity(agreement.waiting.len());
        for (name, missing) in &agreement.waiting {
            let old = self.waits.remove(name);
            let (since, warned) = old.map_or((now, false), |w| (w.since, w.warned));
            waits.insert(name.clone(), Wait { since, missing: missing.clone(), warned });
        }
        self.waits = waits;
    }

    /// How long the engine may sleep before a stall clock runs out (on ranks other than 0,
    /// the backstop's).
    pub(crate) fn next_check(&self) -> Duration {
        let now = Instant::now();
        if self.rank != 0 {
            let due = self.timeout.and_then(|d| self.waits.values().map(|w| w.since + d + BACKSTOP).min());
            return due.map_or(IDLE, |t| t.saturating_duration_since(now) + Duration::from_millis(1));
        }
        let due = |w: &Wait| {
            let warn = self.warning.filter(|_| !w.warned).map(|d| w.since + d);
            let fail = self.timeout.map(|d| w.since + d);
            warn.into_iter().chain(fail).min()
        };
        self.waits
            .values()
            .filter_map(due)
            .min()
            .map_or(IDLE, |t| t.saturating_duration_since(now) + Duration::from_millis(1))
    }

    /// Ranks other than 0: tensors waiting past the stall timeout and the [`BACKSTOP`] (rank 0
    /// sent no verdict, so it may be what stalls): what waited how long. The ranks the list
    /// says are missing are those of the last round that completed, which a stopped rank ends:
    /// ranks that announced since are listed too, so the caller asks who is silent instead.
    pub(crate) fn backstop(&self) -> Option<String> {
        let limit = self.timeout? + BACKSTOP;
        if self.rank == 0 {
            return None;
        }
        let now = Instant::now();
        let mut over: Vec<(&String, &Wait)> =
            self.waits.iter().filter(|(_, w)| now.duration_since(w.since) >= limit).collect();
        if over.is_empty() {
            return None;
        }
        over.sort_by(|a, b| a.0.cmp(b.0));
        let parts: Vec<String> = over
            .iter()
            .map(|(n, w)| format!("{n:?} waited {:.1} s", now.duration_since(w.since).as_secs_f64()))
            .collect();
        Some(format!(
            "{} with no round and no verdict from rank 0 (FERROVOD_STALL_TIMEOUT={} s, and {} s more)",
            parts.join("; "),
            self.timeout?.as_secs_f64(),
            BACKSTOP.as_secs_f64()
        ))
    }

    /// Rank 0: logs tensors waiting past the warning; past the timeout, returns the verdict
    /// that every rank must fail with.
    pub(crate) fn check(&mut self) -> Option<Verdict> {
        if self.rank != 0 || self.waits.is_empty() {
            return None;
        }
        let now = Instant::now();
        let describe = |names: &[(&String, &Wait)]| {
            let parts: Vec<String> = names
                .iter()
                .map(|(n, w)| {
                    let who = if w.missing.is_empty() {
                        "the rest of its group".to_string()
                    } else {
                        format!("rank(s) {:?}", w.missing)
                    };
                    format!("{n:?} waited {:.1} s for {who}", now.duration_since(w.since).as_secs_f64())
                })
                .collect();
            parts.join("; ")
        };
        let mut sorted: Vec<(&String, &Wait)> = self.waits.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        if let Some(limit) = self.timeout {
            let over: Vec<(&String, &Wait)> =
                sorted.iter().copied().filter(|(_, w)| now.duration_since(w.since) >= limit).collect();
            if !over.is_empty() {
                let mut culprits: Vec<usize> = over.iter().flat_map(|(_, w)| w.missing.iter().copied()).collect();
                culprits.sort_unstable();
                culprits.dedup();
                let detail = format!("{} (FERROVOD_STALL_TIMEOUT={} s)", describe(&over), limit.as_secs_f64());
                return Some(Verdict { detail, culprits });
            }
        }
        if let Some(limit) = self.warning {
            let over: Vec<(&String, &Wait)> =
                sorted.iter().copied().filter(|(_, w)| !w.warned && now.duration_since(w.since) >= limit).collect();
            if !over.is_empty() {
                eprintln!("ferrovod: rank 0: stall warning: {}", describe(&over));
                let names: Vec<String> = over.iter().map(|(n, _)| (*n).clone()).collect();
                for n in names {
                    if let Some(w) = self.waits.get_mut(&n) {
                        w.warned = true;
                    }
                }
            }
        }
        None
    }
}
