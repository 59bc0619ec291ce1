//! `ferrovod-run`: the launcher that starts, places and supervises ferrovod training processes,
//! without mpirun, ssh or pickle.
//!
//! It starts one process per GPU (or per slot on CPU) on its host, gives each its place in the
//! job through the environment, serves the rendezvous store (in local mode, and as task 0 of a
//! plan), forwards every process's output line by line with a `[rank]` prefix, and makes sure
//! the job ends cleanly: on success, on the first failure (every other process is stopped and
//! the launcher exits with the failing rank's code), on SIGINT/SIGTERM (forwarded), and when the
//! launcher or whatever started it is killed (nothing it started survives). A Spark barrier
//! task runs it with a plan; a user runs it locally instead of mpirun, horovodrun or torchrun.
//!
//! | layer | module | what it does |
//! |-------|--------|--------------|
//! | command line | [`cli`] | options, each knob also a `FERROVOD_*` variable |
//! | run | [`settings`], [`launch`] | the settings of a run; input → store → coordination → job → [`Report`] |
//! | input | [`input`], [`plan`], [`placement`] | the secret, the barrier plan (one builder, strict validation); ranks and environments |
//! | job | `job` (private) | starting this task's processes, the event loop, teardown |
//! | outcome | [`failure`], [`report`], [`events`] | how a rank or a task failed; how the job ended; the JSON-lines channel to whatever started the launcher |
//! | coordination | [`coord`] | failure propagation between the tasks' launchers through the store |
//! | supervision | [`supervisor`], [`reaper`], [`output`] | spawning into process groups, reaping, killing, output forwarding |
//! | system | [`os`] | signalfd, process groups, waitpid, prctl, inherited sockets (the general helpers are in `ferrovod::os`) |
//!
//! # Usage
//!
//! 1. Locally: `ferrovod-run -np 4 -- python train.py` starts ranks 0..3 on this host, with the
//!    store on 127.0.0.1. With `--gpus 0,1,2,3` each process sees those four GPUs, in that
//!    order, and its own is `cuda:<local_rank>`.
//! 2. From a plan: `ferrovod-run --plan plan.json -- python train.py`, one launcher per task of
//!    the plan (one per host), all with the same `FERROVOD_SECRET` in their environment. Task 0's
//!    launcher serves the store on the plan's rendezvous address.
//! 3. From a Spark barrier task: task 0 binds and listens on the rendezvous socket first,
//!    publishes its port through the one `allGather`, then executes
//!    `ferrovod-run --plan - --listen-fd FD -- CMD` with the socket inherited and the plan on
//!    standard input: no window in which another process could take the port.
//! 4. Options: `--output-dir DIR` for per-rank files, `--no-prefix`, `--grace-period`,
//!    `--connect-timeout`, `--store-linger`, `--no-watch-parent`, `-v`; `ferrovod-run --help`
//!    lists them with their `FERROVOD_*` variables.
//! 5. From a program that wants structured results (the Python package, a Spark task):
//!    `--events-fd FD [--events-output]` writes every failure and the report, and with
//!    `--events-output` the ranks' output lines, as JSON lines to the inherited descriptor FD;
//!    the schema is in [`events`].
//! 6. From Rust (a future worker pool, tests): [`cli::Cli`] → [`settings::Launch`] →
//!    [`launch::run`] → [`Report`], or [`supervisor::Supervisor`] directly.
//!
//! ```no_run
//! use clap::Parser;
//! use ferrovod_runner::{cli, launch};
//!
//! let cli = cli::Cli::parse_from(cli::normalize_args(["ferrovod-run", "-np", "2", "--", "true"].map(Into::into)));
//! let report = launch::run(&cli.into_launch()?)?;
//! assert_eq!(report.exit_code(), 0);
//! # Ok::<(), ferrovod_runner::Error>(())
//! ```
//!
//! # The plan
//!
//! ```json
//! {
//!   "version": 1,
//!   "job_id": "spark-stage-12-attempt-0",
//!   "rendezvous": "10.0.0.1:29400",
//!   "task_index": 1,
//!   "tasks": [
//!     {"index": 0, "host": "10.0.0.1", "gpus": [0, 1], "slots": 2},
//!     {"index": 1, "host": "10.0.0.2", "gpus": [0, 1], "slots": 2}
//!   ]
//! }
//! ```
//!
//! | field | type | meaning |
//! |-------|------|---------|
//! | `version` | integer | schema version, must be 1 |
//! | `job_id` | string (1-256 chars) | names the job; the launchers' store keys start with it |
//! | `rendezvous` | `"host:port"` (`"[v6]:port"`) | the store, served by task 0's launcher |
//! | `task_index` | integer | which task this launcher is |
//! | `tasks` | non-empty list | every task of the job, indices exactly 0..N-1 in any order |
//! | `tasks[].index` | integer | the task's index; ranks are numbered task by task in index order |
//! | `tasks[].host` | string | the host as the others reach it; equal strings mean one host |
//! | `tasks[].gpus` | list of integers ≥ 0, no repeats | CUDA device ids: one process per GPU |
//! | `tasks[].slots` | integer | processes to start when `gpus` is empty (ignored otherwise) |
//!
//! Every field is required and no other is allowed. A malformed plan (not JSON, a missing or
//! unknown field, a key given twice in one object, a duplicate or missing task index, a GPU id
//! that is not a non-negative integer, an empty task list, a rendezvous address that does not
//! parse, a `task_index` not in the plan, a task with no processes) is refused with exit code 2
//! and a message that names the problem, quoting at most 200 bytes of any value; nothing is
//! started. At most 16 MiB of plan are read, from any source (a file, a FIFO, standard input),
//! within the connect timeout; a signal while the launcher waits for its plan ends it with
//! 128 + N, as it would end a job.
//!
//! # What each process gets
//!
//! `FERROVOD_RANK`, `FERROVOD_SIZE`, `FERROVOD_LOCAL_RANK`, `FERROVOD_LOCAL_SIZE`,
//! `FERROVOD_CROSS_RANK`, `FERROVOD_CROSS_SIZE` (Horovod's definitions, by host string),
//! `FERROVOD_RENDEZVOUS`, `FERROVOD_SECRET` (only ever in the environment), the torchrun names
//! `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR` (the rendezvous host)
//! and `MASTER_PORT`, horovodrun's `HOROVOD_RANK`, `HOROVOD_SIZE`, `HOROVOD_LOCAL_RANK`,
//! `HOROVOD_LOCAL_SIZE`, `HOROVOD_CROSS_RANK` and `HOROVOD_CROSS_SIZE`, and
//! `CUDA_VISIBLE_DEVICES` with its host's GPUs in local-rank order, so that a script's
//! `torch.cuda.set_device(local_rank)` picks its own (empty on CPU tasks of a plan; left alone in
//! local mode without `--gpus`; see [`placement`]). `MASTER_PORT` is not the ferrovod store's
//! port: torch.distributed binds its own store there, so task 0's launcher picks a port that is
//! free on its host when the job starts (bind to port 0, read it, close) and publishes it to
//! the other launchers through the ferrovod store. torch binds it moments later; like torchrun,
//! this leaves a small window in which another program could take it.
//!
//! Each process also inherits every descriptor that the launcher inherited without
//! close-on-exec (the launcher's own are all close-on-exec): `ferrovod.run` and the Spark tasks
//! hand the ranks the function's spec and a result slot per rank that way, as memfds, so that
//! nothing of a job is written to disk.
//!
//! # Ending a job
//!
//! Each process leads its own process group. The first process to end badly stops the job:
//! SIGTERM to every group, SIGKILL after the grace period. In a plan, its launcher publishes the
//! failure in the store and every other launcher stops its processes within a second and exits
//! with the same code; task 0's launcher keeps the store up until the others are done. The
//! launcher exits with the first failing rank's code and prints one line naming rank, host and
//! status. If the launcher itself is killed, the kernel kills its children
//! (`PR_SET_PDEATHSIG`) and the [`reaper`] kills their process groups; if the launcher's parent
//! dies, the launcher stops the job.
//!
//! Processes the ranks start outside their groups (`setsid`, `start_new_session=True`) end
//! with the job too: the launcher finds them in `/proc` (descendants of the ranks, orphans
//! reparented to the launcher, which is a child subreaper, and anything carrying the job's
//! `FERROVOD_JOB_TAG`) and signals them with the groups; the job is over when they are gone.
//! When the launcher is SIGKILLed, its reaper kills every process carrying the tag. The limits
//! of that guarantee are in [`supervisor`].
#![warn(missing_docs)]

pub mod cli;
pub mod coord;
pub mod error;
pub mod events;
pub mod failure;
pub mod input;
mod job;
pub mod launch;
pub mod os;
pub mod output;
pub mod placement;
pub mod plan;
pub mod reaper;
pub mod report;
pub mod settings;
pub mod supervisor;

pub use error::Error;
pub use launch::run;
pub use plan::{Plan, PlanError, Task};
pub use report::{Outcome, Report};
pub use settings::{Launch, Mode};
