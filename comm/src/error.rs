//! The crate's error type. Every message names this rank, the operation, and the peer or value
//! that was wrong.

use std::fmt;

use crate::collective::{Call, Collective};
use crate::{bootstrap, transport};

/// Result alias for the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in ferrovod.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// An environment knob or builder value is missing or malformed.
    #[error("configuration: {name}: {detail}")]
    Config {
        /// The variable or builder field.
        name: &'static str,
        /// What is wrong with it.
        detail: String,
    },

    /// The caller passed arguments that cannot work (buffer sizes, root, splits).
    #[error("rank {rank}: {op}: invalid argument: {detail}")]
    InvalidArgument {
        /// This rank.
        rank: usize,
        /// The operation called.
        op: Operation,
        /// What is wrong.
        detail: String,
    },

    /// Joining the job failed: store, authentication, rendezvous or connecting peers.
    #[error("rank {rank}: start-up failed: {cause}")]
    Bootstrap {
        /// This rank.
        rank: usize,
        /// The cause (part of the message, so that one line tells the whole story).
        cause: bootstrap::Error,
    },

    /// A collective failed on this rank; this rank saw the cause itself.
    #[error("rank {rank}: {op} failed: {cause}")]
    Collective {
        /// This rank.
        rank: usize,
        /// The collective, with its sequence number, dtype and size.
        op: Operation,
        /// What the transport saw (part of the message).
        cause: transport::Error,
    },

    /// A backend could not run a collective: device memory work failed, or a request it
    /// cannot take.
    #[error("rank {rank}: {op} failed in the {backend} backend: {detail}")]
    Backend {
        /// This rank.
        rank: usize,
        /// The collective.
        op: Operation,
        /// The backend.
        backend: &'static str,
        /// What failed.
        detail: String,
    },

    /// Two ranks called different collectives, or the same one with different arguments.
    #[error("rank {rank}: {op} does not match rank {peer}, which called {theirs}")]
    Mismatch {
        /// This rank.
        rank: usize,
        /// The collective this rank called.
        op: Operation,
        /// The rank that disagrees.
        peer: usize,
        /// What that rank called.
        theirs: Theirs,
    },

    /// A collective failed because another rank reported a failure first.
    #[error("rank {rank}: {op} failed: rank {by} reported: {reason}")]
    Aborted {
        /// This rank.
        rank: usize,
        /// The collective this rank was running.
        op: Operation,
        /// The rank that saw the root cause.
        by: usize,
        /// What kind of failure it saw.
        fault: Fault,
        /// The ranks it blamed (the dead, silent or disagreeing peers).
        culprits: Vec<usize>,
        /// Its description of the root cause.
        reason: String,
    },

    /// Ranks submitted the same tensor name with different arguments.
    #[error("rank {rank}: tensor {name:?}: ranks disagree on {field}: {values}")]
    TensorMismatch {
        /// This rank.
        rank: usize,
        /// The tensor.
        name: String,
        /// What differs: op, root, dtype, shape or group.
        field: &'static str,
        /// Each side's value, with its ranks.
        values: String,
    },

    /// Every rank agrees on a tensor that cannot run now: an allgather, broadcast, alltoall or
    /// reducescatter while a rank has joined (Horovod's error response). The engine goes on.
    #[error("rank {rank}: tensor {name:?}: {op} is not supported while rank(s) {joined:?} have joined")]
    Unsupported {
        /// This rank.
        rank: usize,
        /// The tensor.
        name: String,
        /// Its collective.
        op: Operation,
        /// The ranks that have joined.
        joined: Vec<usize>,
    },

    /// Tensors waited for other ranks longer than `FERROVOD_STALL_TIMEOUT`.
    #[error("rank {rank}: stalled: {detail}")]
    Stalled {
        /// This rank.
        rank: usize,
        /// Which tensors waited how long for which ranks.
        detail: String,
        /// The ranks they waited for (empty when this rank only received rank 0's verdict in
        /// a round, which names them in `detail`).
        culprits: Vec<usize>,
    },

    /// The engine was shut down (by this rank or another) before this request completed.
    /// A failure of the engine is not this: requests get the failure itself.
    #[error("rank {rank}: engine stopped: {reason}")]
    EngineStopped {
        /// This rank.
        rank: usize,
        /// Why.
        reason: String,
    },

    /// The communicator failed earlier and can no longer be used.
    #[error("rank {rank}: communicator is unusable after an earlier failure: {earlier}")]
    Broken {
        /// This rank.
        rank: usize,
        /// The earlier failure.
        earlier: Box<Error>,
    },
}

/// The kind of a collective's failure, kept typed from the transport to the caller (and across
/// ranks, in the job's first-failure record), so that bindings can raise the right class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Fault {
    /// A peer closed its links or its connection broke: it exited, crashed or aborted.
    PeerLost,
    /// A peer sent nothing for `FERROVOD_TIMEOUT`.
    Timeout,
    /// Ranks called different collectives, or the same with different arguments.
    Mismatch,
    /// Tensors waited for ranks that did not submit them past `FERROVOD_STALL_TIMEOUT`.
    Stall,
    /// Anything else: a protocol violation, an OS error.
    Other,
}

impl Fault {
    /// The kind of a transport failure.
    pub fn of(cause: &transport::Error) -> Fault {
        use transport::Error as T;
        match cause {
            T::Closed { .. } | T::Io { .. } => Fault::PeerLost,
            T::Timeout { .. } => Fault::Timeout,
            T::TagMismatch { .. } | T::LengthMismatch { .. } => Fault::Mismatch,
            T::Protocol { .. } | T::BadPeer { .. } | T::Unusable | T::JobFailed => Fault::Other,
        }
    }
}

impl Error {
    /// The kind of failure behind a collective error; `None` for errors that are not a
    /// collective's failure (configuration, arguments, start-up, shutdown).
    pub fn fault(&self) -> Option<Fault> {
        match self {
            Error::Collective { cause, .. } => Some(Fault::of(cause)),
            Error::Mismatch { .. } | Error::TensorMismatch { .. } => Some(Fault::Mismatch),
            Error::Aborted { fault, .. } => Some(*fault),
            Error::Stalled { .. } => Some(Fault::Stall),
            Error::Broken { earlier, .. } => earlier.fault(),
            Error::Backend { .. } => Some(Fault::Other),
            Error::Config { .. }
            | Error::InvalidArgument { .. }
            | Error::Unsupported { .. }
            | Error::Bootstrap { .. }
            | Error::EngineStopped { .. } => None,
        }
    }

    /// The ranks this error blames: a dead or silent peer, the rank that disagreed.
    pub fn culprits(&self) -> Vec<usize> {
        match self {
            Error::Collective { cause: transport::Error::Timeout { peers, .. }, .. } => peers.clone(),
            Error::Collective { cause, .. } => cause.peer().into_iter().collect(),
            Error::Mismatch { peer, .. } => vec![*peer],
            Error::Stalled { culprits, .. } => culprits.clone(),
            Error::Aborted { culprits, .. } => culprits.clone(),
            Error::Broken { earlier, .. } => earlier.culprits(),
            _ => Vec::new(),
        }
    }

    /// The same error, seen as part of the engine's negotiation round while this rank had
    /// `tensors` (the first few names) and `more` others pending.
    pub fn in_negotiation(self, tensors: Vec<String>, more: usize) -> Error {
        let round = |op: &Operation| {
            Operation::Negotiation(Box::new(Negotiation { tensors: tensors.clone(), more, call: op.call() }))
        };
        match self {
            Error::Collective { rank, op, cause } => Error::Collective { rank, op: round(&op), cause },
            Error::Mismatch { rank, op, peer, theirs } => Error::Mismatch { rank, op: round(&op), peer, theirs },
            Error::Aborted { rank, op, by, fault, culprits, reason } => {
                Error::Aborted { rank, op: round(&op), by, fault, culprits, reason }
            }
            Error::Backend { rank, op, backend, detail } => Error::Backend { rank, op: round(&op), backend, detail },
            other => other,
        }
    }

    /// The operation the error happened in, where there was one.
    pub fn operation(&self) -> Option<&Operation> {
        match self {
            Error::InvalidArgument { op, .. }
            | Error::Unsupported { op, .. }
            | Error::Collective { op, .. }
            | Error::Backend { op, .. }
            | Error::Mismatch { op, .. }
            | Error::Aborted { op, .. } => Some(op),
            Error::Broken { earlier, .. } => earlier.operation(),
            _ => None,
        }
    }

    /// The rank that raised this error.
    pub fn rank(&self) -> Option<usize> {
        match self {
            Error::Config { .. } => None,
            Error::InvalidArgument { rank, .. }
            | Error::Bootstrap { rank, .. }
            | Error::Collective { rank, .. }
            | Error::Backend { rank, .. }
            | Error::Mismatch { rank, .. }
            | Error::Aborted { rank, .. }
            | Error::TensorMismatch { rank, .. }
            | Error::Unsupported { rank, .. }
            | Error::Stalled { rank, .. }
            | Error::EngineStopped { rank, .. }
            | Error::Broken { rank, .. } => Some(*rank),
        }
    }
}

/// What was running when an error happened. Kept typed from the transport to the caller, so that
/// a binding hands it on (Python's `op` and `seq` attributes) without parsing a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// A collective, refused before it ran (its arguments).
    Collective(Collective),
    /// One call of a collective, as it went on the wire.
    Call(Call),
    /// The engine's round that agrees which tensors every rank has submitted (boxed: it is
    /// rare, and errors stay small).
    Negotiation(Box<Negotiation>),
    /// The engine waiting for its peers' next round.
    Waiting,
    /// Join: this rank has no more tensors for the others.
    Join,
    /// Reading a completed request's output.
    Output,
    /// Joining a process set (its id).
    ProcessSet(u32),
}

/// A negotiation round, as an error names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Negotiation {
    /// The first few tensors this rank had pending.
    pub tensors: Vec<String>,
    /// How many more it had.
    pub more: usize,
    /// The round's own collective, when that is what failed.
    pub call: Option<Call>,
}

impl Operation {
    /// The short name: the collective's (`allreduce`), or `negotiation`, `waiting`, `join`,
    /// `output`, `process set`.
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Collective(c) => c.name(),
            Operation::Call(c) => c.collective.name(),
            Operation::Negotiation(_) => "negotiation",
            Operation::Waiting => "waiting",
            Operation::Join => "join",
            Operation::Output => "output",
            Operation::ProcessSet(_) => "process set",
        }
    }

    /// The call on the wire, where one was running.
    pub fn call(&self) -> Option<Call> {
        match self {
            Operation::Call(c) => Some(*c),
            Operation::Negotiation(n) => n.call,
            _ => None,
        }
    }
}

impl From<Collective> for Operation {
    fn from(c: Collective) -> Operation {
        Operation::Collective(c)
    }
}

impl From<Call> for Operation {
    fn from(c: Call) -> Operation {
        Operation::Call(c)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::Collective(c) => f.write_str(c.name()),
            Operation::Call(c) => write!(f, "{c}"),
            Operation::Negotiation(n) => {
                let Negotiation { tensors, more, call } = &**n;
                if tensors.is_empty() {
                    f.write_str("negotiating (nothing pending here)")?;
                } else {
                    let names: Vec<String> = tensors.iter().map(|n| quoted(n)).collect();
                    write!(f, "negotiating {}", names.join(", "))?;
                    if *more > 0 {
                        write!(f, " and {more} more")?;
                    }
                }
                match call {
                    Some(c) => write!(f, ": {c}"),
                    None => Ok(()),
                }
            }
            Operation::Waiting => f.write_str("waiting for peers"),
            Operation::Join => f.write_str("join"),
            Operation::Output => f.write_str("output"),
            Operation::ProcessSet(id) => write!(f, "process set {id}"),
        }
    }
}

/// What the disagreeing rank of a [`Error::Mismatch`] called.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Theirs {
    /// Another call.
    Call(Call),
    /// A tag that is not one of ours.
    Unknown(transport::Tag),
    /// The same call with another number of bytes.
    Bytes {
        /// Their bytes.
        theirs: u64,
        /// This rank's.
        ours: u64,
    },
}

impl fmt::Display for Theirs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Theirs::Call(c) => write!(f, "{c}"),
            Theirs::Unknown(tag) => write!(f, "an unknown operation (tag {tag:#x})"),
            Theirs::Bytes { theirs, ours } => {
                write!(f, "the same operation with {theirs} bytes where this rank has {ours}")
            }
        }
    }
}

/// Most bytes of one piece of input that an error message quotes.
pub const MAX_QUOTED: usize = 200;

/// The largest char boundary of `s` at or below `at`.
pub fn floor_boundary(s: &str, at: usize) -> usize {
    (0..=at.min(s.len())).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0)
}

/// `s` quoted for an error message (as `{:?}` quotes it), cut once the quoted form reaches
/// [`MAX_QUOTED`] bytes, with a note of how many were left out: a 10 MB field must not become
/// a 10 MB message, nor 200 control characters a 1,200-byte one (each quotes as `\u{7f}`).
pub fn quoted(s: &str) -> String {
    let mut width = 0;
    let end = s
        .char_indices()
        .find(|&(_, c)| {
            width += c.escape_debug().map(char::len_utf8).sum::<usize>();
            width > MAX_QUOTED
        })
        .map_or(s.len(), |(i, _)| i);
    if end == s.len() {
        return format!("{s:?}");
    }
    let head = &s[..end];
    format!("{head:?}... ({} more bytes cut)", s.len() - head.len())
}

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

    #[test]
    fn control_characters_count_as_quoted() {
        // Found by the plan fuzzer: 200 bytes of DEL quote as 1,200.
        let q = quoted(&"\u{7f}".repeat(1000));
        assert!(q.len() < MAX_QUOTED + 40, "{} bytes: {q}", q.len());
        assert!(q.ends_with("more bytes cut)"), "{q}");
        assert_eq!(quoted("a\u{7f}"), "\"a\\u{7f}\"");
    }
}
