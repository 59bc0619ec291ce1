//! The host backend: host memory, algorithms over the host transport, picked by message size.

use super::{Backend, Error, Links, Request, Work};
use crate::algorithms::{self as alg, Params};
use crate::collective::Collective;
use crate::config::{AllreduceAlgorithm, Hierarchical, Tuning};
use crate::dtype::ReduceOp;
use crate::reduce::divide;
use crate::transport::{self, Transport, subset::Subset};
use crate::world::LocalGroup;

/// Runs every collective on host memory.
pub struct HostBackend {
    tuning: Tuning,
    ws: alg::Workspace,
}

impl HostBackend {
    /// A backend with `tuning`.
    pub fn new(tuning: Tuning) -> HostBackend {
        HostBackend { tuning, ws: alg::Workspace::default() }
    }
}

impl Backend for HostBackend {
    fn name(&self) -> &'static str {
        "host"
    }

    fn accepts(&self, req: &Request<'_>) -> bool {
        req.work.is_host()
    }

    fn run(&mut self, req: Request<'_>, links: &mut Links) -> Result<&'static str, Error> {
        let t = links.host.as_mut();
        let n = t.size();
        let tu = &self.tuning;
        let p = Params { tag: req.call.tag(), dtype: req.call.dtype, segment: tu.segment, chunk: tu.ring_chunk };
        let invalid = |detail: String| Error::Invalid { backend: "host", detail };
        let host_only = || invalid("device memory reached the host backend".into());
        match (req.call.collective, req.work) {
            (Collective::Allreduce(op), Work::InPlace { mut buf }) => {
                let buf = buf.host().ok_or_else(host_only)?;
                let ws = &mut self.ws;
                let (rank, staged) = (t.rank(), t.stage().is_some());
                let algorithm = allreduce_algorithm(tu, buf.len(), n, staged);
                let hierarchical =
                    links.local.as_mut().and_then(|g| Some((hierarchical(tu, algorithm, buf.len(), g)?, g)));
                if let Some((between, group)) = hierarchical {
                    let local_rank = group.transport.rank();
                    let stage =
                        group.transport.stage().ok_or_else(|| invalid("a host's ranks share no stage".into()))?;
                    let mut cross = Subset::new(t, &group.cross)
                        .ok_or_else(|| invalid("this rank is not among its local rank's ranks".into()))?;
                    alg::allreduce_hierarchical(stage, &group.ranks, local_rank, &p, buf, op, |block| {
                        flat_allreduce(between, &mut cross, &p, block, op, ws)
                    })?;
                    if op == ReduceOp::Average {
                        divide(p.dtype, buf, n);
                    }
                    return Ok("hierarchical");
                }
                match (algorithm, t.stage()) {
                    (AllreduceAlgorithm::StageSlots, Some(s)) => alg::allreduce_stage_slots(s, &p, buf, op)?,
                    (AllreduceAlgorithm::StageSplit, Some(s)) => alg::allreduce_stage_split(s, &p, (rank, n), buf, op)?,
                    (flat, _) => flat_allreduce(flat, t, &p, buf, op, ws)?,
                }
                let ran = algorithm.name();
                if op == ReduceOp::Average {
                    divide(p.dtype, buf, n);
                }
                Ok(ran)
            }
            (Collective::Broadcast(root), Work::InPlace { mut buf }) => {
                let buf = buf.host().ok_or_else(host_only)?;
                let rank = t.rank();
                if let Some(s) = t.stage() {
                    alg::broadcast_stage(s, &p, (rank, n), buf, root as usize)?;
                    Ok("stage")
                } else if buf.len() <= tu.small_broadcast {
                    alg::broadcast_binomial(t, &p, buf, root as usize)?;
                    Ok("binomial")
                } else {
                    alg::broadcast_chain(t, &Params { segment: tu.broadcast_segment, ..p }, buf, root as usize)?;
                    Ok("chain")
                }
            }
            (Collective::Barrier, Work::InPlace { .. }) => match t.stage() {
                Some(s) => alg::barrier_stage(s, &p).map(|()| "stage"),
                None => alg::barrier_dissemination(t, &p).map(|()| "dissemination"),
            }
            .map_err(Error::from),
            (Collective::Allgather, Work::Blocks { mut buf, blocks }) => {
                let buf = buf.host().ok_or_else(host_only)?;
                let rank = t.rank();
                match t.stage() {
                    Some(s) => alg::allgather_stage(s, &p, rank, buf, blocks).map(|()| "stage"),
                    None => alg::allgather_ring(t, &p, buf, blocks).map(|()| "ring"),
                }
                .map_err(Error::from)
            }
            (Collective::Reducescatter(op), Work::Blocks { mut buf, blocks }) => {
                let buf = buf.host().ok_or_else(host_only)?;
                let rank = t.rank();
                let ran = match t.stage() {
                    Some(s) => {
                        alg::reducescatter_stage(s, &p, rank, buf, blocks, op)?;
                        "stage"
                    }
                    None => {
                        alg::reducescatter_ring(t, &p, buf, blocks, op, &mut self.ws)?;
                        "ring"
                    }
                };
                if op == ReduceOp::Average {
                    divide(p.dtype, &mut buf[blocks[rank].clone()], n);
                }
                Ok(ran)
            }
            (Collective::Alltoall, Work::Exchange { send, send_blocks, mut recv, recv_blocks }) => {
                let (rank, n) = (t.rank(), t.size());
                let send = send.host().ok_or_else(host_only)?;
                let recv = recv.host().ok_or_else(host_only)?;
                match t.stage() {
                    Some(s) if alg::alltoall_stage_fits(s.region(), n) => {
                        alg::alltoall_stage(s, &p, rank, send, send_blocks, recv, recv_blocks)?;
                        Ok("stage")
                    }
                    _ => {
                        alg::alltoall_pairwise(t, &p, send, send_blocks, recv, recv_blocks)?;
                        Ok("pairwise")
                    }
                }
            }
            (c, work) => {
                let shape = match work {
                    Work::InPlace { .. } => "in place",
                    Work::Blocks { .. } => "in blocks",
                    Work::Exchange { .. } => "as an exchange",
                };
                Err(invalid(format!("{} does not take buffers {shape}", c.name())))
            }
        }
    }
}

/// Runs the flat allreduce `algorithm` over messages (the ring for any other).
fn flat_allreduce(
    algorithm: AllreduceAlgorithm,
    t: &mut dyn Transport,
    p: &Params,
    buf: &mut [u8],
    op: ReduceOp,
    ws: &mut alg::Workspace,
) -> Result<(), transport::Error> {
    match algorithm {
        AllreduceAlgorithm::RecursiveDoubling => alg::allreduce_recursive_doubling(t, p, buf, op, ws),
        AllreduceAlgorithm::HalvingDoubling => alg::allreduce_halving_doubling(t, p, buf, op, ws),
        _ => alg::allreduce_ring(t, p, buf, op, ws),
    }
}

/// Whether an allreduce of `bytes`, for which the flat `algorithm` was chosen, runs
/// hierarchically over `group`, and if so the flat algorithm of its step between hosts:
/// always under `FERROVOD_HIERARCHICAL_ALLREDUCE=on`; under `auto`, where the cost model says
/// it pays, unless `FERROVOD_ALLREDUCE_ALGORITHM` forces a flat algorithm (the group exists
/// only when the knob allows it).
fn hierarchical(
    tuning: &Tuning,
    algorithm: AllreduceAlgorithm,
    bytes: usize,
    group: &LocalGroup,
) -> Option<AllreduceAlgorithm> {
    let (hosts, local) = (group.cross.len(), group.ranks.len());
    let between = allreduce_algorithm(tuning, bytes.div_ceil(local), hosts, false);
    let taken = match tuning.hierarchical {
        Hierarchical::On => true,
        Hierarchical::Off => false,
        Hierarchical::Auto if tuning.allreduce != AllreduceAlgorithm::Auto => false,
        Hierarchical::Auto => alg::allreduce_hierarchical::pays(algorithm, between, bytes, local, hosts),
    };
    taken.then_some(between)
}

/// Up to this many bytes per rank beyond the first, the stage's slots beat its split: they
/// wait once per piece instead of twice but read every rank's data (see the two algorithms).
const STAGE_SLOTS_PER_PEER: usize = 64 << 10;

/// The stage algorithm (slots or split) the host backend would run for an allreduce of `bytes`
/// on `n` ranks that share a stage, if it would run one (the engine then packs its fused piece
/// straight into the stage).
pub(crate) fn stage_allreduce(tuning: &Tuning, bytes: usize, n: usize) -> Option<AllreduceAlgorithm> {
    let algorithm = allreduce_algorithm(tuning, bytes, n, true);
    matches!(algorithm, AllreduceAlgorithm::StageSlots | AllreduceAlgorithm::StageSplit).then_some(algorithm)
}

/// The allreduce algorithm for `bytes` on `n` ranks. Over a shared stage: the slots for small
/// messages, the split for large ones. Otherwise: recursive doubling up to `small_allreduce`
/// bytes (latency), halving-doubling above it when n is a power of two of at least 4 (fewer
/// steps than the ring for the same bytes), the ring otherwise (no fold). A stage algorithm
/// asked for without a stage falls back to the choice without one.
fn allreduce_algorithm(tuning: &Tuning, bytes: usize, n: usize, staged: bool) -> AllreduceAlgorithm {
    let asked = match tuning.allreduce {
        AllreduceAlgorithm::StageSlots | AllreduceAlgorithm::StageSplit if !staged => AllreduceAlgorithm::Auto,
        asked => asked,
    };
    match asked {
        AllreduceAlgorithm::Auto if staged && bytes * (n - 1) <= STAGE_SLOTS_PER_PEER => AllreduceAlgorithm::StageSlots,
        AllreduceAlgorithm::Auto if staged => AllreduceAlgorithm::StageSplit,
        AllreduceAlgorithm::Auto if bytes <= tuning.small_allreduce => AllreduceAlgorithm::RecursiveDoubling,
        AllreduceAlgorithm::Auto if n >= 4 && n.is_power_of_two() => AllreduceAlgorithm::HalvingDoubling,
        AllreduceAlgorithm::Auto => AllreduceAlgorithm::Ring,
        chosen => chosen,
    }
}
