//! NCCL, loaded at run time (issue 13), in layers: `sys` (the C types and signatures),
//! `library` (finding, loading and resolving it, with errors instead of panics), `comm` (one
//! non-blocking communicator, polled against a deadline, aborted on drop) and `backend` (the
//! collectives on CUDA memory, the agreement round that decides NCCL or the staged path).

pub mod backend;
pub mod comm;
pub mod library;
pub mod sys;
