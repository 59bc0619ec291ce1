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

use ferrovod::error::floor_boundary;
pub use ferrovod::error::{MAX_QUOTED, quoted};

/// Another crate's message that may quote input at any length (serde's "invalid type: string
/// ..."), with its middle cut when it is long: the start says what is wrong, the end where
/// (serde ends with the line and column, or with what it expected).
pub fn cut(message: &str) -> String {
    const TAIL: usize = 100;
    if message.len() <= MAX_QUOTED + TAIL + 40 {
        return message.to_string();
    }
    let head = floor_boundary(message, MAX_QUOTED);
    let mut tail = message.len() - TAIL;
    while !message.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{} ...({} bytes cut)... {}", &message[..head], tail - head, &message[tail..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_input_is_cut_and_says_how_much() {
        assert_eq!(quoted("abc"), "\"abc\"");
        let long = "é".repeat(1000); // 2000 bytes, two per char
        let q = quoted(&long);
        assert!(q.len() < MAX_QUOTED + 40, "{q}");
        assert!(q.ends_with("... (1800 more bytes cut)"), "{q}");
        let msg = format!("invalid type: string {long:?}, expected u32 at line 1 column 9");
        let c = cut(&msg);
        assert!(c.len() < 400, "{c}");
        assert!(c.starts_with("invalid type: string \"é"), "{c}");
        assert!(c.ends_with("expected u32 at line 1 column 9"), "{c}");
        assert!(c.contains("bytes cut"), "{c}");
        assert_eq!(cut("short"), "short");
    }
}
