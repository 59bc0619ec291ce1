//! Forwarding the children's output: line by line, with a `[rank]` prefix, to the launcher's
//! own stdout and stderr (or, with `--events-output`, as `output` events of the
//! [events channel](crate::events)), and optionally into per-rank files.
//!
//! One thread per pipe reads until end of file, so nothing a child wrote is lost when it exits:
//! complete lines are written whole (one `write` per batch of lines, under the stream's lock,
//! so lines of different ranks never tear each other), and a last line without a newline is
//! still printed, with one added. A line longer than [`MAX_LINE`] is cut into pieces of that
//! size rather than held in memory without bound.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use crate::events::{Event, Events, Stream};

/// Longest line kept whole; longer ones are forwarded in pieces.
pub const MAX_LINE: usize = 1 << 20;

/// Where children's output goes.
#[derive(Clone, Debug, Default)]
pub struct OutputOptions {
    /// Put `[rank] ` in front of every forwarded line.
    pub prefix: bool,
    /// Also write each rank's output, unprefixed, to `DIR/rank.N/stdout` and `.../stderr`.
    pub dir: Option<PathBuf>,
    /// Zero-padding of rank numbers in the directory names, so they sort (the width of the
    /// largest rank).
    pub rank_width: usize,
    /// When enabled, lines go to this channel as `output` events instead of the launcher's
    /// stdout and stderr (back to those if the channel's reader goes away).
    pub events: Events,
}

/// The forwarding threads of a job.
pub struct Forwarders {
    done_tx: mpsc::Sender<()>,
    done_rx: mpsc::Receiver<()>,
    running: usize,
    opts: OutputOptions,
    /// Set once writing to the launcher's stdout or stderr failed (a closed pipe): from then on
    /// output is still drained, so children never block, but no longer written there.
    broken: [Arc<AtomicBool>; 2],
}

impl Forwarders {
    /// No threads yet; [`Forwarders::forward`] starts one per pipe.
    pub fn new(opts: OutputOptions) -> Forwarders {
        let (done_tx, done_rx) = mpsc::channel();
        Forwarders { done_tx, done_rx, running: 0, opts, broken: Default::default() }
    }

    /// The per-rank file for `stream`, creating its directory.
    pub fn file_for(&self, rank: usize, stream: Stream) -> io::Result<Option<(PathBuf, File)>> {
        let Some(dir) = &self.opts.dir else {
            return Ok(None);
        };
        let rank_dir = dir.join(format!("rank.{rank:0width$}", width = self.opts.rank_width.max(1)));
        std::fs::create_dir_all(&rank_dir)?;
        let path = rank_dir.join(stream.file_name());
        let file = File::create(&path)?;
        Ok(Some((path, file)))
    }

    /// Starts forwarding `pipe` (a child's stdout or stderr) until its end of file.
    pub fn forward(&mut self, rank: usize, stream: Stream, pipe: impl Read + Send + 'static) -> io::Result<()> {
        let file = self.file_for(rank, stream).map_err(|e| {
            let dir = self.opts.dir.as_deref().unwrap_or(Path::new(""));
            io::Error::new(e.kind(), format!("output file of rank {rank} under {}: {e}", dir.display()))
        })?;
        let prefix = self.opts.prefix.then(|| format!("[{rank}] ").into_bytes());
        let broken = self.broken[stream as usize].clone();
        let done = self.done_tx.clone();
        let events = self.opts.events.clone();
        std::thread::Builder::new().name(format!("ferrovod-out-{rank}")).spawn(move || {
            let file = file.map(|(_, f)| f);
            let mut sink = Sink { rank, stream, prefix, file, broken, events, scratch: Vec::new() };
            pump(pipe, &mut sink);
            let _ = done.send(());
        })?;
        self.running += 1;
        Ok(())
    }

    /// Waits until every pipe reached end of file or `deadline` passed; returns how many are
    /// still open (held by a process that escaped the launcher's process groups). Their
    /// threads are left to finish on their own.
    pub fn wait(&mut self, deadline: Instant) -> usize {
        while self.running > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.done_rx.recv_timeout(left) {
                Ok(()) => self.running -= 1,
                Err(_) => break,
            }
        }
        self.running
    }
}

struct Sink {
    rank: usize,
    stream: Stream,
    prefix: Option<Vec<u8>>,
    file: Option<File>,
    broken: Arc<AtomicBool>,
    events: Events,
    scratch: Vec<u8>,
}

impl Sink {
    /// Writes complete lines (`lines` ends with a newline).
    fn lines(&mut self, lines: &[u8]) {
        if let Some(f) = &mut self.file
            && f.write_all(lines).is_err()
        {
            self.file = None;
        }
        if self.events.enabled() {
            for line in lines.split_inclusive(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\n").unwrap_or(line);
                self.events.emit(&Event::output(self.rank, self.stream, line));
            }
            return;
        }
        if self.broken.load(Ordering::Relaxed) {
            return;
        }
        let out: &[u8] = match &self.prefix {
            None => lines,
            Some(p) => {
                self.scratch.clear();
                for line in lines.split_inclusive(|&b| b == b'\n') {
                    self.scratch.extend_from_slice(p);
                    self.scratch.extend_from_slice(line);
                }
                &self.scratch
            }
        };
        let res = match self.stream {
            Stream::Stdout => {
                let mut o = io::stdout().lock();
                o.write_all(out).and_then(|()| o.flush())
            }
            Stream::Stderr => io::stderr().lock().write_all(out),
        };
        if res.is_err() {
            self.broken.store(true, Ordering::Relaxed);
        }
    }
}

/// Reads `pipe` to end of file, handing complete lines to `sink`.
fn pump(mut pipe: impl Read, sink: &mut Sink) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let chunk = &buf[..n];
        match chunk.iter().rposition(|&b| b == b'\n') {
            Some(last) => {
                if pending.is_empty() {
                    sink.lines(&chunk[..=last]);
                } else {
                    pending.extend_from_slice(&chunk[..=last]);
                    sink.lines(&pending);
                    pending.clear();
                }
                pending.extend_from_slice(&chunk[last + 1..]);
            }
            None => pending.extend_from_slice(chunk),
        }
        while pending.len() >= MAX_LINE {
            let mut piece: Vec<u8> = pending.drain(..MAX_LINE).collect();
            piece.push(b'\n');
            sink.lines(&piece);
        }
    }
    if !pending.is_empty() {
        pending.push(b'\n');
        sink.lines(&pending);
    }
}
