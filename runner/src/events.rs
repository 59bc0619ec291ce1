//! The launcher's structured channel: JSON lines on an inherited descriptor (`--events-fd FD`),
//! for whatever started the launcher (the Python package, a Spark task, the coming worker pool)
//! to read instead of parsing the launcher's text.
//!
//! # Schema, version 1
//!
//! One JSON object per line, UTF-8, at most [`MAX_EVENT_LINE`] bytes with its newline. Every
//! object has `"v"` (the schema version, [`VERSION`]) and `"event"` (its kind). A reader skips
//! kinds it does not know; a new field or kind keeps the version, a changed meaning bumps it.
//! One writer: the launcher writes each line whole, under one lock, so lines never interleave.
//!
//! | `event`   | when | fields |
//! |-----------|------|--------|
//! | `output`  | each line a rank writes, with `--events-output` (instead of the launcher's stdout/stderr) | `rank`, `stream` (`"stdout"`/`"stderr"`), `line` (without its newline, invalid UTF-8 replaced, at most [`MAX_TEXT`] bytes), `cut` (bytes dropped from the end, usually 0) |
//! | `failure` | each failure the launcher records or adopts, as it happens | `local` (seen by this launcher, not learnt from another task's), `failure` (below) |
//! | `report`  | last, when the job ended | `outcome` (`"success"`/`"failed"`), `exit_code`, `failure` (the job's first failure, or null), `local`, `started`, `stopped`, `world`, `leftovers`, `summary` (the line the launcher prints) |
//! | `error`   | last, instead of `report`, when the launcher could not run the job (bad plan, bad command line, a system error) | `exit_code`, `message` |
//!
//! A `failure` object: `task`, `host`, `kind` (`"rank"`: a rank ended badly; `"start"`: a rank
//! could not start; `"signal"`: the launcher received a signal; `"parent_died"`: the launcher's
//! parent died; `"store_lost"`: the launcher lost the rendezvous store), `rank` (for `rank` and
//! `start`, else null), `exit_code` (what every launcher of the job exits with), `signal` (the
//! signal that killed the rank, or that the launcher received, else null), `detail` (for
//! `start` and `store_lost`, else null), `message` (one line naming what failed, where).
//!
//! ```json
//! {"v":1,"event":"output","rank":1,"stream":"stderr","line":"ValueError: boom","cut":0}
//! {"v":1,"event":"failure","local":true,"failure":{"task":0,"host":"127.0.0.1","kind":"rank","rank":1,"exit_code":7,"signal":null,"detail":null,"message":"rank 1 (host 127.0.0.1, task 0) exited with code 7"}}
//! {"v":1,"event":"report","outcome":"failed","exit_code":7,"failure":{...},"local":true,"started":2,"stopped":1,"world":2,"leftovers":0,"summary":"job failed: ..."}
//! ```
//!
//! Writes never block for long: each piece waits at most [`WRITE_TIMEOUT`] for the reader,
//! after which the channel is given up (and the job goes on). The descriptor is made
//! close-on-exec, so the ranks do not inherit it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrovod::os::{PollFd, poll};
use serde::{Deserialize, Serialize};

use crate::failure::{Cause, ExitKind, Failure};
use crate::report::{Outcome, Report};

/// Which of a child's streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output: forwarded to the launcher's stdout.
    Stdout,
    /// Standard error: forwarded to the launcher's stderr.
    Stderr,
}

impl Stream {
    pub(crate) fn file_name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The schema version written in every line's `"v"`.
pub const VERSION: u32 = 1;

/// Longest line written, newline included.
pub const MAX_EVENT_LINE: usize = 256 << 10;

/// Longest text (an output line, a message) carried in one event, in bytes; JSON escaping at
/// most sextuples it, which keeps a line under [`MAX_EVENT_LINE`].
pub const MAX_TEXT: usize = 32 << 10;

/// How long one write waits for the reader before the channel is given up.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// One line of the channel (without its `"v"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A line a rank wrote.
    Output {
        /// The rank.
        rank: usize,
        /// `"stdout"` or `"stderr"`.
        stream: String,
        /// The line, without its newline.
        line: String,
        /// Bytes cut from its end to keep it under [`MAX_TEXT`].
        cut: usize,
    },
    /// A failure recorded (or adopted from another task) by this launcher.
    Failure {
        /// Seen here rather than learnt from another task's launcher.
        local: bool,
        /// What failed.
        failure: FailureRecord,
    },
    /// How the job ended: the last line.
    Report {
        /// `"success"` or `"failed"`.
        outcome: String,
        /// The launcher's exit code.
        exit_code: i32,
        /// The job's first failure.
        failure: Option<FailureRecord>,
        /// Whether that failure was seen by this launcher.
        local: Option<bool>,
        /// Processes this launcher started.
        started: usize,
        /// Of those, how many were still running when the job was stopped.
        stopped: usize,
        /// Processes of the job (all tasks).
        world: usize,
        /// Process groups and stray processes that could not be ended.
        leftovers: usize,
        /// The summary line the launcher prints.
        summary: String,
    },
    /// The launcher could not run the job: the last line.
    Error {
        /// The launcher's exit code.
        exit_code: i32,
        /// What was wrong.
        message: String,
    },
}

/// What kind of failure (the `kind` field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// A rank ended badly.
    Rank,
    /// A rank could not start.
    Start,
    /// The launcher received a signal.
    Signal,
    /// The launcher's parent died.
    ParentDied,
    /// The launcher lost the rendezvous store.
    StoreLost,
}

/// A [`Failure`] as the channel carries it: flat, with its exit code and message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// The task whose launcher saw it.
    pub task: usize,
    /// That task's host.
    pub host: String,
    /// What happened.
    pub kind: FailureKind,
    /// The rank, for `rank` and `start`.
    pub rank: Option<usize>,
    /// The exit code every launcher of the job returns for it.
    pub exit_code: i32,
    /// The signal that killed the rank, or that the launcher received.
    pub signal: Option<i32>,
    /// Why a rank could not start, or why the store was lost.
    pub detail: Option<String>,
    /// One line naming what failed, where.
    pub message: String,
}

impl From<&Failure> for FailureRecord {
    fn from(f: &Failure) -> FailureRecord {
        let (kind, rank, signal, detail) = match &f.cause {
            Cause::Rank { rank, status } => {
                let sig = match status {
                    ExitKind::Signal(s) => Some(*s),
                    ExitKind::Code(_) => None,
                };
                (FailureKind::Rank, Some(*rank), sig, None)
            }
            Cause::Start { rank, detail, .. } => (FailureKind::Start, Some(*rank), None, Some(bounded(detail).0)),
            Cause::Signal(s) => (FailureKind::Signal, None, Some(*s), None),
            Cause::ParentDied => (FailureKind::ParentDied, None, None, None),
            Cause::StoreLost(e) => (FailureKind::StoreLost, None, None, Some(bounded(e).0)),
        };
        FailureRecord {
            task: f.task,
            host: bounded(&f.host).0,
            kind,
            rank,
            exit_code: f.exit_code(),
            signal,
            detail,
            message: bounded(&f.describe()).0,
        }
    }
}

impl From<&Report> for Event {
    fn from(r: &Report) -> Event {
        let (outcome, failure, local) = match &r.outcome {
            Outcome::Success => ("success", None, None),
            Outcome::Failed { failure, local } => ("failed", Some(FailureRecord::from(failure)), Some(*local)),
        };
        Event::Report {
            outcome: outcome.into(),
            exit_code: r.exit_code(),
            failure,
            local,
            started: r.started,
            stopped: r.stopped,
            world: r.world,
            leftovers: r.leftovers,
            summary: bounded(&r.summary()).0,
        }
    }
}

impl Event {
    /// An `output` event for one line (its newline already removed).
    pub fn output(rank: usize, stream: Stream, line: &[u8]) -> Event {
        let text = String::from_utf8_lossy(line);
        let (line, cut) = bounded(&text);
        let stream = match stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        Event::Output { rank, stream: stream.into(), line, cut }
    }

    /// Reads one line of the channel (its newline optional), as a Rust reader (the coming
    /// worker pool, tests) would: checks its size and version; a kind this reader does not
    /// know is an error the caller may skip.
    pub fn decode(line: &[u8]) -> Result<Event, String> {
        if line.len() > MAX_EVENT_LINE {
            return Err(format!("an events line of {} bytes (at most {MAX_EVENT_LINE})", line.len()));
        }
        let value: serde_json::Value = serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
        match value.get("v").and_then(serde_json::Value::as_u64) {
            Some(v) if v == u64::from(VERSION) => {}
            Some(v) => return Err(format!("events version {v} (this reader knows {VERSION})")),
            None => return Err("no \"v\" version field".into()),
        }
        serde_json::from_value(value).map_err(|e| format!("not an event of version {VERSION}: {e}"))
    }

    /// The line as written, newline included; `None` if it would exceed [`MAX_EVENT_LINE`].
    pub fn encode(&self) -> Option<Vec<u8>> {
        #[derive(Serialize)]
        struct Line<'a> {
            v: u32,
            #[serde(flatten)]
            event: &'a Event,
        }
        let mut bytes = serde_json::to_vec(&Line { v: VERSION, event: self }).ok()?;
        bytes.push(b'\n');
        (bytes.len() <= MAX_EVENT_LINE).then_some(bytes)
    }
}

/// `text` cut to at most [`MAX_TEXT`] bytes on a character boundary, and how many bytes were cut.
fn bounded(text: &str) -> (String, usize) {
    if text.len() <= MAX_TEXT {
        return (text.to_string(), 0);
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (text[..end].to_string(), text.len() - end)
}

/// The writing end of the channel, shared by the threads that write to it; cheap to clone. A
/// disabled one (no `--events-fd`) drops every event.
#[derive(Clone, Debug, Default)]
pub struct Events {
    writer: Option<Arc<Writer>>,
}

#[derive(Debug)]
struct Writer {
    fd: Mutex<std::os::fd::OwnedFd>,
    broken: AtomicBool,
}

impl Events {
    /// A channel that writes nothing.
    pub fn disabled() -> Events {
        Events::default()
    }

    /// Takes over the inherited descriptor `fd`, after checking that it is open for writing,
    /// and marks it close-on-exec.
    pub fn from_fd(fd: RawFd) -> Result<Events, String> {
        use std::os::fd::FromRawFd;
        if fd < 0 {
            return Err(format!("descriptor {fd} is negative"));
        }
        if (0..=2).contains(&fd) {
            return Err(format!("descriptor {fd} is standard input, output or error; pass a descriptor of its own"));
        }
        // SAFETY: F_GETFD/F_GETFL on any number are safe; they fail with EBADF for a closed one.
        let (fd_flags, fl_flags) = unsafe { (libc::fcntl(fd, libc::F_GETFD), libc::fcntl(fd, libc::F_GETFL)) };
        if fd_flags < 0 || fl_flags < 0 {
            return Err(format!("descriptor {fd} is not open: {}", io::Error::last_os_error()));
        }
        if fl_flags & libc::O_ACCMODE == libc::O_RDONLY {
            return Err(format!("descriptor {fd} is not open for writing"));
        }
        // SAFETY: the descriptor is open; setting FD_CLOEXEC has no other effect.
        unsafe { libc::fcntl(fd, libc::F_SETFD, fd_flags | libc::FD_CLOEXEC) };
        // SAFETY: whoever started the launcher hands this descriptor over for this purpose
        // (`--events-fd`); it is open, checked above, and nothing else in the launcher owns it.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        Ok(Events { writer: Some(Arc::new(Writer { fd: Mutex::new(owned), broken: AtomicBool::new(false) })) })
    }

    /// Whether events go anywhere.
    pub fn enabled(&self) -> bool {
        self.writer.as_ref().is_some_and(|w| !w.broken.load(Ordering::Relaxed))
    }

    /// Writes one event as one line. A reader that is gone, or does not read for
    /// [`WRITE_TIMEOUT`], disables the channel; nothing here fails the job.
    pub fn emit(&self, event: &Event) {
        let Some(w) = &self.writer else { return };
        if w.broken.load(Ordering::Relaxed) {
            return;
        }
        let Some(line) = event.encode() else { return };
        let fd = w.fd.lock().unwrap_or_else(|p| p.into_inner());
        if write_line(fd.as_fd(), &line).is_err() {
            w.broken.store(true, Ordering::Relaxed);
        }
    }
}

/// Writes `line` in pieces no larger than a pipe's atomic write, each after `poll` says the
/// descriptor takes it, so that a reader that stopped reading costs at most [`WRITE_TIMEOUT`]
/// per piece and the descriptor's blocking mode (shared with whoever passed it) stays as it is.
fn write_line(fd: BorrowedFd<'_>, line: &[u8]) -> io::Result<()> {
    const PIECE: usize = libc::PIPE_BUF;
    let mut rest = line;
    while !rest.is_empty() {
        let deadline = Instant::now() + WRITE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "the events reader stopped reading"));
            }
            let mut pfd = [PollFd { fd: fd.as_raw_fd(), read: false, write: true, ready: false }];
            if poll(&mut pfd, left)? > 0 {
                break;
            }
        }
        let n = rest.len().min(PIECE);
        // SAFETY: `rest[..n]` is valid for reading; the descriptor is open while `fd` borrows it.
        let wrote = unsafe { libc::write(fd.as_raw_fd(), rest.as_ptr().cast(), n) };
        if wrote < 0 {
            let err = io::Error::last_os_error();
            if matches!(err.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) {
                continue;
            }
            return Err(err);
        }
        if wrote == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "the events channel took nothing"));
        }
        rest = &rest[wrote as usize..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_encode_as_one_versioned_line() {
        let f = Failure { task: 0, host: "h".into(), cause: Cause::Rank { rank: 1, status: ExitKind::Code(7) } };
        let line = Event::Failure { local: true, failure: (&f).into() }.encode().unwrap();
        let text = std::str::from_utf8(&line).unwrap();
        assert!(text.ends_with('\n') && text.matches('\n').count() == 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["event"], "failure");
        assert_eq!(v["failure"]["kind"], "rank");
        assert_eq!(v["failure"]["rank"], 1);
        assert_eq!(v["failure"]["exit_code"], 7);
        assert_eq!(v["failure"]["message"], "rank 1 (host h, task 0) exited with code 7");
    }

    #[test]
    fn every_kind_reads_back_as_written_and_other_versions_are_refused() {
        let f =
            Failure { task: 1, host: "h".into(), cause: Cause::Start { rank: 2, detail: "nope".into(), code: 127 } };
        let report = Report {
            outcome: Outcome::Failed { failure: f.clone(), local: false },
            started: 2,
            stopped: 1,
            world: 4,
            leftovers: 0,
        };
        let events = [
            Event::output(2, Stream::Stderr, b"line"),
            Event::Failure { local: false, failure: (&f).into() },
            Event::from(&report),
            Event::Error { exit_code: 2, message: "bad plan".into() },
        ];
        for ev in events {
            let line = ev.encode().unwrap();
            assert_eq!(Event::decode(&line).unwrap(), ev);
        }
        let err = Event::decode(br#"{"v":2,"event":"error","exit_code":2,"message":"m"}"#).unwrap_err();
        assert!(err.contains("version 2"), "{err}");
        assert!(Event::decode(br#"{"event":"error","exit_code":2,"message":"m"}"#).is_err());
        assert!(Event::decode(br#"{"v":1,"event":"hello"}"#).is_err());
    }

    #[test]
    fn long_and_odd_output_lines_stay_bounded() {
        let long = vec![b'x'; MAX_TEXT + 10];
        match Event::output(0, Stream::Stdout, &long) {
            Event::Output { line, cut, .. } => assert_eq!((line.len(), cut), (MAX_TEXT, 10)),
            other => panic!("{other:?}"),
        }
        // Control characters escape to six bytes each: still one line under the limit.
        let ctrl = vec![1u8; MAX_TEXT * 2];
        let line = Event::output(3, Stream::Stderr, &ctrl).encode().unwrap();
        assert!(line.len() <= MAX_EVENT_LINE);
        let bad = Event::output(3, Stream::Stderr, b"caf\xe9").encode().unwrap();
        assert!(std::str::from_utf8(&bad).unwrap().contains("caf\u{fffd}"));
    }
}
