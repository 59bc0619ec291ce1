//! Handles: what a submitter holds while the engine works, to poll or wait on.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::request::Output;
use crate::error::Result;

/// Where the engine puts a result and the submitter finds it.
#[derive(Default)]
pub(crate) struct Slot {
    state: Mutex<State>,
    done: Condvar,
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

    /// Completes the request; the first completion wins.
    pub(crate) fn complete(&self, result: Result<Output>) {
        let mut s = self.lock();
        if matches!(*s, State::Pending) {
            *s = State::Done(result);
            self.done.notify_all();
        }
    }
}

/// A submitted request. Dropping it does not cancel the collective (the other ranks count on
/// it); the result is then discarded.
#[must_use = "a handle is how the result comes back"]
pub struct Handle {
    pub(crate) slot: Arc<Slot>,
    pub(crate) name: String,
}

impl Handle {
    pub(crate) fn new(name: String) -> (Handle, Arc<Slot>) {
        let slot = Arc::new(Slot::default());
        (Handle { slot: slot.clone(), name }, slot)
    }

    /// The tensor name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the result is ready ([`Handle::wait`] will not block).
    pub fn poll(&self) -> bool {
        !matches!(*self.slot.lock(), State::Pending)
    }

    /// Blocks until the request completes and returns its result.
    pub fn wait(self) -> Result<Output> {
        let mut s = self.slot.lock();
        while matches!(*s, State::Pending) {
            s = self.slot.done.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        take(&mut s)
    }

    /// Like [`Handle::wait`], but gives the handle back if `timeout` passes first.
    pub fn wait_timeout(self, timeout: Duration) -> std::result::Result<Result<Output>, Handle> {
        let deadline = Instant::now() + timeout;
        let mut s = self.slot.lock();
        while matches!(*s, State::Pending) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                drop(s);
                return Err(self);
            }
            s = self.slot.done.wait_timeout(s, left).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
        }
        Ok(take(&mut s))
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
