//! What the launcher knows of a failure: how a process ended ([`ExitKind`]), why a launcher
//! stopped its job ([`Cause`]), and the [`Failure`] the launchers of a job agree on (through
//! [`crate::coord`]) and report (through [`crate::report`] and [`crate::events`]).

use std::fmt;

use ferrovod::os::signal_name;
use serde::{Deserialize, Serialize};

use crate::os::WaitStatus;

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitKind {
    /// It exited with this code.
    Code(i32),
    /// This signal killed it.
    Signal(i32),
}

impl ExitKind {
    /// The shell's convention: the code, or 128 + the signal.
    pub fn exit_code(self) -> i32 {
        match self {
            ExitKind::Code(c) => c,
            ExitKind::Signal(s) => signal_exit_code(s),
        }
    }

    /// Exited with code 0.
    pub fn success(self) -> bool {
        self == ExitKind::Code(0)
    }
}

impl From<WaitStatus> for ExitKind {
    fn from(w: WaitStatus) -> ExitKind {
        match w {
            WaitStatus::Exited(c) => ExitKind::Code(c),
            WaitStatus::Signaled(s) => ExitKind::Signal(s),
        }
    }
}

impl fmt::Display for ExitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitKind::Code(c) => write!(f, "exited with code {c}"),
            ExitKind::Signal(s) => {
                write!(f, "was killed by {} (exit code {})", ferrovod::os::signal_name(s), signal_exit_code(s))
            }
        }
    }
}

/// The shell's exit code for signal `s`: 128 + `s`. A record from another launcher may carry
/// any number, so it saturates instead of overflowing.
fn signal_exit_code(s: i32) -> i32 {
    128i32.saturating_add(s)
}

/// Why a launcher stopped its job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cause {
    /// A rank ended badly.
    Rank {
        /// Its global rank.
        rank: usize,
        /// How it ended.
        status: ExitKind,
    },
    /// A process could not be started.
    Start {
        /// The rank that could not start.
        rank: usize,
        /// Why.
        detail: String,
        /// The exit code this implies (127: not found, 126: not executable, 1: other).
        code: i32,
    },
    /// The launcher received a signal.
    Signal(i32),
    /// The launcher's parent died (a cancelled Spark task).
    ParentDied,
    /// The launcher lost the rendezvous store.
    StoreLost(String),
}

/// A failure as the launchers tell each other about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The task whose launcher saw it.
    pub task: usize,
    /// That task's host.
    pub host: String,
    /// What happened.
    pub cause: Cause,
}

impl Failure {
    /// The exit code every launcher of the job returns for it.
    pub fn exit_code(&self) -> i32 {
        match &self.cause {
            Cause::Rank { status, .. } => status.exit_code(),
            Cause::Start { code, .. } => *code,
            Cause::Signal(s) => signal_exit_code(*s),
            Cause::ParentDied | Cause::StoreLost(_) => 1,
        }
    }

    /// One line naming what failed, where.
    pub fn describe(&self) -> String {
        match &self.cause {
            Cause::Rank { rank, status } => format!("rank {rank} (host {}, task {}) {status}", self.host, self.task),
            Cause::Start { rank, detail, .. } => {
                format!("rank {rank} (host {}, task {}) could not start: {detail}", self.host, self.task)
            }
            Cause::Signal(s) => {
                format!("the launcher of task {} (host {}) received {}", self.task, self.host, signal_name(*s))
            }
            Cause::ParentDied => {
                format!("the launcher of task {} (host {}) lost its parent process", self.task, self.host)
            }
            Cause::StoreLost(e) => {
                format!("the launcher of task {} (host {}) lost the rendezvous store: {e}", self.task, self.host)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `fuzz/fuzz_targets/first_failure.rs`: another launcher's record (read from the
    /// store) naming a signal near `i32::MAX` overflowed `128 + signal` in its exit code and
    /// its message, a panic in a debug build.
    #[test]
    fn a_record_with_any_signal_number_describes_itself() {
        let crash = [
            0x01, 0x00, 0x00, 0x21, 0x01, 0xea, 0xff, 0xff, 0xff, 0x0f, 0xff, 0xff, 0xff, 0x01, 0xff, 0xff, 0x00, 0x00,
            0xff, 0xff, 0x00, 0x75,
        ];
        let f: Failure = postcard::from_bytes(&crash).unwrap();
        assert!(
            matches!(f.cause, Cause::Rank { rank: 33, status: ExitKind::Signal(s) } if s > i32::MAX - 128),
            "{f:?}"
        );
        assert_eq!(f.exit_code(), i32::MAX);
        assert!(f.describe().ends_with(&format!("(exit code {})", i32::MAX)), "{}", f.describe());
        let launcher = Failure { task: 0, host: "h".into(), cause: Cause::Signal(i32::MAX) };
        assert_eq!(launcher.exit_code(), i32::MAX);
        assert_eq!(ExitKind::Signal(9).exit_code(), 137, "ordinary signals keep the shell's convention");
    }
}
