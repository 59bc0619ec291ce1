//! NCCL, loaded at run time (issue 13). Built so far: the loader and the resolved C interface
//! (`sys`: types and signatures; `library`: finding, loading and resolving it, with errors
//! instead of panics). Not yet built: the backend itself (communicators over the unique id in
//! the store, non-blocking with polled async errors and abort) and CUDA's side (streams,
//! events, pinned memory), which need a GPU to be tested.

pub mod library;
pub mod sys;
