//! The settings of one launcher run ([`Launch`]), as the command line gives them
//! ([`crate::cli`]); [`crate::launch::run`] carries them out.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use crate::output::OutputOptions;

/// Where the plan comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `-np N`: N processes on this host; the launcher builds the plan and serves the store.
    Local {
        /// Number of processes.
        np: usize,
        /// GPU ids, one per process; `None` leaves `CUDA_VISIBLE_DEVICES` as inherited.
        gpus: Option<Vec<u32>>,
    },
    /// `--plan PATH`, or standard input when `None`.
    Plan(Option<PathBuf>),
}

/// Everything one launcher run needs.
#[derive(Clone, Debug)]
pub struct Launch {
    /// Local or planned.
    pub mode: Mode,
    /// The program and its arguments.
    pub command: Vec<OsString>,
    /// Task 0: an inherited, already listening socket for the store.
    pub listen_fd: Option<RawFd>,
    /// An inherited descriptor to write the events channel to (see [`crate::events`]).
    pub events_fd: Option<RawFd>,
    /// Send the ranks' output lines through the events channel instead of the launcher's
    /// stdout and stderr.
    pub events_output: bool,
    /// Output forwarding.
    pub output: OutputOptions,
    /// Between SIGTERM (or the forwarded signal) and SIGKILL.
    pub grace: Duration,
    /// Waiting for the store, the plan on stdin, and task 0.
    pub connect_timeout: Duration,
    /// Task 0: how long to keep the store up for the other launchers.
    pub store_linger: Duration,
    /// Stop the job when the launcher's parent dies.
    pub watch_parent: bool,
    /// 0: only the failure summary; 1: start and end; 2: every event.
    pub verbose: u8,
}
