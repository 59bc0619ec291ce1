//! One NCCL communicator, non-blocking: every call returns at once, and its outcome is polled
//! (`ncclCommGetAsyncError`) against a deadline and the job's abort bell, so that no thread
//! ever blocks inside NCCL past the timeout (a blocking communicator waiting for a dead peer
//! hangs for good: Horovod's hang), and a failure recorded by any rank (a rank that died, under
//! the launcher) ends the wait at once. Dropping it aborts it, under a time limit of its own.

use std::ffi::{c_int, c_void};
use std::time::{Duration, Instant};

use super::library::Nccl;
use super::sys::{self, NcclComm, NcclConfig, NcclResult, NcclUniqueId};
use crate::transport::AbortBell;

/// How long an abort may take before the communicator is left to the process's exit.
const ABORT_LIMIT: Duration = Duration::from_secs(10);

/// Why a wait on NCCL ended before its call was done.
#[derive(Debug)]
pub enum Stop {
    /// NCCL, or CUDA around it, failed: their words.
    Failed(String),
    /// The job's first failure is on record (the abort bell rang): another rank failed or died.
    Aborted,
    /// Still not done at the deadline (a peer is dead, stopped or behind).
    TimedOut {
        /// What was waited for, on which rank.
        what: String,
        /// For how long.
        waited: Duration,
    },
}

impl From<String> for Stop {
    fn from(s: String) -> Stop {
        Stop::Failed(s)
    }
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Failed(s) => f.write_str(s),
            Stop::Aborted => f.write_str("another rank recorded the job's failure"),
            Stop::TimedOut { what, waited } => write!(
                f,
                "{what} was not done after {:.1} s (FERROVOD_TIMEOUT): a peer is dead, stopped or behind",
                waited.as_secs_f64()
            ),
        }
    }
}

/// A joined communicator.
pub struct Comm {
    nccl: &'static Nccl,
    raw: NcclComm,
    rank: usize,
    spin: Duration,
    abort: Option<AbortBell>,
}

// SAFETY: a communicator may be used from any thread, one call at a time (`&mut self`).
unsafe impl Send for Comm {}

impl Comm {
    /// Joins the communicator `id` names as `rank` of `size`, on the CUDA device current on
    /// this thread; gives up at `deadline` (the others never came) or when `abort` rings, as
    /// every later wait on it does.
    pub fn join(
        nccl: &'static Nccl,
        id: &NcclUniqueId,
        rank: usize,
        size: usize,
        deadline: Instant,
        spin: Duration,
        abort: Option<AbortBell>,
    ) -> Result<Comm, Stop> {
        let mut config = NcclConfig {
            size: std::mem::size_of::<NcclConfig>(),
            magic: sys::CONFIG_MAGIC,
            version: sys::CONFIG_VERSION,
            blocking: 0,
        };
        let mut raw: NcclComm = std::ptr::null_mut();
        let (n, r) = (c_int::try_from(size), c_int::try_from(rank));
        let (Ok(n), Ok(r)) = (n, r) else { return Err(format!("{size} ranks are more than NCCL takes").into()) };
        // SAFETY: valid out-pointer and config (NCCL reads `size` bytes of it); `id` is 128
        // bytes by value.
        let code = unsafe {
            (nccl.comm_init_rank_config)(&mut raw, n, *id, r, (&mut config as *mut NcclConfig).cast::<c_void>())
        };
        let mut comm = Comm { nccl, raw, rank, spin, abort };
        if raw.is_null() {
            comm.raw = std::ptr::null_mut();
            return Err(format!("ncclCommInitRankConfig: {}", nccl.check(code).err().unwrap_or_default()).into());
        }
        comm.started("ncclCommInitRankConfig", code, deadline)?;
        // What NCCL made must be what was asked: a mix-up here would misroute every collective.
        let ask = |f: sys::CommInt, what: &str| -> Result<c_int, String> {
            let mut v: c_int = -1;
            // SAFETY: a live communicator and a valid out-pointer.
            nccl.check(unsafe { f(comm.raw, &mut v) }).map(|()| v).map_err(|e| format!("{what}: {e}"))
        };
        let (count, me) = (ask(nccl.comm_count, "ncclCommCount")?, ask(nccl.comm_user_rank, "ncclCommUserRank")?);
        if (count, me) != (n, r) {
            return Err(format!("NCCL made rank {me} of {count}, asked for rank {r} of {n}").into());
        }
        Ok(comm)
    }

    /// The CUDA device (ordinal) NCCL put this communicator on.
    pub fn device(&self) -> Result<i32, String> {
        let mut v: c_int = -1;
        // SAFETY: a live communicator and a valid out-pointer.
        self.nccl.check(unsafe { (self.nccl.comm_cu_device)(self.raw, &mut v) }).map(|()| v)
    }

    /// The library, for the collectives' calls.
    pub fn library(&self) -> &'static Nccl {
        self.nccl
    }

    /// The raw handle, for the collectives' calls.
    pub fn raw(&self) -> NcclComm {
        self.raw
    }

    /// Judges a call's immediate result: an error now, or (in progress) its outcome, polled
    /// until `deadline`.
    pub fn started(&mut self, call: &str, code: NcclResult, deadline: Instant) -> Result<(), Stop> {
        match code {
            sys::NCCL_SUCCESS | sys::NCCL_IN_PROGRESS => self.settle(call, deadline),
            code => Err(self.failure(call, code).into()),
        }
    }

    /// Polls the communicator's state until no call is in progress: `Ok` once the last one
    /// succeeded, else its error.
    pub fn settle(&mut self, call: &str, deadline: Instant) -> Result<(), Stop> {
        self.poll(call, deadline, |comm| match comm.state() {
            Ok(sys::NCCL_SUCCESS) => Ok(true),
            Ok(sys::NCCL_IN_PROGRESS) => Ok(false),
            Ok(code) | Err(code) => Err(comm.failure(call, code)),
        })
    }

    /// Polls `done` until it says so or fails: `Stop::TimedOut` at `deadline`, `Stop::Aborted`
    /// once the abort bell rings. Every wait on NCCL is this loop: the wait policy's spin
    /// (yielding the core), then naps of at most 250 µs, never a blocking call.
    pub fn poll(
        &mut self,
        what: &str,
        deadline: Instant,
        mut done: impl FnMut(&Comm) -> Result<bool, String>,
    ) -> Result<(), Stop> {
        let start = Instant::now();
        let mut nap = Duration::from_micros(10);
        loop {
            if done(self)? {
                return Ok(());
            }
            if self.abort.as_ref().is_some_and(|b| b.is_rung()) {
                return Err(Stop::Aborted);
            }
            let now = Instant::now();
            if now >= deadline {
                let what = format!("{what} on rank {}", self.rank);
                return Err(Stop::TimedOut { what, waited: now.duration_since(start) });
            }
            if now.duration_since(start) < self.spin {
                std::thread::yield_now();
            } else {
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_micros(250));
            }
        }
    }

    /// The communicator's asynchronous state (`ncclCommGetAsyncError`): `Ok(code)`, or
    /// `Err(code)` when asking failed.
    pub fn state(&self) -> Result<NcclResult, NcclResult> {
        let mut state: NcclResult = sys::NCCL_SUCCESS;
        // SAFETY: a live communicator and a valid out-pointer.
        match unsafe { (self.nccl.comm_get_async_error)(self.raw, &mut state) } {
            sys::NCCL_SUCCESS => Ok(state),
            code => Err(code),
        }
    }

    /// NCCL's words for a failed call: its error string and the communicator's last error.
    pub fn failure(&self, call: &str, code: NcclResult) -> String {
        let what = self.nccl.error_string(code);
        // SAFETY: a live communicator (or null, which NCCL takes: the thread's last error).
        let last = unsafe { (self.nccl.get_last_error)(self.raw) };
        let last = if last.is_null() {
            String::new()
        } else {
            // SAFETY: NUL-terminated, owned by NCCL, read at once.
            unsafe { std::ffi::CStr::from_ptr(last) }.to_string_lossy().into_owned()
        };
        // NCCL keeps its last error per thread, whichever communicator it concerned.
        match last.is_empty() {
            true => format!("{call}: {what} ({code})"),
            false => format!("{call}: {what} ({code}); NCCL's last error on this thread: {last}"),
        }
    }
}

impl Drop for Comm {
    /// Aborts: ends NCCL's work on every stream and frees the communicator, whatever state it
    /// is in (a clean `ncclCommFinalize` would wait for peers that may be gone). Run on a
    /// thread of its own, and left to the process's exit if it takes longer than
    /// [`ABORT_LIMIT`]: a drop must not hang.
    fn drop(&mut self) {
        if self.raw.is_null() {
            return;
        }
        let (abort, raw) = (self.nccl.comm_abort, self.raw as usize);
        let (tx, rx) = std::sync::mpsc::channel();
        let started = std::thread::Builder::new().name("ferrovod-nccl-abort".into()).spawn(move || {
            // SAFETY: the communicator is live, and nothing else uses it any more.
            let _ = unsafe { abort(raw as NcclComm) };
            let _ = tx.send(());
        });
        if started.is_ok() {
            let _ = rx.recv_timeout(ABORT_LIMIT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// `fake_nccl.c`, built once into a shared library, loaded as NCCL.
    fn fake() -> Option<(&'static Nccl, &'static libloading::Library)> {
        static FAKE: std::sync::OnceLock<Option<(&'static Nccl, &'static libloading::Library)>> =
            std::sync::OnceLock::new();
        *FAKE.get_or_init(|| {
            if std::env::var_os(crate::config::NCCL_LIBRARY.name).is_some() {
                eprintln!("SKIPPED: FERROVOD_NCCL_LIBRARY is set");
                return None;
            }
            let dir = std::env::temp_dir().join(format!("ferrovod-fake-nccl-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let lib = dir.join("libnccl.so.2");
            let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/backend/nccl/fake_nccl.c");
            let built =
                std::process::Command::new("cc").args(["-shared", "-fPIC", "-O1", "-o"]).arg(&lib).arg(&src).status();
            assert!(built.is_ok_and(|s| s.success()), "cc could not build {}", src.display());
            let nccl: &'static Nccl = Box::leak(Box::new(Nccl::load(std::slice::from_ref(&lib)).unwrap()));
            assert_eq!(nccl.path, lib.display().to_string());
            // SAFETY: the same library, for its test-only counter.
            let raw: &'static libloading::Library =
                Box::leak(Box::new(unsafe { libloading::Library::new(&lib) }.unwrap()));
            Some((nccl, raw))
        })
    }

    /// Aborts so far of communicators of `n` ranks (each test uses its own `n`).
    fn aborts(raw: &libloading::Library, n: c_int) -> i32 {
        // SAFETY: `int fake_aborts(int)` in fake_nccl.c.
        unsafe { raw.get::<unsafe extern "C" fn(c_int) -> c_int>(b"fake_aborts").unwrap()(n) }
    }

    fn id() -> NcclUniqueId {
        NcclUniqueId { internal: [1; 128] }
    }

    #[test]
    fn a_nonblocking_join_is_polled_until_done_and_checked() {
        let Some((nccl, _)) = fake() else { return };
        assert_eq!(nccl.version().unwrap(), 22703);
        let deadline = Instant::now() + Duration::from_secs(5);
        let comm = Comm::join(nccl, &id(), 0, 1, deadline, Duration::ZERO, None).unwrap();
        assert_eq!(comm.device().unwrap(), 0);
        assert_eq!(comm.state(), Ok(sys::NCCL_SUCCESS));
    }

    /// A peer that never comes: the join gives up at its deadline, saying so, and the
    /// communicator is aborted (by the drop of the half-made one).
    #[test]
    fn a_join_that_never_completes_times_out_and_is_aborted() {
        let Some((nccl, raw)) = fake() else { return };
        let before = aborts(raw, 2);
        let t = Instant::now();
        let e = Comm::join(nccl, &id(), 1, 2, t + Duration::from_millis(300), Duration::ZERO, None).err().unwrap();
        let took = t.elapsed();
        assert!(matches!(&e, Stop::TimedOut { what, .. } if what == "ncclCommInitRankConfig on rank 1"), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("not done after") && e.contains("FERROVOD_TIMEOUT"), "{e}");
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(5), "{took:?}");
        assert_eq!(aborts(raw, 2), before + 1, "the half-made communicator was not aborted once");
    }

    #[test]
    fn an_asynchronous_error_is_an_error_with_nccls_words() {
        let Some((nccl, _)) = fake() else { return };
        let deadline = Instant::now() + Duration::from_secs(5);
        let e = Comm::join(nccl, &id(), 2, 3, deadline, Duration::ZERO, None).err().unwrap().to_string();
        assert!(e.contains("unhandled system error (2)") && e.contains("fake: peer went away"), "{e}");
    }

    /// The job's failure recorded elsewhere (the abort bell rings) ends a wait that would
    /// otherwise last until the deadline: the join of a peer that never comes, here (4 ranks:
    /// the fake's abort count per size keeps the tests apart).
    #[test]
    fn the_abort_bell_ends_a_wait_at_once_and_the_communicator_is_aborted() {
        let Some((nccl, raw)) = fake() else { return };
        let before = aborts(raw, 4);
        let bell: AbortBell = std::sync::Arc::new(crate::os::Doorbell::new().unwrap());
        let ringer = {
            let bell = bell.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                bell.ring();
            })
        };
        let t = Instant::now();
        let e = Comm::join(nccl, &id(), 1, 4, t + Duration::from_secs(30), Duration::ZERO, Some(bell)).err().unwrap();
        let took = t.elapsed();
        ringer.join().unwrap();
        assert!(matches!(e, Stop::Aborted), "{e:?}");
        assert!(took >= Duration::from_millis(200) && took < Duration::from_secs(5), "{took:?}");
        assert_eq!(aborts(raw, 4), before + 1, "the half-made communicator was not aborted once");
    }
}
