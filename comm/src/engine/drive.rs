//! Who runs the engine's rounds: its thread, or the caller of a synchronous collective.
//!
//! A synchronous collective (submit, then wait at once) handed to the engine thread costs two
//! thread hand-offs: the thread must be scheduled to run the round, then the caller to see the
//! result. With more threads than cores (two ranks' callers and engine threads on two cores)
//! that is most of a small collective's time. So the loop sits behind a lock that either may
//! take: the caller of a synchronous collective ([`super::Engine::submit_to_wait`]), finding it
//! free, runs the rounds itself until its request is done, and the engine thread keeps away
//! (parked, asleep on the doorbell) for a short lease after that while this rank has nothing
//! pending. The rounds are the same whoever runs them, so name matching, mismatch errors,
//! stalls and joins are unchanged. Asynchronous submissions still ring the engine thread, which
//! starts them at once (overlapping the caller's work) as before.
//!
//! While parked, the thread does not answer a round another rank began. That is safe: with
//! nothing pending here, no round can complete anything on any rank, and the lease is
//! milliseconds against a timeout of seconds. A submission, a join, a shutdown, or a caller
//! that leaves work behind rings the doorbell and ends the park at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use super::Shared;
use super::handle::Slot;
use super::runloop::{RunLoop, Stop};
use crate::error::Error;
use crate::os::{PollFd, poll};

/// How long the engine thread stays parked after a caller waited. Long enough to cover the
/// gap between a step's back-to-back synchronous collectives, short against any timeout.
const LEASE: Duration = Duration::from_millis(2);

pub(crate) struct Driver {
    run: Mutex<Option<RunLoop>>,
    shared: Arc<Shared>,
    /// Until when (nanoseconds after `epoch`) the engine thread leaves the loop to callers.
    lease_until: AtomicU64,
    epoch: Instant,
    rank: usize,
    /// How long the thread looks before it sleeps (`FERROVOD_SPIN_US`).
    spin: Duration,
    /// Rounds run by callers and by the thread.
    by_callers: AtomicU64,
    by_thread: AtomicU64,
}

impl Driver {
    pub(crate) fn new(run: RunLoop, shared: Arc<Shared>, rank: usize, spin: Duration) -> Driver {
        Driver {
            spin,
            run: Mutex::new(Some(run)),
            shared,
            lease_until: AtomicU64::new(0),
            epoch: Instant::now(),
            rank,
            by_callers: AtomicU64::new(0),
            by_thread: AtomicU64::new(0),
        }
    }

    /// `(rounds run by waiting callers, rounds run by the engine thread)`.
    pub(crate) fn rounds(&self) -> (u64, u64) {
        (self.by_callers.load(Ordering::Relaxed), self.by_thread.load(Ordering::Relaxed))
    }

    /// The engine thread's life: park while callers hold the lease, otherwise run steps.
    pub(crate) fn engine_thread(&self) {
        // Whether the thread ran a step since it last parked: then it looks before it sleeps.
        let mut stepped = true;
        loop {
            let mut guard = self.lock();
            let Some(run) = guard.as_mut() else { return };
            if self.leased() {
                // Cleared before `idle` reads the inbox: a submission after this rings again,
                // and the park ends at once.
                self.shared.bell.clear();
                if run.idle() {
                    drop(guard);
                    self.park(std::mem::take(&mut stepped));
                    continue;
                }
            }
            stepped = true;
            let before = run.rounds();
            let outcome = run.step(None);
            self.by_thread.fetch_add(run.rounds() - before, Ordering::Relaxed);
            if Self::finish(&mut guard, outcome) {
                return;
            }
        }
    }

    /// Runs the engine's rounds on the calling thread until `slot` is done or `deadline`
    /// passes, if no one else runs them now; returns whether it did. Either way the engine
    /// thread stays away for the lease after this, unless work is left.
    pub(crate) fn drive(&self, slot: &Slot, deadline: Option<Instant>) -> bool {
        self.extend_lease();
        let mut guard = match self.run.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => self.recover(p.into_inner()),
            Err(TryLockError::WouldBlock) => return false,
        };
        let mut stopped = false;
        while !slot.is_done() {
            let Some(run) = guard.as_mut() else { break };
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                break;
            }
            let before = run.rounds();
            let outcome = run.step(left);
            self.by_callers.fetch_add(run.rounds() - before, Ordering::Relaxed);
            if Self::finish(&mut guard, outcome) {
                stopped = true;
                break;
            }
        }
        let busy = guard.as_ref().is_some_and(|r| !r.idle());
        self.extend_lease();
        drop(guard);
        if busy || stopped {
            // Work left for the thread, or a stopped loop it must see to exit.
            self.shared.bell.ring();
        }
        true
    }

    /// Stops the loop on `outcome`'s stop or error (every pending request fails with it);
    /// returns whether it stopped.
    fn finish(guard: &mut MutexGuard<'_, Option<RunLoop>>, outcome: crate::error::Result<Option<Stop>>) -> bool {
        let stop = match outcome {
            Ok(None) => return false,
            Ok(Some(stop)) => stop,
            Err(e) => Stop::Failed(e),
        };
        if let Some(run) = guard.take() {
            run.stop(stop);
        }
        true
    }

    /// The loop; one whose runner panicked is stopped, failing what it held.
    fn lock(&self) -> MutexGuard<'_, Option<RunLoop>> {
        match self.run.lock() {
            Ok(g) => g,
            Err(p) => self.recover(p.into_inner()),
        }
    }

    /// A loop left behind by a panic: stopped, so that its requests fail instead of hanging.
    fn recover<'a>(&self, mut guard: MutexGuard<'a, Option<RunLoop>>) -> MutexGuard<'a, Option<RunLoop>> {
        let reason = "a thread running the engine's rounds panicked".to_string();
        Self::finish(&mut guard, Err(Error::EngineStopped { rank: self.rank, reason }));
        self.run.clear_poison();
        guard
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn extend_lease(&self) {
        self.lease_until.fetch_max(self.now() + LEASE.as_nanos() as u64, Ordering::Relaxed);
    }

    fn lease_left(&self) -> Duration {
        Duration::from_nanos(self.lease_until.load(Ordering::Relaxed).saturating_sub(self.now()))
    }

    fn leased(&self) -> bool {
        !self.lease_left().is_zero()
    }

    /// Rings the doorbell: for a caller that submitted without ringing and could not drive.
    pub(crate) fn ring(&self) {
        self.shared.bell.ring();
    }

    /// Sleeps on the doorbell while the lease lasts and nobody rang. Fresh from a step, it
    /// first looks for `FERROVOD_SPIN_US` (yielding its core), as the thread does before any
    /// sleep: the submissions of a step come back to back, and a wake-up costs more than the
    /// look.
    fn park(&self, look: bool) {
        let bell = &self.shared.bell;
        if look {
            let budget = self.spin.min(self.lease_left());
            let _ = crate::os::look(budget, || Ok::<_, std::convert::Infallible>(bell.is_rung()));
        }
        loop {
            let left = self.lease_left();
            if left.is_zero() || bell.is_rung() {
                return;
            }
            let mut fds = [PollFd { fd: bell.fd(), read: true, write: false, ready: false }];
            // An error (none is expected on a pipe) ends the park: the loop then sleeps in `step`.
            if let Some(Err(_)) = bell.sleep_unless_rung(|| poll(&mut fds, left)) {
                return;
            }
        }
    }
}
