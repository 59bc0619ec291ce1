//! The timeline: a Chrome trace (JSON array format, loadable in Perfetto and chrome://tracing)
//! of every tensor's phases on this rank. One track per tensor name; time in microseconds since
//! the engine started. Written from the engine thread through a buffer, so recording costs a
//! few formatted lines per tensor and never talks to other ranks.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

/// A tensor's phases, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Submitted, waiting for the other ranks.
    Queued,
    /// In the negotiation round that made it ready.
    Negotiated,
    /// Being copied into the fusion buffer.
    CopyIn,
    /// On the wire (the collective).
    Communicated,
    /// Being copied out of the fusion buffer.
    CopyOut,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Queued => "QUEUED",
            Phase::Negotiated => "NEGOTIATED",
            Phase::CopyIn => "COPY_IN_FUSION_BUFFER",
            Phase::Communicated => "COMMUNICATED",
            Phase::CopyOut => "COPY_OUT_FUSION_BUFFER",
        }
    }
}

pub(crate) struct Timeline {
    out: BufWriter<File>,
    start: Instant,
    rank: usize,
    tracks: HashMap<String, usize>,
    first: bool,
    failed: bool,
}

impl Timeline {
    /// Creates the trace file.
    pub(crate) fn create(path: &Path, rank: usize, start: Instant) -> std::io::Result<Timeline> {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
        out.write_all(b"[\n")?;
        let mut t = Timeline { out, start, rank, tracks: HashMap::new(), first: true, failed: false };
        t.event(&format!(
            r#"{{"name":"process_name","ph":"M","pid":{rank},"tid":0,"args":{{"name":"ferrovod rank {rank}"}}}}"#
        ));
        Ok(t)
    }

    fn micros(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.start).as_secs_f64() * 1e6
    }

    fn track(&mut self, name: &str) -> usize {
        if let Some(&t) = self.tracks.get(name) {
            return t;
        }
        let t = self.tracks.len() + 1;
        self.tracks.insert(name.to_string(), t);
        let rank = self.rank;
        self.event(&format!(
            r#"{{"name":"thread_name","ph":"M","pid":{rank},"tid":{t},"args":{{"name":{}}}}}"#,
            json_string(name)
        ));
        t
    }

    fn event(&mut self, line: &str) {
        if self.failed {
            return;
        }
        let sep: &[u8] = if self.first { b"" } else { b",\n" };
        self.first = false;
        // A full disk must not stop training: the trace stops instead, once, with a note.
        if let Err(e) = self.out.write_all(sep).and_then(|()| self.out.write_all(line.as_bytes())) {
            eprintln!("ferrovod: rank {}: timeline stopped: {e}", self.rank);
            self.failed = true;
        }
    }

    /// Records that `tensor` spent `from..to` in `phase`; `args` is extra JSON (`"k":v,...`).
    pub(crate) fn phase(&mut self, tensor: &str, phase: Phase, from: Instant, to: Instant, args: &str) {
        let tid = self.track(tensor);
        let (ts, dur) = (self.micros(from), (self.micros(to) - self.micros(from)).max(0.0));
        let rank = self.rank;
        self.event(&format!(
            r#"{{"name":"{}","ph":"X","pid":{rank},"tid":{tid},"ts":{ts:.3},"dur":{dur:.3},"args":{{{args}}}}}"#,
            phase.name()
        ));
    }

    /// Records the moment `tensor` completed (an instant event named DONE).
    pub(crate) fn done(&mut self, tensor: &str, at: Instant) {
        let tid = self.track(tensor);
        let (ts, rank) = (self.micros(at), self.rank);
        self.event(&format!(r#"{{"name":"DONE","ph":"i","s":"t","pid":{rank},"tid":{tid},"ts":{ts:.3}}}"#));
    }

    /// Closes the JSON array and flushes.
    pub(crate) fn finish(mut self) {
        if !self.failed {
            let _ = self.out.write_all(b"\n]\n").and_then(|()| self.out.flush());
        }
    }
}

/// `s` as a JSON string literal.
pub(crate) fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_quotes_and_controls() {
        assert_eq!(json_string("a\"b\\c\nd"), r#""a\"b\\c\u000ad""#);
    }
}
