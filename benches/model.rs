//! The alpha-beta (Hockney) cost model behind `ferrovod-bench --model`: pure functions, no I/O.
//!
//! A message of m bytes costs α + m·β; reducing m bytes costs m·γ. The parameters come from a
//! least-squares fit of microbenchmarks ([`fit_line`]), never from allreduce timings.
//!
//! The allreduces are modelled as ferrovod runs them, not as the textbook writes them: the
//! ring works on pieces of `chunk` bytes (each a ring allreduce of its own) and every step is
//! cut into `segment`-byte messages; halving-doubling folds the ranks beyond a power of two
//! with one whole-buffer message each way and cuts its steps into segments too. Each message
//! on a rank's critical path pays one α (latency is not assumed to hide behind other
//! messages), the bytes a rank sends pay β, the bytes it reduces γ.
//!
//! Two kinds of link: an *exchange* (both ranks send and receive at once, as every ring and
//! halving-doubling step does) and a *one-way* message (the fold). Each has its own fitted α
//! and β: on loopback the sender and the receiver both copy every byte on their own core, so
//! a bidirectional step costs more per byte than one direction of a ping-pong.
//!
//! On one host with fewer cores than active ranks the byte terms are CPU work that the ranks
//! share: a phase's β and γ terms are scaled by max(1, active ranks / cores). The cluster
//! predictions assume one core per rank.
//!
//! Hierarchical allreduce (not implemented in ferrovod; a prediction only), the variant with
//! one ring per local rank: H hosts of L ranks; (1) a ring reduce-scatter among the L ranks
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

/// A cost fitted in two regimes of message size: up to `boundary` bytes per message (the data
/// stays in cache) and above it (it streams through memory, 2-3x dearer per byte here).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Regimes {
    /// Messages of at most `boundary` bytes.
    pub small: Link,
    /// Larger messages.
    pub large: Link,
    /// Bytes per message where the regimes meet.
    pub boundary: f64,
}

impl Regimes {
    /// One regime for every size.
    pub fn one(link: Link) -> Regimes {
        Regimes { small: link, large: link, boundary: f64::INFINITY }
    }

    /// Time of `messages` messages of `bytes` bytes in all, priced by their mean size.
    pub fn time(&self, messages: f64, bytes: f64) -> f64 {
        let link = if bytes > self.boundary * messages.max(1.0) { self.large } else { self.small };
        link.time(messages, bytes)
    }
}

/// One transport between the ranks of one host, as fitted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Host {
    /// Both ranks send and receive at once.
    pub exchange: Regimes,
    /// One rank sends, the other receives.
    pub one_way: Regimes,
    /// Reduction (f32 sum): α 0, β the seconds per byte.
    pub gamma: Regimes,
    /// Cores the ranks share (for the oversubscription factor).
    pub cores: f64,
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
    /// Ranks busy during the phase (for the oversubscription factor).
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
}

/// Time of `phases` on one host: α per message, and β and γ per byte scaled by how many
/// active ranks share each core.
pub fn time_on_host(phases: &[Phase], host: &Host) -> f64 {
    phases
        .iter()
        .map(|p| {
            let link = match p.kind {
                Kind::Exchange => host.exchange,
                Kind::OneWay => host.one_way,
            };
            let share = (p.active as f64 / host.cores).max(1.0);
            let alphas = link.time(p.messages, 0.0);
            alphas + share * (link.time(p.messages, p.bytes) - alphas + host.gamma.time(p.messages, p.reduced))
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
    let mut phase = Phase { kind: Kind::Exchange, active: n, distance: 0, messages: 0.0, bytes: 0.0, reduced: 0.0 };
    if n < 2 {
        return vec![];
    }
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
    let whole = |reduced: f64| Phase {
        kind: Kind::OneWay,
        active: 2 * q,
        distance: 0,
        messages: 1.0,
        bytes: bytes as f64,
        reduced,
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
    for (distance, reduce) in distances {
        let mut step = Phase { kind: Kind::Exchange, active: p, distance, messages: 0.0, bytes: 0.0, reduced: 0.0 };
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
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cluster {
    /// Ranks on one host, over their intra-host transport (one core each).
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

    fn local(&self, phase: &Phase) -> f64 {
        let link = match phase.kind {
            Kind::Exchange => self.intra.exchange,
            Kind::OneWay => self.intra.one_way,
        };
        link.time(phase.messages, phase.bytes) + self.intra.gamma.time(phase.messages, phase.reduced)
    }

    fn remote(&self, phase: &Phase, flows: usize) -> f64 {
        let wire = self.network.time(phase.messages, phase.bytes);
        let alphas = self.network.time(phase.messages, 0.0);
        alphas + (wire - alphas) * flows as f64 + self.intra.gamma.time(phase.messages, phase.reduced)
    }

    /// ferrovod's ring over all n ranks, ordered host by host: every step waits for the
    /// slowest link, the one between hosts, which carries one flow per host.
    pub fn ring(&self, n: usize, bytes: usize, cut: &Cutting) -> f64 {
        let (hosts, _) = self.shape(n);
        ring(n, bytes, cut)
            .iter()
            .map(|p| if hosts > 1 { self.remote(p, 1).max(self.local(p)) } else { self.local(p) })
            .sum()
    }

    /// ferrovod's halving-doubling over all n ranks, ordered host by host: a step whose partner
    /// is `per_host` or more ranks away crosses the network with all of a host's ranks at once.
    pub fn halving_doubling(&self, n: usize, bytes: usize, cut: &Cutting) -> f64 {
        let (hosts, per_host) = self.shape(n);
        halving_doubling(n, bytes, cut)
            .iter()
            .map(|p| if hosts > 1 && p.distance >= per_host { self.remote(p, per_host) } else { self.local(p) })
            .sum()
    }

    /// The hierarchical allreduce of the module docs (a prediction: ferrovod has none),
    /// built from ferrovod's ring pieces: reduce-scatter within each host, one ring allreduce
    /// per local rank across hosts on its 1/L share (all L sharing the host's link),
    /// allgather within each host.
    pub fn hierarchical(&self, n: usize, bytes: usize, cut: &Cutting) -> f64 {
        let (hosts, per_host) = self.shape(n);
        let intra = if per_host > 1 {
            // A ring allreduce's phase is reduce-scatter + allgather, half the steps each.
            ring(per_host, bytes, cut).iter().map(|p| self.local(p)).sum::<f64>()
        } else {
            0.0
        };
        let share = bytes.div_ceil(per_host * cut.elem) * cut.elem;
        let inter: f64 = ring(hosts, share, cut).iter().map(|p| self.remote(p, per_host)).sum();
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
    fn link_from_microseconds_and_gigabits() {
        let l = Link::from_us_gbit(200.0, 10.0);
        assert!(close(l.alpha, 200e-6) && close(l.beta, 0.8e-9));
        assert!(close(l.time(2.0, 1e6), 400e-6 + 0.8e-3));
    }

    #[test]
    fn regimes_price_messages_by_their_mean_size() {
        let r = Regimes {
            small: Link { alpha: 1e-6, beta: 1e-9 },
            large: Link { alpha: 2e-6, beta: 3e-9 },
            boundary: 1024.0,
        };
        // 4 messages of 1 KiB: small; 2 of 2 KiB: large.
        assert!(close(r.time(4.0, 4096.0), 4e-6 + 4096e-9));
        assert!(close(r.time(2.0, 4096.0), 4e-6 + 3.0 * 4096e-9));
    }

    #[test]
    fn ring_counts_messages_bytes_and_reductions_as_ferrovod_cuts_them() {
        // 4 KiB on 2 ranks: one piece, blocks of 2 KiB, one segment: 2 messages.
        assert_eq!(
            ring(2, 4096, &CUT),
            vec![Phase { kind: Kind::Exchange, active: 2, distance: 0, messages: 2.0, bytes: 4096.0, reduced: 2048.0 }]
        );
        // 16 MiB on 2 ranks: 16 pieces, blocks of 512 KiB = 2 segments, 2 steps: 64 messages.
        let p = ring(2, 16 << 20, &CUT)[0];
        assert_eq!((p.messages, p.bytes, p.reduced), (64.0, (16 << 20) as f64, (8 << 20) as f64));
        // 4 MiB on 3 ranks: 4 pieces of 262144 elements, largest block 87382 elements
        // (349528 bytes, 2 segments), 4 steps: 4 × 4 × 2 messages.
        let p = ring(3, 4 << 20, &CUT)[0];
        assert_eq!((p.messages, p.bytes, p.reduced), (32.0, 16.0 * 349528.0, 8.0 * 349528.0));
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
        // 4 MiB on 3 ranks: fold (4 MiB one way, reduced), 2 steps of 2 MiB in 4 pieces of
        // 512 KiB = 2 segments each, unfold.
        let s = halving_doubling(3, 4 << 20, &CUT);
        assert_eq!(s.len(), 4);
        assert_eq!((s[0].kind, s[0].active, s[0].bytes, s[0].reduced), (Kind::OneWay, 2, 4194304.0, 4194304.0));
        assert_eq!((s[1].messages, s[1].bytes, s[1].reduced), (8.0, 2097152.0, 2097152.0));
        assert_eq!((s[2].messages, s[2].bytes, s[2].reduced), (8.0, 2097152.0, 0.0));
        assert_eq!((s[3].kind, s[3].bytes, s[3].reduced), (Kind::OneWay, 4194304.0, 0.0));
    }

    #[test]
    fn host_time_charges_alpha_per_message_and_shares_cores() {
        let host = Host {
            exchange: Regimes::one(Link { alpha: 10e-6, beta: 1e-9 }),
            one_way: Regimes::one(Link { alpha: 5e-6, beta: 0.5e-9 }),
            gamma: Regimes::one(Link { alpha: 0.0, beta: 0.5e-9 }),
            cores: 2.0,
        };
        // 2 ranks, 4 KiB: 2·10 µs + 4096 ns + 2048·0.5 ns = 25.12 µs.
        assert!(close(time_on_host(&ring(2, 4096, &CUT), &host), 25.12e-6));
        // 4 ranks on 2 cores: the byte terms count twice. 4 KiB: 6 messages of 1 KiB blocks.
        let t = 6.0 * 10e-6 + 2.0 * (6.0 * 1024.0 * 1e-9 + 3.0 * 1024.0 * 0.5e-9);
        assert!(close(time_on_host(&ring(4, 4096, &CUT), &host), t));
        // 3 ranks, halving-doubling of 4 KiB: fold 5 µs + 4096·0.5 ns + 4096·0.5 ns, the pair's
        // two steps 2·10 µs + 4096 ns + 2048·0.5 ns, unfold 5 µs + 2048 ns.
        let t = (5e-6 + 2048e-9 + 2048e-9) + (20e-6 + 4096e-9 + 1024e-9) + (5e-6 + 2048e-9);
        assert!(close(time_on_host(&halving_doubling(3, 4096, &CUT), &host), t));
    }

    #[test]
    fn cluster_prices_network_steps_and_the_shared_link() {
        let local = Regimes::one(Link { alpha: 1e-6, beta: 0.1e-9 });
        let intra =
            Host { exchange: local, one_way: local, gamma: Regimes::one(Link { alpha: 0.0, beta: 0.0 }), cores: 1.0 };
        let c = Cluster { intra, network: Regimes::one(Link { alpha: 100e-6, beta: 1e-9 }), per_host: 2 };
        assert_eq!((c.shape(2), c.shape(8)), ((1, 2), (4, 2)));
        // One host: everything local.
        assert!(close(c.ring(2, 4096, &CUT), 2e-6 + 4096.0 * 0.1e-9));
        // 4 ranks on 2 hosts, 4 KiB. Ring: 6 network messages of 1 KiB.
        assert!(close(c.ring(4, 4096, &CUT), 6.0 * 100e-6 + 6.0 * 1024.0 * 1e-9));
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
