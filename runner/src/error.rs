//! The launcher's errors: what stops it before or while it sets a job up. How a job that did
//! start ended is a [`crate::Report`], not an error.

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
    /// The launcher's exit code for this error: 2 for bad input, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Plan { .. } | Error::PlanRead { .. } => 2,
            Error::Store { .. } | Error::Io { .. } => 1,
        }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}
