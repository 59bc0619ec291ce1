//! NCCL, loaded at run time (issue 13). Built so far: the loader and the resolved C interface
//! (`sys`: types and signatures; `library`: finding, loading and resolving it, with errors
//! instead of panics). Not yet built: the backend itself (communicators over the unique id in
//! the store, non-blocking with polled async errors and abort); until it is, GPU memory runs
//! on the staged path, and `FERROVOD_GPU_BACKEND=nccl` gets [`NotBuilt`]'s error.

pub mod library;
pub mod sys;

use super::{Backend, Error, Links, Request};

/// What `FERROVOD_GPU_BACKEND=nccl` gets until the NCCL backend is built: every GPU collective
/// fails saying so, rather than running somewhere else than asked.
pub struct NotBuilt;

impl Backend for NotBuilt {
    fn name(&self) -> &'static str {
        "nccl"
    }

    fn accepts(&self, req: &Request<'_>) -> bool {
        !req.work.is_host()
    }

    fn run(&mut self, _req: Request<'_>, _links: &mut Links) -> Result<&'static str, Error> {
        Err(Error::Device {
            backend: "nccl",
            detail: "FERROVOD_GPU_BACKEND=nccl, but this build has no NCCL backend yet; \
                     auto or staged run GPU collectives through host memory"
                .into(),
        })
    }
}
