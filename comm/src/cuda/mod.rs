//! CUDA through its driver library, loaded at run time (cudarc's driver layer with dynamic
//! loading): nothing of CUDA is needed to build ferrovod or to run it on host memory, and a
//! machine without the NVIDIA driver gets an error that says so when GPU memory reaches it,
//! never a panic.
//!
//! | item | what it is |
//! |---|---|
//! | [`Device`] | a device's primary context and ferrovod's stream on it, made once per process |
//! | [`copies::CudaCopies`] | the staged path's copies: two pinned host buffers, ordered copies, events |
//! | [`ops::MemoryOps`] | the engine's memory operations, on host memory and on devices |
//!
//! Ordering: every copy ferrovod makes on a device runs on that device's one ferrovod stream,
//! which first waits for the work that produced the data: a [`crate::DevicePtr`]'s `ready`
//! event, or else its `stream`. Python hands the device's ingress stream to
//! `__dlpack__(stream=...)`, so the producer orders that stream after its work itself, and
//! marks the point with an event of the tensor's own ([`Device::mark_ingress`]): a collective
//! waits for its own tensors, not for tensors handed over after them. A collective completes
//! on the host only once its device work is done, polled against the timeout (never a
//! blocking synchronise, which cannot be interrupted).
//!
//! Contexts: every entry point makes the device's context current on the calling thread,
//! because the engine's rounds run on whichever thread drives them, and puts back the one that
//! was current when it returns (a caller's thread is torch's too: its current device must not
//! change under it).

pub mod copies;
pub mod ops;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cudarc::driver::result::{self, DriverError};
use cudarc::driver::sys;

use crate::memory::DevicePtr;

/// What a machine without the NVIDIA driver gets.
pub const NO_DRIVER: &str = "CUDA's driver library (libcuda.so.1, installed with the NVIDIA driver) could not be \
                             loaded: this machine or container has no NVIDIA driver, or the loader cannot see it";

/// The driver functions ferrovod calls, checked once at load: cudarc resolves each on first
/// use and panics when one is missing, so a missing one must be found before.
const SYMBOLS: &[&str] = &[
    "cuInit",
    "cuGetErrorString",
    "cuGetErrorName",
    "cuDeviceGetCount",
    "cuDeviceGet",
    "cuDeviceGetUuid_v2",
    "cuDevicePrimaryCtxRetain",
    "cuCtxSetCurrent",
    "cuCtxGetCurrent",
    "cuStreamCreate",
    "cuStreamWaitEvent",
    "cuEventCreate",
    "cuEventRecord",
    "cuEventQuery",
    "cuEventDestroy_v2",
    "cuMemHostAlloc",
    "cuMemFreeHost",
    "cuMemAllocAsync",
    "cuMemFreeAsync",
    "cuMemsetD8Async",
    "cuMemcpyHtoDAsync_v2",
    "cuMemcpyDtoHAsync_v2",
    "cuMemcpyDtoDAsync_v2",
];

/// A driver call's failure, with NCCL-style text: the call, CUDA's words and its code.
pub(crate) fn failed(call: &str, e: DriverError) -> String {
    let words = e.error_string().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    format!("{call} failed: {words} ({:?})", e.0)
}

/// Loads and initialises the driver library, once per process.
pub fn driver() -> Result<(), String> {
    static DRIVER: OnceLock<Result<(), String>> = OnceLock::new();
    DRIVER
        .get_or_init(|| {
            // SAFETY: tries to load the library (running only its own initialisers).
            if !unsafe { sys::is_culib_present() } {
                return Err(NO_DRIVER.to_string());
            }
            // SAFETY: as above; the library stays loaded for the process's life.
            let lib = std::panic::catch_unwind(|| unsafe { sys::culib() }).map_err(|_| NO_DRIVER.to_string())?;
            let missing: Vec<&str> = SYMBOLS
                .iter()
                .copied()
                // SAFETY: only looks the name up; nothing is called.
                .filter(|s| unsafe { lib.get::<*const ()>(s.as_bytes()) }.is_err())
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "CUDA's driver library lacks {} (a driver older than CUDA 12?)",
                    missing.join(", ")
                ));
            }
            result::init().map_err(|e| failed("cuInit", e))
        })
        .clone()
}

/// A device of this process: its primary context (shared with torch and every other user of
/// the runtime API) and the one stream ferrovod runs its copies on. Made once per process and
/// kept to its end: releasing a context while NCCL or torch still use it, or at exit, is a
/// hazard, and the stream costs nothing when idle.
#[derive(Debug)]
pub struct Device {
    ordinal: i32,
    ctx: sys::CUcontext,
    stream: sys::CUstream,
    /// Where producers order the tensors they hand over (`__dlpack__(stream=...)`), each
    /// marked there by an event of its own ([`Device::mark_ingress`]): the copies of one
    /// collective then wait for its own tensors' producers only, not for those of tensors
    /// handed over since.
    ingress: sys::CUstream,
}

// SAFETY: the driver API is thread-safe; contexts and streams are handles that any thread may
// use, and every use first makes the context current on its thread (`Device::enter`).
unsafe impl Send for Device {}
// SAFETY: as above; `Device` has no interior state of its own.
unsafe impl Sync for Device {}

impl Device {
    /// Device `ordinal`, as CUDA numbers the devices this process sees (after
    /// `CUDA_VISIBLE_DEVICES`, as torch's `cuda:N` does).
    pub fn get(ordinal: i32) -> Result<Arc<Device>, String> {
        static DEVICES: OnceLock<Mutex<HashMap<i32, Arc<Device>>>> = OnceLock::new();
        let mut devices = DEVICES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = devices.get(&ordinal) {
            return Ok(d.clone());
        }
        driver()?;
        let count = result::device::get_count().map_err(|e| failed("cuDeviceGetCount", e))?;
        if !(0..count).contains(&ordinal) {
            return Err(format!("there is no CUDA device {ordinal}: this process sees {count}"));
        }
        let cu = result::device::get(ordinal).map_err(|e| failed("cuDeviceGet", e))?;
        // SAFETY: `cu` came from `cuDeviceGet`; the context is retained for the process's life.
        let ctx = unsafe { result::primary_ctx::retain(cu) }.map_err(|e| failed("cuDevicePrimaryCtxRetain", e))?;
        let _in = Entered::new(ctx)?;
        // Non-blocking: the legacy default stream's work does not order it implicitly; the
        // producer's stream does, explicitly (`after`).
        let stream =
            result::stream::create(result::stream::StreamKind::NonBlocking).map_err(|e| failed("cuStreamCreate", e))?;
        let ingress =
            result::stream::create(result::stream::StreamKind::NonBlocking).map_err(|e| failed("cuStreamCreate", e))?;
        let d = Arc::new(Device { ordinal, ctx, stream, ingress });
        devices.insert(ordinal, d.clone());
        Ok(d)
    }

    /// The ordinal.
    pub fn ordinal(&self) -> i32 {
        self.ordinal
    }

    /// The GPU's UUID: the same for every process that sees it, whatever its ordinal there.
    pub fn uuid(&self) -> Result<[u8; 16], String> {
        let cu = result::device::get(self.ordinal).map_err(|e| failed("cuDeviceGet", e))?;
        let mut id = std::mem::MaybeUninit::<sys::CUuuid>::uninit();
        // SAFETY: a valid out-pointer and a device handle from `cuDeviceGet`.
        unsafe { sys::cuDeviceGetUuid_v2(id.as_mut_ptr(), cu) }
            .result()
            .map_err(|e| failed("cuDeviceGetUuid_v2", e))?;
        // SAFETY: initialised by the successful call above.
        let id = unsafe { id.assume_init() };
        Ok(id.bytes.map(|b| b as u8))
    }

    /// ferrovod's stream on this device, for a library's calls (NCCL's).
    pub(crate) fn raw_stream(&self) -> sys::CUstream {
        self.stream
    }

    /// ferrovod's stream on this device (a `CUstream`, as an integer for DLPack).
    pub fn stream(&self) -> u64 {
        self.stream as u64
    }

    /// The stream to give a producer for ordering a tensor it hands over (DLPack's
    /// `__dlpack__(stream=...)`), as an integer; [`Device::mark_ingress`] right after.
    pub fn ingress(&self) -> u64 {
        self.ingress as u64
    }

    /// An event recorded now on the ingress stream: it happens once the producer's work that
    /// was ordered there so far has, and goes in the tensor's [`DevicePtr::ready`]. Keep it
    /// until the collective completes.
    pub fn mark_ingress(&self) -> Result<Event, String> {
        let event = self.event()?;
        let _in = self.enter()?;
        // SAFETY: both live, on this device.
        unsafe { result::event::record(event.0, self.ingress) }.map_err(|e| failed("cuEventRecord", e))?;
        Ok(event)
    }

    /// Makes this device's context current on the calling thread until the guard is dropped.
    pub(crate) fn enter(&self) -> Result<Entered, String> {
        Entered::new(self.ctx)
    }

    /// Makes ferrovod's stream wait for the work that produced `ptr`'s data: its `ready` event
    /// when it has one, else the work queued so far on its `stream` (nothing to do when that
    /// is ferrovod's own). `scratch` is an event of this device, free to record.
    pub(crate) fn after(&self, ptr: &DevicePtr, scratch: &Event) -> Result<(), String> {
        let stream = ptr.stream;
        if ptr.ready != 0 {
            // SAFETY: a live event of this device (the DevicePtr's contract).
            return unsafe {
                result::stream::wait_event(
                    self.stream,
                    ptr.ready as sys::CUevent,
                    sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
                )
            }
            .map_err(|e| failed("cuStreamWaitEvent", e));
        }
        if stream == self.stream() {
            return Ok(());
        }
        if stream == PER_THREAD_STREAM {
            // Names another stream on each thread, and the rounds run on any thread.
            return Err("the per-thread default stream (2) cannot order a collective: pass the stream itself".into());
        }
        // SAFETY: `stream` is the producer's live stream on this device (the DevicePtr's
        // contract); 0, 1 and 2 are the legacy and per-thread default streams.
        unsafe {
            result::event::record(scratch.0, stream as sys::CUstream).map_err(|e| failed("cuEventRecord", e))?;
            result::stream::wait_event(self.stream, scratch.0, sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT)
                .map_err(|e| failed("cuStreamWaitEvent", e))
        }
    }

    /// Records `event` after everything queued so far on ferrovod's stream.
    pub(crate) fn mark(&self, event: &Event) -> Result<(), String> {
        // SAFETY: both live, on this device.
        unsafe { result::event::record(event.0, self.stream) }.map_err(|e| failed("cuEventRecord", e))
    }

    /// Whether `event` has happened (once recorded, the work before it is done).
    pub(crate) fn happened(&self, event: &Event) -> Result<bool, String> {
        // SAFETY: a live event.
        match unsafe { result::event::query(event.0) } {
            Ok(()) => Ok(true),
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            Err(e) => Err(failed("cuEventQuery", e)),
        }
    }

    /// Waits on the host until `event` has happened: looks (yielding) for `spin`, then sleeps
    /// between looks, and gives up after `timeout` naming `what`. Never blocks in the driver: a
    /// device that never finishes (a hung kernel, a peer's NCCL that never comes) must not
    /// hang the process.
    pub(crate) fn wait(&self, event: &Event, timeout: Duration, spin: Duration, what: &str) -> Result<(), String> {
        let start = Instant::now();
        let mut nap = Duration::from_micros(20);
        loop {
            // SAFETY: a live event.
            match unsafe { result::event::query(event.0) } {
                Ok(()) => return Ok(()),
                Err(e) if e.0 == sys::CUresult::CUDA_ERROR_NOT_READY => {}
                Err(e) => return Err(failed(&format!("cuEventQuery ({what})"), e)),
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(format!(
                    "{what} on cuda:{} was not done after {:.1} s (FERROVOD_TIMEOUT)",
                    self.ordinal,
                    waited.as_secs_f64()
                ));
            }
            if waited < spin {
                std::thread::yield_now();
            } else {
                // Short naps: a staged piece's copy takes about 100 µs.
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_micros(250));
            }
        }
    }

    /// A new event on this device (no timing: cheaper to record and query).
    pub(crate) fn event(&self) -> Result<Event, String> {
        let _in = self.enter()?;
        let e = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
            .map_err(|e| failed("cuEventCreate", e))?;
        Ok(Event(e))
    }
}

/// `cudaStreamPerThread` as DLPack and the driver spell it.
const PER_THREAD_STREAM: u64 = 2;

/// While alive, a context is current on this thread; dropped, the one before is again.
#[must_use]
pub(crate) struct Entered {
    prev: sys::CUcontext,
    changed: bool,
}

impl Entered {
    fn new(ctx: sys::CUcontext) -> Result<Entered, String> {
        let prev =
            result::ctx::get_current().map_err(|e| failed("cuCtxGetCurrent", e))?.unwrap_or(std::ptr::null_mut());
        if prev == ctx {
            return Ok(Entered { prev, changed: false });
        }
        // SAFETY: a context retained for the process's life.
        unsafe { result::ctx::set_current(ctx) }.map_err(|e| failed("cuCtxSetCurrent", e))?;
        Ok(Entered { prev, changed: true })
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        if self.changed {
            // SAFETY: the context that was current before (or none), still alive: contexts
            // ferrovod makes current are never destroyed, and a caller's own outlives its call.
            let _ = unsafe { result::ctx::set_current(self.prev) };
        }
    }
}

/// A CUDA event, destroyed on drop (a failure there is ignored: nothing can be done about it,
/// and a panic in drop would abort).
#[derive(Debug)]
pub struct Event(sys::CUevent);

impl Event {
    /// The `CUevent`, as an integer (for [`DevicePtr::ready`]).
    pub fn handle(&self) -> u64 {
        self.0 as u64
    }
}

// SAFETY: an event handle may be recorded and queried from any thread (see `Device`).
unsafe impl Send for Event {}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: created by `Device::event`, destroyed once; destroying an event whose work is
        // still pending is allowed (the driver frees it once that work completes).
        let _ = unsafe { result::event::destroy(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a machine with no NVIDIA driver (CI), asking for a device is the documented error.
    #[test]
    fn without_a_driver_a_device_is_an_error_that_says_so() {
        // SAFETY: tries to load the library only.
        if unsafe { sys::is_culib_present() } {
            eprintln!("SKIPPED: this machine has CUDA's driver library");
            return;
        }
        let e = Device::get(0).unwrap_err();
        assert!(e.contains("libcuda.so.1") && e.contains("NVIDIA driver"), "{e}");
        // Asked again, the same answer, without retrying the load.
        assert_eq!(Device::get(3).unwrap_err(), e);
        assert_eq!(driver().unwrap_err(), e);
    }
}
