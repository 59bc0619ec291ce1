//! The launcher's errors: what stops it before or while it sets a job up. How a job that did
//! start ended is a [`crate::Report`], not an error.
//!
//! A message that quotes what a user or a peer gave (a plan's field, a path, a value) quotes at
//! most [`MAX_QUOTED`] bytes of it and says how much it left out: [`quoted`] for our own
//! messages, [`cut`] for a message of another crate that may echo input (serde's).

use std::io;

use crate::plan::PlanError;

/// Why the launcher could not run the job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line or the launcher's environment is inconsistent (nothing was started).
    #[error("{0}")]
    Usage(String),
    /// The plan is malformed (nothing was started).
    #[error("plan from {origin}: {source}")]
    Plan {
        /// Where it came from: a path or "standard input".
        origin: String,
        /// What is wrong with it.
        #[source]
        source: PlanError,
    },
    /// The plan could not be read (nothing was started).
    #[error("cannot read the plan from {origin}: {source}")]
    PlanRead {
        /// Where it should have come from.
        origin: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A signal asked the launcher to stop before anything was started (while it waited for
    /// its plan).
    #[error("received {} while reading the plan from {origin}; nothing was started", ferrovod::os::signal_name(*.signal))]
    Signal {
        /// The signal number.
        signal: i32,
        /// Where the plan was coming from.
        origin: String,
    },
    /// The rendezvous store could not be started.
    #[error("{what}: {source}")]
    Store {
        /// What was being done, with the address.
        what: String,
        /// The store's error.
        #[source]
        source: ferrovod::bootstrap::Error,
    },
    /// An operating-system facility failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The launcher's exit code for this error: 2 for bad input, 128 + N for signal N, 1
    /// otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Plan { .. } | Error::PlanRead { .. } => 2,
            Error::Signal { signal, .. } => 128 + signal,
            Error::Store { .. } | Error::Io { .. } => 1,
        }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

pub use ferrovod::error::{MAX_QUOTED, cut, quoted};
