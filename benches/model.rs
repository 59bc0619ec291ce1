//! The alpha-beta (Hockney) cost model behind `ferrovod-bench --model`: pure functions, no I/O.
//!
//! A message of m bytes costs α + m·β; reducing m bytes costs m·γ. The parameters come from
//! least-squares fits of microbenchmarks ([`fit_line`], [`fit_slope`]), never from allreduce
//! timings.
//!
//! The allreduces are modelled as ferrovod runs them, not as the textbook writes them: the
//! ring works on pieces of `chunk` bytes (each a ring allreduce of its own) and every step is
//! cut into `segment`-byte messages; halving-doubling folds the ranks beyond a power of two
//! with one whole-buffer message each way and cuts its steps into segments too. Each message
//! on a rank's critical path pays one α (latency is not assumed to hide behind other
//! messages), the bytes a rank sends pay β, the bytes it reduces γ.
//!
//! Two kinds of link: an *exchange* (every rank sends to one peer and receives from one at
//! once, as every ring and halving-doubling step does) and a *one-way* message (the fold).
//! Each has its own fitted α and β: on loopback the sender and the receiver both copy every
//! byte on their own core, so a bidirectional step costs more per byte than one direction of a
//! ping-pong.
//!
//! Three regimes per fit: by mean message size, up to the L2 cache (*small*) and above it
//! (*large*); and *memory*, once the working set on the host (the active ranks' buffers)
//! reaches the last-level cache. Then each pass over a buffer streams it from DRAM, at what
//! DRAM adds per byte to L3 in the probes whose own buffers outgrow the cache. The ring and
//! the halving-doubling steps pass over the buffer once (a piece stays in cache through its
//! steps, which keep their in-cache prices); the fold's whole-buffer message and reduction
//! stream whole, as the probes do.
//!
//! On one host with fewer cores than ranks, the exchange is probed at every N measured (a
//! ring step on N ranks), so its α and β carry the contention (wake-ups, a core holding two
//! ranks) and a phase with `active` ranks uses the fit probed at that N. The probes reduce
//! nothing, so γ is scaled by ⌈active / cores⌉: ring and halving-doubling steps are lockstep
//! and wait for the core with the most ranks. The cluster predictions assume one core per
//! rank and use the 2-rank fits.
//!
//! Hierarchical allreduce, the textbook variant with one ring per local rank (ferrovod's own,
//! `comm/src/algorithms/allreduce_hierarchical.rs`, reduce-scatters and allgathers within a
//! host over its shared stage instead of rings, and is measured with `ferrovod-bench --hosts`): H hosts of L ranks; (1) a ring reduce-scatter among the L ranks
//! of a host over shared memory, leaving local rank i with 1/L of the buffer reduced over its
//! host; (2) L concurrent ring allreduces across hosts, one per local rank on its m/L bytes,
//! all sharing the host's network link; (3) a ring allgather among the L ranks of a host.

use std::ops::Range;

/// One kind of message: α seconds per message plus β seconds per byte.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Link {
    /// Seconds per message.
    pub alpha: f64,
    /// Seconds per byte.
    pub beta: f64,
}

impl Link {
    /// The link with `alpha_us` µs of latency and `gbit` Gbit/s of bandwidth.
    pub fn from_us_gbit(alpha_us: f64, gbit: f64) -> Link {
        Link { alpha: alpha_us * 1e-6, beta: 8.0 / (gbit * 1e9) }
    }

    /// Time of `messages` messages carrying `bytes` bytes in all.
    pub fn time(&self, messages: f64, bytes: f64) -> f64 {
        messages * self.alpha + bytes * self.beta
    }
}

/// What a message costs once the working set on the host reaches the last-level cache.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Memory {
    /// The last-level cache, bytes.
    pub llc: f64,
    /// Seconds per byte of a message whose buffers stream from memory.
    pub beta: f64,
}

impl Memory {
    /// Whether `working_set` bytes stream from memory: a cyclic pass over as many bytes as the
    /// cache holds misses throughout (the cache holds the transport's buffers and the scratch
    /// too), so reaching the size counts.
    pub fn spills(&self, working_set: f64) -> bool {
        working_set >= self.llc
    }
}

/// A cost fitted in three regimes: by mean message size, up to `boundary` bytes (the message
/// stays in L2) and above it (it streams through L3, 2-3x dearer per byte here); and `memory`
/// for the bytes that stream from DRAM, once the working set on the host reaches the
/// last-level cache.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Regimes {
    /// Messages of at most `boundary` bytes.
    pub small: Link,
    /// Larger messages.
    pub large: Link,
    /// Bytes per message where the size regimes meet.
    pub boundary: f64,
    /// Beyond the last-level cache; `None` where unknown.
    pub memory: Option<Memory>,
}

impl Regimes {
    /// One regime for every size and working set.
    pub fn one(link: Link) -> Regimes {
        Regimes { small: link, large: link, boundary: f64::INFINITY, memory: None }
    }

    /// The size regime of `messages` messages of `bytes` bytes in all: by their mean size.
    pub fn link(&self, messages: f64, bytes: f64) -> Link {
        if bytes > self.boundary * messages.max(1.0) { self.large } else { self.small }
    }

    /// Seconds per byte that streaming from DRAM adds to streaming through L3 (the large
    /// regime), when `working_set` bytes on the host reach the last-level cache; else 0. Never
    /// negative: the probes may not show the difference, but memory is not faster than cache.
    pub fn excess(&self, working_set: f64) -> f64 {
        match self.memory {
            Some(m) if m.spills(working_set) => (m.beta - self.large.beta).max(0.0),
            _ => 0.0,
        }
    }

    /// Time of `messages` messages of `bytes` bytes in all, `streamed` of which pass through
    /// memory if `working_set` reaches the last-level cache.
    pub fn time(&self, messages: f64, bytes: f64, streamed: f64, working_set: f64) -> f64 {
        self.link(messages, bytes).time(messages, bytes) + streamed * self.excess(working_set)
    }
}

/// One transport between the ranks of one host, as fitted.
#[derive(Clone, Debug, PartialEq)]
pub struct Host {
    /// Every rank sends to one peer and receives from another at once (a ring step), per number
    /// of ranks probed, ascending.
    pub exchange: Vec<(usize, Regimes)>,
    /// One rank sends, the other receives (probed on 2 ranks).
    pub one_way: Regimes,
    /// Reduction (f32 sum): α 0, β the seconds per byte.
    pub gamma: Regimes,
    /// Cores the ranks share.
    pub cores: f64,
}

impl Host {
    /// The exchange fit for `active` ranks: probed at the largest N ≤ `active` (the smallest N
    /// probed if none is).
    ///
    /// # Panics
    /// If no exchange was fitted.
    pub fn exchange(&self, active: usize) -> &Regimes {
        let fits = &self.exchange;
        fits.iter().rev().find(|(n, _)| *n <= active).or(fits.first()).map(|(_, r)| r).expect("an exchange fit")
    }
}

/// A least-squares line t = alpha + bytes·beta and how far each point is from it.
#[derive(Clone, Debug, PartialEq)]
pub struct Fit {
    /// Intercept: seconds.
    pub alpha: f64,
    /// Slope: seconds per byte.
    pub beta: f64,
    /// (fitted − measured) / measured, per point.
    pub residuals: Vec<f64>,
}

/// Fits t = α + n·β to `(bytes, seconds)` points, minimising the squared *relative* error
/// (weights 1/t²), so that a fit over sizes spanning decades is not decided by the largest
/// alone. `None` with fewer than two distinct sizes.
pub fn fit_line(points: &[(f64, f64)]) -> Option<Fit> {
    let (mut sw, mut sx, mut sxx, mut sy, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(x, t) in points {
        let w = 1.0 / (t * t);
        sw += w;
        sx += w * x;
        sxx += w * x * x;
        sy += w * t;
        sxy += w * x * t;
    }
    let det = sw * sxx - sx * sx;
    if points.len() < 2 || det.abs() <= f64::EPSILON * sw * sxx {
        return None;
    }
    let alpha = (sxx * sy - sx * sxy) / det;
    let beta = (sw * sxy - sx * sy) / det;
    let residuals = points.iter().map(|&(x, t)| (alpha + beta * x - t) / t).collect();
    Some(Fit { alpha, beta, residuals })
}

/// Fits the slope alone of t = α(n) + n·β, on relative error as [`fit_line`], with each
/// point's α given: for a regime whose per-message cost is known, down to a single point.
/// Returns β and the residuals; `None` without a point of non-zero size.
pub fn fit_slope(points: &[(f64, f64)], alpha: impl Fn(f64) -> f64) -> Option<(f64, Vec<f64>)> {
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for &(x, t) in points {
        sxy += x * (t - alpha(x)) / (t * t);
        sxx += x * x / (t * t);
    }
    if sxx <= 0.0 {
        return None;
    }
    let beta = sxy / sxx;
    let residuals = points.iter().map(|&(x, t)| (alpha(x) + beta * x - t) / t).collect();
    Some((beta, residuals))
}

/// How ferrovod cuts an allreduce: its `FERROVOD_SEGMENT` and `FERROVOD_RING_CHUNK`, and the
/// element size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cutting {
    /// Largest message of a schedule, bytes.
    pub segment: usize,
    /// Ring piece, bytes.
    pub chunk: usize,
    /// Element size, bytes.
    pub elem: usize,
}

/// Whether a phase's messages go both ways at once or one way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Every rank sends and receives at once.
    Exchange,
    /// One rank of a pair sends, the other receives.
    OneWay,
}

/// Part of an allreduce as one rank's critical path sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Phase {
    /// Exchange or one-way.
    pub kind: Kind,
    /// Ranks busy during the phase.
    pub active: usize,
    /// For halving-doubling steps: the distance (in virtual ranks) to the partner; 0 for the
    /// ring and the fold.
    pub distance: usize,
    /// Messages, each paying α.
    pub messages: f64,
    /// Bytes sent, each paying β.
    pub bytes: f64,
    /// Bytes reduced, each paying γ.
    pub reduced: f64,
    /// Bytes of buffer each active rank works on (the allreduce's buffer): the working set on
    /// a host is this times the active ranks there.
    pub footprint: f64,
    /// Bytes each rank brings in from memory when the working set spills: a pass over the
    /// whole buffer in the ring's phase, in the first halving step, and in the fold's and
    /// unfold's whole-buffer messages; later steps find their piece in cache.
    pub streamed: f64,
}

/// Time of `phases` on one host: α per message and β per byte from the exchange fit probed at
/// the phase's active ranks (or the one-way fit), the memory excess on the bytes it streams
/// when its working set spills, γ per byte scaled by ⌈active / cores⌉.
pub fn time_on_host(phases: &[Phase], host: &Host) -> f64 {
    phases
        .iter()
        .map(|p| {
            let over = p.active as f64 / host.cores;
            let working_set = p.active as f64 * p.footprint;
            // An exchange's contention is in its fit. The one-way fit is a 2-rank probe, one
            // core each; folds on more ranks than cores are pairs that do not wait for each
            // other, so their copies share the cores evenly.
            let (link, share, reduce_streamed) = match p.kind {
                Kind::Exchange => (host.exchange(p.active), 1.0, 0.0),
                // The fold reduces the whole buffer in one pass over two buffers, as the γ
                // probe does; an exchange reduces segments just received into a block that
                // its pass brought in.
                Kind::OneWay => (&host.one_way, over.max(1.0), p.reduced),
            };
            let l = link.link(p.messages, p.bytes);
            let send = share * (p.bytes * l.beta + p.streamed * link.excess(working_set));
            let gamma = host.gamma.time(p.messages, p.reduced, reduce_streamed, working_set);
            p.messages * l.alpha + send + over.ceil().max(1.0) * gamma
        })
        .sum()
}

/// `count` elements in `n` blocks, the first `count % n` one larger: the largest, in bytes.
fn largest_block(count: usize, n: usize, elem: usize) -> usize {
    count.div_ceil(n) * elem
}

/// The pieces ferrovod's ring and halving-doubling cut `bytes` into.
fn pieces(bytes: usize, cut: &Cutting) -> Vec<Range<usize>> {
    let chunk = (cut.chunk / cut.elem).max(1) * cut.elem;
    (0..bytes.max(1)).step_by(chunk).map(|s| s..(s + chunk).min(bytes)).collect()
}

fn segment(cut: &Cutting) -> usize {
    (cut.segment / cut.elem).max(1) * cut.elem
}

/// Ring allreduce of `bytes` on `n` ranks as `allreduce_ring` runs it: per piece 2(n−1)
/// steps, each one message per segment of the largest block.
pub fn ring(n: usize, bytes: usize, cut: &Cutting) -> Vec<Phase> {
    if n < 2 {
        return vec![];
    }
    let mut phase = Phase {
        kind: Kind::Exchange,
        active: n,
        distance: 0,
        messages: 0.0,
        bytes: 0.0,
        reduced: 0.0,
        footprint: bytes as f64,
        streamed: bytes as f64,
    };
    for piece in pieces(bytes, cut) {
        let block = largest_block(piece.len() / cut.elem, n, cut.elem);
        let parts = block.div_ceil(segment(cut)).max(1);
        let steps = 2 * (n - 1);
        phase.messages += (steps * parts) as f64;
        phase.bytes += (steps * block) as f64;
        phase.reduced += ((n - 1) * block) as f64;
    }
    vec![phase]
}

/// Halving-doubling allreduce of `bytes` on `n` ranks as `allreduce_halving_doubling` runs
/// it: the fold (one message of the whole buffer from each rank beyond p, the largest power of
/// two ≤ n, and its reduction), one phase per halving and doubling step (summed over pieces),
/// then the unfold.
pub fn halving_doubling(n: usize, bytes: usize, cut: &Cutting) -> Vec<Phase> {
    if n < 2 {
        return vec![];
    }
    let p = 1usize << (usize::BITS - 1 - n.leading_zeros());
    let q = n - p;
    let footprint = bytes as f64;
    let whole = |reduced: f64| Phase {
        kind: Kind::OneWay,
        active: 2 * q,
        distance: 0,
        messages: 1.0,
        bytes: bytes as f64,
        reduced,
        footprint,
        streamed: footprint,
    };
    let mut out = Vec::new();
    if q > 0 {
        out.push(whole(bytes as f64));
    }
    // Partner distances: halving p/2, p/4, .., 1; doubling 1, 2, .., p/2. The width of a step
    // (in blocks) is its distance.
    let distances: Vec<(usize, bool)> = std::iter::successors(Some(p / 2), |d| (*d > 1).then_some(d / 2))
        .map(|d| (d, true))
        .chain(std::iter::successors(Some(1), |d| (d * 2 < p).then_some(d * 2)).map(|d| (d, false)))
        .collect();
    for (k, (distance, reduce)) in distances.into_iter().enumerate() {
        let streamed = if k == 0 { footprint } else { 0.0 };
        let mut step = Phase {
            kind: Kind::Exchange,
            active: p,
            distance,
            messages: 0.0,
            bytes: 0.0,
            reduced: 0.0,
            footprint,
            streamed,
        };
        for piece in pieces(bytes, cut) {
            let count = piece.len() / cut.elem;
            // The first `distance` blocks: the widest range of the step.
            let widest = (0..distance).map(|i| count / p + usize::from(i < count % p)).sum::<usize>() * cut.elem;
            step.messages += widest.div_ceil(segment(cut)).max(1) as f64;
            step.bytes += widest as f64;
            if reduce {
                step.reduced += widest as f64;
            }
        }
        out.push(step);
    }
    if q > 0 {
        out.push(whole(0.0));
    }
    out
}

/// A cluster of hosts: the links between ranks of one host and the network between hosts.
#[derive(Clone, Debug, PartialEq)]
pub struct Cluster {
    /// Ranks on one host, over their intra-host transport (one core each; the 2-rank fits).
    pub intra: Host,
    /// Between hosts; full duplex, one link per host that all its ranks share.
    pub network: Regimes,
    /// Ranks per host.
    pub per_host: usize,
}

impl Cluster {
    /// Hosts and ranks per host for `n` ranks: one host while n ≤ `per_host`.
    pub fn shape(&self, n: usize) -> (usize, usize) {
        if n <= self.per_host { (1, n) } else { (n.div_ceil(self.per_host), self.per_host) }
    }

    /// A phase within a host of `local` ranks (all of them working on their buffers).
    fn local(&self, phase: &Phase, local: usize) -> f64 {
        let (link, reduce_streamed) = match phase.kind {
            Kind::Exchange => (self.intra.exchange(2), 0.0),
            Kind::OneWay => (&self.intra.one_way, phase.reduced),
        };
        let working_set = local as f64 * phase.footprint;
        link.time(phase.messages, phase.bytes, phase.streamed, working_set)
            + self.intra.gamma.time(phase.messages, phase.reduced, reduce_streamed, working_set)
    }

    /// A phase across the network, `flows` per host link, on hosts of `local` ranks: the wire,
    /// the pass over the buffer on the host, the reduction.
    fn remote(&self, phase: &Phase, flows: usize, local: usize) -> f64 {
        let link = self.network.link(phase.messages, phase.bytes);
        let working_set = local as f64 * phase.footprint;
        phase.messages * link.alpha
            + phase.bytes * link.beta * flows as f64
            + phase.streamed * self.intra.exchange(2).excess(working_set)
            + self.intra.gamma.time(phase.messages, phase.reduced, 0.0, working_set)
    }

    /// ferrovod's ring over all n ranks, ordered host by host: every step waits for the
    /// slowest link, the one between hosts, which carries one flow per host.
    pub fn ring(&self, n: usize, bytes: usize, cut: &Cutting) -> f64 {
        let (hosts, local) = self.shape(n);
        ring(n, bytes, cut)
            .iter()
            .map(|p| if hosts > 1 { self.remote(p, 1, local).max(self.local(p, local)) } else { self.local(p, local) })
            .sum()
    }

    /// ferrovod's halving-doubling over all n ranks, ordered host by host: a step whose partner
    /// is `per_host` or more ranks away crosses the network with all of a host's ranks at once.
    pub fn halving_doubling(&self, n: usize, bytes: usize, cut: &Cutting) -> f64 {
        let (hosts, local) = self.shape(n);
        halving_doubling(n, bytes, cut)
            .iter()
            .map(|p| if hosts > 1 && p.distance >= local { self.remote(p, local, local) } else { self.local(p, local) })
            .sum()
    }

    /// The hierarchical allreduce of the module docs (the textbook variant),
    /// built from ferrovod's ring pieces: reduce-scatter within each host, one ring allreduce
    /// per local rank across hosts on its 1/L share (all L sharing the host's link),
    /// allgather within each host.
    pub fn hierarchical(&self, n: usize, bytes: usize, cut: &Cutting) -> f64 {
        let (hosts, local) = self.shape(n);
        let intra = if local > 1 {
            // A ring allreduce's phase is reduce-scatter + allgather, half the steps each.
            ring(local, bytes, cut).iter().map(|p| self.local(p, local)).sum::<f64>()
        } else {
            0.0
        };
        let share = bytes.div_ceil(local * cut.elem) * cut.elem;
        let inter: f64 = ring(hosts, share, cut).iter().map(|p| self.remote(p, local, local)).sum();
        intra + inter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CUT: Cutting = Cutting { segment: 256 << 10, chunk: 1 << 20, elem: 4 };

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-12)
    }

    #[test]
    fn the_fit_recovers_a_line_and_reports_residuals() {
        let pts: Vec<(f64, f64)> = [0.0, 1e3, 1e5, 1e6].iter().map(|&x| (x, 20e-6 + x * 0.5e-9)).collect();
        let f = fit_line(&pts).unwrap();
        assert!(close(f.alpha, 20e-6) && close(f.beta, 0.5e-9), "{f:?}");
        assert!(f.residuals.iter().all(|r| r.abs() < 1e-9));
        // Two points off by +10% and -10% of a line through the others: relative residuals.
        let f = fit_line(&[(0.0, 1.0), (1.0, 2.0)]).unwrap();
        assert!(close(f.alpha, 1.0) && close(f.beta, 1.0));
        assert!(fit_line(&[(5.0, 1.0), (5.0, 2.0)]).is_none());
        assert!(fit_line(&[(5.0, 1.0)]).is_none());
    }

    #[test]
    fn the_slope_fit_keeps_alpha_and_works_from_one_point() {
        // One point: 3 ms at 1e6 bytes over 1 ms of α is 2 ns/B.
        let (beta, res) = fit_slope(&[(1e6, 3e-3)], |_| 1e-3).unwrap();
        assert!(close(beta, 2e-9) && res[0].abs() < 1e-9, "{beta} {res:?}");
        // Two points at one size, 2 and 4: β minimises ((β−2)/2)² + ((β−4)/4)², so
        // (β−2)/4 + (β−4)/16 = 0 and β = 2.4, residuals +20% and −40%.
        let (beta, res) = fit_slope(&[(1.0, 2.0), (1.0, 4.0)], |_| 0.0).unwrap();
        assert!(close(beta, 2.4) && close(res[0], 0.2) && close(res[1], -0.4), "{beta} {res:?}");
        // Each point's own α: 1 + 2·1 and 3 + 2·2 lie on β = 2.
        let (beta, res) = fit_slope(&[(1.0, 3.0), (2.0, 7.0)], |x| if x > 1.5 { 3.0 } else { 1.0 }).unwrap();
        assert!(close(beta, 2.0) && res.iter().all(|r| r.abs() < 1e-9), "{beta} {res:?}");
        assert!(fit_slope(&[], |_| 0.0).is_none());
        assert!(fit_slope(&[(0.0, 1.0)], |_| 0.0).is_none());
    }

    #[test]
    fn link_from_microseconds_and_gigabits() {
        let l = Link::from_us_gbit(200.0, 10.0);
        assert!(close(l.alpha, 200e-6) && close(l.beta, 0.8e-9));
        assert!(close(l.time(2.0, 1e6), 400e-6 + 0.8e-3));
    }

    #[test]
    fn regimes_price_messages_by_their_mean_size_and_streamed_bytes_by_the_working_set() {
        let r = Regimes {
            small: Link { alpha: 1e-6, beta: 1e-9 },
            large: Link { alpha: 2e-6, beta: 3e-9 },
            boundary: 1024.0,
            memory: Some(Memory { llc: 1e6, beta: 5e-9 }),
        };
        // 4 messages of 1 KiB: small; 2 of 2 KiB: large.
        assert!(close(r.time(4.0, 4096.0, 0.0, 0.0), 4e-6 + 4096e-9));
        assert!(close(r.time(2.0, 4096.0, 0.0, 0.0), 4e-6 + 3.0 * 4096e-9));
        // From a working set the size of the cache on, streamed bytes pay what memory adds to
        // the large regime, 2 ns; just under it, nothing.
        assert_eq!((r.excess(0.999e6), r.excess(1e6)), (0.0, 5e-9 - 3e-9));
        assert!(close(r.time(4.0, 4096.0, 4096.0, 0.999e6), 4e-6 + 4096e-9));
        assert!(close(r.time(4.0, 4096.0, 4096.0, 1e6), 4e-6 + 4096e-9 + 2.0 * 4096e-9));
        // A large message that streams whole pays the memory β.
        assert!(close(r.time(2.0, 4096.0, 4096.0, 2e6), 4e-6 + 5.0 * 4096e-9));
        // Memory that probed cheaper than the cache adds nothing; no memory regime, nothing.
        assert_eq!(Regimes { memory: Some(Memory { llc: 1e6, beta: 2e-9 }), ..r }.excess(1e6), 0.0);
        assert_eq!(Regimes { memory: None, ..r }.excess(1e9), 0.0);
    }

    #[test]
    fn ring_counts_messages_bytes_and_reductions_as_ferrovod_cuts_them() {
        // 4 KiB on 2 ranks: one piece, blocks of 2 KiB, one segment: 2 messages.
        assert_eq!(
            ring(2, 4096, &CUT),
            vec![Phase {
                kind: Kind::Exchange,
                active: 2,
                distance: 0,
                messages: 2.0,
                bytes: 4096.0,
                reduced: 2048.0,
                footprint: 4096.0,
                streamed: 4096.0
            }]
        );
        // 16 MiB on 2 ranks: 16 pieces, blocks of 512 KiB = 2 segments, 2 steps: 64 messages.
        let p = ring(2, 16 << 20, &CUT)[0];
        assert_eq!((p.messages, p.bytes, p.reduced), (64.0, (16 << 20) as f64, (8 << 20) as f64));
        // 4 MiB on 3 ranks: 4 pieces of 262144 elements, largest block 87382 elements
        // (349528 bytes, 2 segments), 4 steps: 4 × 4 × 2 messages.
        let p = ring(3, 4 << 20, &CUT)[0];
        assert_eq!((p.messages, p.bytes, p.reduced), (32.0, 16.0 * 349528.0, 8.0 * 349528.0));
        assert_eq!(p.footprint, (4 << 20) as f64);
    }

    #[test]
    fn halving_doubling_has_log_steps_and_folds_the_odd_rank() {
        // 4 KiB on 4 ranks: halving 2 KiB then 1 KiB, doubling 1 KiB then 2 KiB.
        let s = halving_doubling(4, 4096, &CUT);
        let got: Vec<_> = s.iter().map(|p| (p.distance, p.messages, p.bytes, p.reduced)).collect();
        assert_eq!(
            got,
            vec![(2, 1.0, 2048.0, 2048.0), (1, 1.0, 1024.0, 1024.0), (1, 1.0, 1024.0, 0.0), (2, 1.0, 2048.0, 0.0)]
        );
        assert!(s.iter().all(|p| p.footprint == 4096.0 && p.active == 4));
        // The first step passes over the whole buffer; the others find their pieces in cache.
        assert_eq!(s.iter().map(|p| p.streamed).collect::<Vec<_>>(), vec![4096.0, 0.0, 0.0, 0.0]);
        // 4 MiB on 3 ranks: fold (4 MiB one way, reduced), 2 steps of 2 MiB in 4 pieces of
        // 512 KiB = 2 segments each, unfold.
        let s = halving_doubling(3, 4 << 20, &CUT);
        assert_eq!(s.len(), 4);
        assert_eq!((s[0].kind, s[0].active, s[0].bytes, s[0].reduced), (Kind::OneWay, 2, 4194304.0, 4194304.0));
        assert_eq!((s[1].messages, s[1].bytes, s[1].reduced), (8.0, 2097152.0, 2097152.0));
        assert_eq!((s[2].messages, s[2].bytes, s[2].reduced), (8.0, 2097152.0, 0.0));
        assert_eq!((s[3].kind, s[3].bytes, s[3].reduced), (Kind::OneWay, 4194304.0, 0.0));
        assert!(s.iter().all(|p| p.footprint == 4194304.0 && p.active == 2));
        assert_eq!(s.iter().map(|p| p.streamed).collect::<Vec<_>>(), vec![4194304.0, 4194304.0, 0.0, 4194304.0]);
    }

    fn host(cores: f64) -> Host {
        Host {
            exchange: vec![
                (2, Regimes::one(Link { alpha: 10e-6, beta: 1e-9 })),
                (4, Regimes::one(Link { alpha: 30e-6, beta: 2e-9 })),
            ],
            one_way: Regimes::one(Link { alpha: 5e-6, beta: 0.5e-9 }),
            gamma: Regimes::one(Link { alpha: 0.0, beta: 0.5e-9 }),
            cores,
        }
    }

    #[test]
    fn a_phase_takes_the_exchange_fit_probed_at_its_active_ranks_or_the_nearest_below() {
        let h = host(2.0);
        let alpha = |active| h.exchange(active).small.alpha;
        assert_eq!([alpha(1), alpha(2), alpha(3), alpha(4), alpha(8)], [10e-6, 10e-6, 10e-6, 30e-6, 30e-6]);
    }

    #[test]
    fn host_time_charges_alpha_per_message_and_the_lockstep_share_of_gamma() {
        let two = host(2.0);
        // 2 ranks, 4 KiB: 2·10 µs + 4096 ns + 2048·0.5 ns = 25.12 µs.
        assert!(close(time_on_host(&ring(2, 4096, &CUT), &two), 25.12e-6));
        // 4 ranks on 2 cores, 4 KiB: 6 messages of 1 KiB blocks at the 4-rank fit, and γ twice
        // (two ranks on a core): 180 µs + 6144·2 ns + 2·3072·0.5 ns.
        assert!(close(time_on_host(&ring(4, 4096, &CUT), &two), 180e-6 + 12288e-9 + 3072e-9));
        // 3 ranks: the 2-rank fit (none at 3); blocks of 342 elements (1368 B), 4 steps; γ twice
        // (⌈3/2⌉): 40 µs + 5472 ns + 2·2736·0.5 ns.
        assert!(close(time_on_host(&ring(3, 4096, &CUT), &two), 40e-6 + 5472e-9 + 2736e-9));
        // 3 ranks, halving-doubling of 4 KiB: fold 5 µs + 4096·0.5 ns + 4096·0.5 ns, the pair's
        // two steps 2·10 µs + 4096 ns + 2048·0.5 ns, unfold 5 µs + 2048 ns.
        let t = (5e-6 + 2048e-9 + 2048e-9) + (20e-6 + 4096e-9 + 1024e-9) + (5e-6 + 2048e-9);
        assert!(close(time_on_host(&halving_doubling(3, 4096, &CUT), &two), t));
        // The same on one core: the fold's and unfold's bytes and every γ count twice; the
        // exchange steps keep the 2-rank fit.
        let t = (5e-6 + 2.0 * 2048e-9 + 2.0 * 2048e-9) + (20e-6 + 4096e-9 + 2.0 * 1024e-9) + (5e-6 + 2.0 * 2048e-9);
        assert!(close(time_on_host(&halving_doubling(3, 4096, &CUT), &host(1.0)), t));
    }

    #[test]
    fn host_time_streams_the_buffer_once_beyond_the_cache() {
        const M: f64 = (16 << 20) as f64;
        let llc = (32 << 20) as f64;
        let mut host = host(2.0);
        // Memory adds 2 ns/B to an exchange, 1 ns/B to a one-way message, 0.5 ns/B to γ.
        host.exchange[0].1.memory = Some(Memory { llc, beta: 3e-9 });
        host.one_way.memory = Some(Memory { llc, beta: 1.5e-9 });
        host.gamma.memory = Some(Memory { llc, beta: 1e-9 });
        // Ring, 2 × 16 MiB reaches the 32 MiB cache: 64 messages in cache, the buffer streamed
        // once, the segments reduced in cache.
        let t = 64.0 * 10e-6 + M * 1e-9 + M * 2e-9 + M / 2.0 * 0.5e-9;
        assert!(close(time_on_host(&ring(2, 16 << 20, &CUT), &host), t));
        // 2 × 4 MiB stays in it: 16 messages, 4 MiB at 1 ns, 2 MiB reduced at 0.5 ns.
        let t = 16.0 * 10e-6 + M / 4.0 * 1e-9 + M / 8.0 * 0.5e-9;
        assert!(close(time_on_host(&ring(2, 4 << 20, &CUT), &host), t));
        // Halving-doubling on 3: the fold's message and its reduction stream whole; the
        // halving step (32 messages of 256 KiB) streams the buffer once, the doubling step
        // does not; the unfold streams whole.
        let fold = 5e-6 + M * (0.5e-9 + 1e-9) + M * (0.5e-9 + 0.5e-9);
        let halving = 32.0 * 10e-6 + M / 2.0 * 1e-9 + M * 2e-9 + M / 2.0 * 0.5e-9;
        let doubling = 32.0 * 10e-6 + M / 2.0 * 1e-9;
        let unfold = 5e-6 + M * (0.5e-9 + 1e-9);
        assert!(close(time_on_host(&halving_doubling(3, 16 << 20, &CUT), &host), fold + halving + doubling + unfold));
    }

    #[test]
    fn cluster_prices_network_steps_and_the_shared_link() {
        // A memory regime from 16 KiB on the host, and a 4-rank fit the cluster must not use
        // (one core per rank: the 2-rank fit).
        let local = Regimes {
            memory: Some(Memory { llc: 16384.0, beta: 0.3e-9 }),
            ..Regimes::one(Link { alpha: 1e-6, beta: 0.1e-9 })
        };
        let intra = Host {
            exchange: vec![(2, local), (4, Regimes::one(Link { alpha: 1.0, beta: 1.0 }))],
            one_way: local,
            gamma: Regimes::one(Link { alpha: 0.0, beta: 0.0 }),
            cores: 1.0,
        };
        let network = Regimes::one(Link { alpha: 100e-6, beta: 1e-9 });
        let c = Cluster { intra, network, per_host: 2 };
        assert_eq!((c.shape(2), c.shape(8)), ((1, 2), (4, 2)));
        // One host: everything local; 2 × 8 KiB reaches 16 KiB: the buffer streams once, at
        // the memory β in all.
        assert!(close(c.ring(2, 4096, &CUT), 2e-6 + 4096.0 * 0.1e-9));
        assert!(close(c.ring(2, 8192, &CUT), 2e-6 + 8192.0 * 0.3e-9));
        // 4 ranks on 2 hosts, 4 KiB. Ring: 6 network messages of 1 KiB.
        assert!(close(c.ring(4, 4096, &CUT), 6.0 * 100e-6 + 6.0 * 1024.0 * 1e-9));
        // 4 ranks of 8 KiB: 2 per host reach 16 KiB; the wire, and the host's pass over the
        // buffer at the 0.2 ns/B memory adds.
        assert!(close(c.ring(4, 8192, &CUT), 6.0 * 100e-6 + 6.0 * 2048.0 * 1e-9 + 8192.0 * 0.2e-9));
        // Halving-doubling: the distance-2 steps (2 KiB each) cross with both ranks of a host
        // on the link; the distance-1 steps stay home.
        let t = 2.0 * (100e-6 + 2.0 * 2048.0 * 1e-9) + 2.0 * (1e-6 + 1024.0 * 0.1e-9);
        assert!(close(c.halving_doubling(4, 4096, &CUT), t));
        // Hierarchical: a local 2-rank ring on 4 KiB (2 messages, 4096 bytes), then 2 rings of
        // 2 KiB across 2 hosts (2 messages of 1 KiB each, both rings on the link).
        let t = (2e-6 + 4096.0 * 0.1e-9) + (2.0 * 100e-6 + 2.0 * 2048.0 * 1e-9);
        assert!(close(c.hierarchical(4, 4096, &CUT), t));
    }
}
