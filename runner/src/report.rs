//! How a launcher run ended: the [`Report`], its exit code and the one line printed about it.

use crate::failure::{Cause, Failure};

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every process exited 0.
    Success,
    /// The job was stopped.
    Failed {
        /// The job's first failure.
        failure: Failure,
        /// Seen by this launcher (not learnt from another task's).
        local: bool,
    },
}

/// What a launcher run reports.
#[derive(Clone, Debug)]
pub struct Report {
    /// How the job ended.
    pub outcome: Outcome,
    /// Processes this launcher started.
    pub started: usize,
    /// Of those, how many were still running when the job was stopped.
    pub stopped: usize,
    /// Processes of the job (all tasks).
    pub world: usize,
    /// Process groups that could not be emptied, and processes outside them (started by the
    /// ranks in sessions of their own) that could not be ended, even with SIGKILL.
    pub leftovers: usize,
}

impl Report {
    /// The launcher's exit code: 0, the first failing rank's code (128 + signal for a signal),
    /// 128 + the signal the launcher received, 126/127 when the command cannot be executed or
    /// found, 1 for a lost parent or store.
    pub fn exit_code(&self) -> i32 {
        match &self.outcome {
            Outcome::Success => 0,
            Outcome::Failed { failure, .. } => failure.exit_code(),
        }
    }

    /// The one-line summary printed on failure (and on success with `-v`).
    pub fn summary(&self) -> String {
        match &self.outcome {
            Outcome::Success => format!("all {} processes exited with code 0", self.started),
            Outcome::Failed { failure, local } => {
                let what = match failure.cause {
                    Cause::Signal(_) | Cause::ParentDied => "job stopped",
                    _ => "job failed",
                };
                let mut s = format!("{what}: {}", failure.describe());
                let other = if matches!(failure.cause, Cause::Rank { .. }) { "other " } else { "" };
                match (local, self.stopped) {
                    (_, 0) => {}
                    (true, n) => s.push_str(&format!("; stopped {n} {other}process{}", plural(n))),
                    (false, n) => s.push_str(&format!("; stopped this task's {n} process{}", plural(n))),
                }
                if self.leftovers > 0 {
                    s.push_str(&format!(
                        "; {} process group(s) or stray process(es) could not be killed",
                        self.leftovers
                    ));
                }
                s
            }
        }
    }
}

/// Writes `ferrovod-run: MSG` to stderr; a closed stderr is ignored, never a panic.
pub fn say(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "ferrovod-run: {msg}");
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "es" }
}
