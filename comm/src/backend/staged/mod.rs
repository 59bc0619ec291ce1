//! The staged path: device memory through host bounce buffers, reduced by the host backend.
//! It runs GPU collectives where NCCL cannot: NCCL absent, two ranks on one GPU (which NCCL
//! refuses), or on request. What it needs of the device is [`device::DeviceCopies`]: two host
//! buffers and ordered copies to and from them.
//!
//! Allreduce and broadcast treat every byte alike, so they run piece by piece, pipelined: while
//! the host backend reduces piece k in one buffer, piece k+1 is on its way down into the other,
//! and piece k goes back up while piece k+1 is reduced. Every rank cuts the same pieces (they
//! follow from the length alone), and each piece is one host collective of the same call.
//! Allgather, reduce-scatter and alltoall, whose blocks differ per rank, go down whole, run,
//! and go up whole.

pub mod device;

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use super::host::HostBackend;
use super::{Backend, Error, Links, Request, Work};
use crate::algorithms::piece_ranges;
use crate::collective::{Call, Collective};
use crate::config::Tuning;
use crate::memory::{DevicePtr, Memory, MemoryRef, Place};
use device::DeviceCopies;

/// Device memory of one device through host buffers and the host backend.
pub struct StagedBackend {
    copies: Box<dyn DeviceCopies>,
    host: HostBackend,
    /// Bytes of a pipelined piece.
    piece: usize,
}

impl StagedBackend {
    /// A staged path over `copies`, pipelining pieces of `piece` bytes.
    pub fn new(copies: Box<dyn DeviceCopies>, tuning: Tuning, piece: usize) -> StagedBackend {
        StagedBackend { copies, host: HostBackend::new(tuning), piece: piece.max(1) }
    }

    fn mine(&self, place: Place) -> bool {
        place == Place::Device(self.copies.device())
    }
}

fn device(detail: String) -> Error {
    Error::Device { backend: "staged", detail }
}

fn host_reached() -> Error {
    Error::Invalid { backend: "staged", detail: "host memory reached it".into() }
}

impl Backend for StagedBackend {
    fn name(&self) -> &'static str {
        "staged"
    }

    fn accepts(&self, req: &Request<'_>) -> bool {
        match &req.work {
            Work::InPlace { buf } | Work::Blocks { buf, .. } => self.mine(buf.place()),
            Work::Exchange { send, recv, .. } => self.mine(send.place()) && self.mine(recv.place()),
        }
    }

    fn run(&mut self, req: Request<'_>, links: &mut Links) -> Result<&'static str, Error> {
        let ran = self.stage(req, links);
        if ran.is_err() {
            // Copies may still be queued on the device memory the caller lent: they end before
            // the failure reaches the caller, who may then free it. (Bounded; a device that
            // does not finish within the timeout has failed for good.)
            let _ = self.copies.wait(0);
            let _ = self.copies.wait(1);
        }
        ran
    }
}

impl StagedBackend {
    /// Runs `req` through the host buffers (see the module docs).
    fn stage(&mut self, req: Request<'_>, links: &mut Links) -> Result<&'static str, Error> {
        let call = req.call;
        match req.work {
            Work::InPlace { buf } => self.pipelined(call, buf.device_ptr().ok_or_else(host_reached)?, links),
            Work::Blocks { buf, blocks } => {
                let ptr = buf.device_ptr().ok_or_else(host_reached)?;
                let c = &mut self.copies;
                c.buffers([ptr.len, 0]).map_err(device)?;
                c.download(ptr, 0).map_err(device)?;
                c.wait(0).map_err(device)?;
                let [host, _] = c.buffers([ptr.len, 0]).map_err(device)?;
                self.host.run(Request { call, work: Work::Blocks { buf: Memory::Host(host), blocks } }, links)?;
                // Reduce-scatter leaves only this rank's block meaningful; allgather, all.
                let up = match call.collective {
                    Collective::Reducescatter(_) => {
                        let mine = &blocks[links.host.rank()];
                        ptr.slice(mine.start, mine.end)
                    }
                    _ => ptr,
                };
                let [host, _] = c.buffers([ptr.len, 0]).map_err(device)?;
                if up.len > 0 {
                    let offset = (up.ptr - ptr.ptr) as usize;
                    host.copy_within(offset..offset + up.len, 0);
                }
                c.upload(0, up).map_err(device)?;
                c.wait(0).map_err(device)?;
                Ok("staged")
            }
            Work::Exchange { send, send_blocks, recv, recv_blocks } => {
                let (src, dst) =
                    (send.device_ptr().ok_or_else(host_reached)?, recv.device_ptr().ok_or_else(host_reached)?);
                let c = &mut self.copies;
                c.buffers([src.len, dst.len]).map_err(device)?;
                c.download(src, 0).map_err(device)?;
                c.wait(0).map_err(device)?;
                let [s, r] = c.buffers([src.len, dst.len]).map_err(device)?;
                let work = Work::Exchange { send: MemoryRef::Host(s), send_blocks, recv: Memory::Host(r), recv_blocks };
                self.host.run(Request { call, work }, links)?;
                c.upload(1, dst).map_err(device)?;
                c.wait(1).map_err(device)?;
                Ok("staged")
            }
        }
    }
}

impl StagedBackend {
    /// Allreduce or broadcast of `ptr`, piece by piece through the two buffers (see the module
    /// docs).
    fn pipelined(&mut self, call: Call, ptr: DevicePtr, links: &mut Links) -> Result<&'static str, Error> {
        let pieces = piece_ranges(ptr.len, self.piece, call.dtype);
        let most = pieces.iter().map(|p| p.len()).max().unwrap_or(0);
        let (c, host) = (&mut self.copies, &mut self.host);
        // Sized before anything is queued: a buffer never grows under a copy.
        c.buffers([most, most]).map_err(device)?;
        c.download(ptr.slice(pieces[0].start, pieces[0].end), 0).map_err(device)?;
        for (k, piece) in pieces.iter().enumerate() {
            let slot = k % 2;
            c.wait(slot).map_err(device)?;
            if let Some(next) = pieces.get(k + 1) {
                // The other buffer's last copy (piece k-1 going up) was queued before this one.
                c.download(ptr.slice(next.start, next.end), 1 - slot).map_err(device)?;
            }
            let buf = &mut c.buffers([most, most]).map_err(device)?[slot][..piece.len()];
            host.run(Request { call, work: Work::InPlace { buf: Memory::Host(buf) } }, links)?;
            c.upload(slot, ptr.slice(piece.start, piece.end)).map_err(device)?;
        }
        c.wait(0).map_err(device)?;
        c.wait(1).map_err(device)?;
        Ok("staged")
    }
}

/// Makes the copies of a device: [`crate::cuda::copies::CudaCopies`] in a job, a
/// [`device::HostStandIn`] in tests.
pub type MakeCopies = Box<dyn Fn(i32, &Tuning) -> Result<Box<dyn DeviceCopies>, String> + Send>;

/// The staged path for every device of the process: a [`StagedBackend`] per device, made when
/// the device's memory first arrives (so a job without GPU memory never loads CUDA).
pub struct OnDevices {
    make: MakeCopies,
    tuning: Tuning,
    backends: HashMap<i32, StagedBackend>,
}

impl OnDevices {
    /// The staged path, with copies from `make`, pieces of `tuning.staged_piece` bytes.
    pub fn new(make: MakeCopies, tuning: Tuning) -> OnDevices {
        OnDevices { make, tuning, backends: HashMap::new() }
    }
}

/// The device of a request's memory, if all of it lies on one.
pub(crate) fn device_of(req: &Request<'_>) -> Option<i32> {
    let place = match &req.work {
        Work::InPlace { buf } | Work::Blocks { buf, .. } => buf.place(),
        Work::Exchange { send, recv, .. } if send.place() == recv.place() => send.place(),
        Work::Exchange { .. } => return None,
    };
    match place {
        Place::Device(d) => Some(d),
        Place::Host => None,
    }
}

impl Backend for OnDevices {
    fn name(&self) -> &'static str {
        "staged"
    }

    fn accepts(&self, req: &Request<'_>) -> bool {
        device_of(req).is_some()
    }

    fn run(&mut self, req: Request<'_>, links: &mut Links) -> Result<&'static str, Error> {
        let d =
            device_of(&req).ok_or_else(|| Error::Invalid { backend: "staged", detail: "no device memory".into() })?;
        let backend = match self.backends.entry(d) {
            Entry::Occupied(b) => b.into_mut(),
            Entry::Vacant(v) => {
                let copies = (self.make)(d, &self.tuning).map_err(|e| device(format!("cuda:{d}: {e}")))?;
                v.insert(StagedBackend::new(copies, self.tuning.clone(), self.tuning.staged_piece))
            }
        };
        backend.run(req, links)
    }
}
