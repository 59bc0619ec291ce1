//! Handles: what a submitter holds while the engine works, to poll or wait on.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::drive::Driver;
use super::request::Output;
use crate::error::Result;

/// Where the engine puts a result and the submitter finds it.
#[derive(Default)]
pub(crate) struct Slot {
    state: Mutex<State>,
    done: Condvar,
    /// Someone sleeps on `done` (guarded by `state`): completion skips the wake-up otherwise.
    sleepers: std::sync::atomic::AtomicBool,
    /// Set once `state` left `Pending`: a waiter that looks (spins) reads it without taking
    /// the lock that the completing engine thread needs.
    finished: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
enum State {
    #[default]
    Pending,
    Done(Result<Output>),
    Taken,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn is_done(&self) -> bool {
        self.finished.load(std::sync::atomic::Ordering::Acquire)
    }

    fn wait_done(&self) {
        let mut s = self.lock();
        while matches!(*s, State::Pending) {
            s = self.sleep(s, None);
        }
    }

    /// Sleeps on `done` (until `deadline`, if any), holding `state` as the guard.
    fn sleep<'a>(&'a self, s: MutexGuard<'a, State>, deadline: Option<Instant>) -> MutexGuard<'a, State> {
        // Set under the lock that `complete` takes, so a completion cannot miss it.
        self.sleepers.store(true, std::sync::atomic::Ordering::Relaxed);
        match deadline {
            None => self.done.wait(s).unwrap_or_else(|p| p.into_inner()),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                self.done.wait_timeout(s, left).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0)
            }
        }
    }

    /// Waits until done or `deadline`; returns whether done.
    fn wait_done_until(&self, deadline: Instant) -> bool {
        let mut s = self.lock();
        while matches!(*s, State::Pending) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self.sleep(s, Some(deadline));
        }
        true
    }

    /// Opens a gate (a slot used only for its done-ness).
    pub(crate) fn open(&self) {
        self.complete(Err(crate::Error::EngineStopped { rank: 0, reason: "a gate has no result".into() }));
    }

    /// Completes the request; the first completion wins.
    pub(crate) fn complete(&self, result: Result<Output>) {
        let mut s = self.lock();
        if matches!(*s, State::Pending) {
            *s = State::Done(result);
            self.finished.store(true, std::sync::atomic::Ordering::Release);
            if self.sleepers.load(std::sync::atomic::Ordering::Relaxed) {
                self.done.notify_all();
            }
        }
    }
}

/// A submitted request. Dropping it does not cancel the collective (the other ranks count on
/// it); the result is then discarded.
#[must_use = "a handle is how the result comes back"]
pub struct Handle {
    pub(crate) slot: Arc<Slot>,
    /// How long [`Handle::wait`] looks before it sleeps.
    spin: Duration,
    /// For a group member: opened once every member's result is in, so that no member is seen
    /// done before the others.
    pub(crate) gate: Option<Arc<Slot>>,
    pub(crate) name: String,
    /// The engine's loop, which the wait of a synchronous submission runs itself when no one
    /// else does (see `drive`).
    pub(crate) driver: Option<Arc<Driver>>,
    /// Submitted without waking the engine thread (synchronous): a wait that cannot run the
    /// loop wakes it.
    pub(crate) quiet: bool,
}

impl Handle {
    pub(crate) fn new(name: String, gate: Option<Arc<Slot>>, spin: Duration) -> (Handle, Arc<Slot>) {
        let slot = Arc::new(Slot::default());
        (Handle { slot: slot.clone(), spin, gate, name, driver: None, quiet: false }, slot)
    }

    /// Runs the engine's rounds on this thread until done or `deadline`, if no one else runs
    /// them; wakes the engine thread if it cannot and the submission did not.
    fn drive(&mut self, deadline: Option<Instant>) {
        if !self.quiet || self.slot.is_done() {
            return;
        }
        if let Some(d) = &self.driver
            && !d.drive(&self.slot, deadline)
        {
            d.ring();
            self.quiet = false;
        }
    }

    /// Looks at the result for up to the spin budget, yielding the core between looks: a
    /// small collective often completes within it, and a condition variable's wake-up costs
    /// more than the whole collective.
    fn look(&self, most: Duration) {
        let _ = crate::os::look(most.min(self.spin), || Ok::<_, std::convert::Infallible>(self.poll()));
    }

    /// Wakes the engine thread for this request if it was submitted for a wait that will not
    /// come ([`Engine::submit_to_wait`](crate::engine::Engine::submit_to_wait)): the thread
    /// then runs it as any other. Dropping the handle does the same.
    pub fn hand_to_engine(&mut self) {
        if self.quiet
            && !self.slot.is_done()
            && let Some(d) = &self.driver
        {
            d.ring();
        }
        self.quiet = false;
    }

    /// The tensor name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the result is ready ([`Handle::wait`] will not block).
    pub fn poll(&self) -> bool {
        self.gate.as_ref().is_none_or(|g| g.is_done()) && self.slot.is_done()
    }

    /// Blocks until the request completes and returns its result.
    pub fn wait(mut self) -> Result<Output> {
        self.drive(None);
        self.look(self.spin);
        if let Some(g) = &self.gate {
            g.wait_done();
        }
        let mut s = self.slot.lock();
        while matches!(*s, State::Pending) {
            s = self.slot.sleep(s, None);
        }
        take(&mut s)
    }

    /// Like [`Handle::wait`], but gives the handle back if `timeout` passes first.
    pub fn wait_timeout(mut self, timeout: Duration) -> std::result::Result<Result<Output>, Handle> {
        let deadline = Instant::now() + timeout;
        self.drive(Some(deadline));
        self.look(deadline.saturating_duration_since(Instant::now()));
        if let Some(g) = &self.gate
            && !g.wait_done_until(deadline)
        {
            return Err(self);
        }
        let mut s = self.slot.lock();
        while matches!(*s, State::Pending) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                drop(s);
                return Err(self);
            }
            s = self.slot.sleep(s, Some(deadline));
        }
        Ok(take(&mut s))
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // A quiet submission nobody waited for: the engine thread must still hear of it.
        self.hand_to_engine();
    }
}

fn take(s: &mut State) -> Result<Output> {
    match std::mem::replace(s, State::Taken) {
        State::Done(r) => r,
        // `wait` consumes the handle, so a result is taken at most once.
        State::Pending | State::Taken => unreachable!("a handle's result is taken once, after completion"),
    }
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("name", &self.name).field("done", &self.poll()).finish()
    }
}
