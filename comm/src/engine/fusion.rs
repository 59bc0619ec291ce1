//! Fusion: packing the tensors a round made ready into few collectives.
//!
//! Allreduces with the same dtype, op and memory (host or device) are packed, in round order,
//! into buckets of at most `threshold` bytes (one larger than that runs alone). Every rank
//! plans from the same ready list, so bucket membership is the same everywhere whatever the
//! timing.

use super::negotiate::Ready;
use super::request::Collective;

/// One collective to run.
#[derive(Debug)]
pub(crate) struct Bucket {
    pub entries: Vec<Ready>,
}

/// The buckets for `ready`, in the order every rank runs them.
pub(crate) fn plan(ready: Vec<Ready>, threshold: usize) -> Vec<Bucket> {
    let mut buckets: Vec<Bucket> = Vec::new();
    // Open bucket per (dtype, op, device memory): index into `buckets` and its bytes so far.
    let mut open: Vec<((crate::DType, Collective, bool), usize, usize)> = Vec::new();
    for r in ready {
        let bytes = r.meta.bytes();
        let key = (r.meta.dtype, r.meta.collective, r.meta.device);
        let fusable = matches!(r.meta.collective, Collective::Allreduce(_)) && bytes < threshold;
        if !fusable {
            buckets.push(Bucket { entries: vec![r] });
            continue;
        }
        match open.iter_mut().find(|(k, _, _)| *k == key) {
            Some((_, at, total)) if *total + bytes <= threshold => {
                buckets[*at].entries.push(r);
                *total += bytes;
            }
            Some(slot) => {
                *slot = (key, buckets.len(), bytes);
                buckets.push(Bucket { entries: vec![r] });
            }
            None => {
                open.push((key, buckets.len(), bytes));
                buckets.push(Bucket { entries: vec![r] });
            }
        }
    }
    buckets
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::{DType, ReduceOp};
    use crate::engine::request::Meta;

    fn ready(name: &str, dtype: DType, op: ReduceOp, elems: u64) -> Ready {
        let meta =
            Meta { collective: Collective::Allreduce(op), dtype, shape: vec![elems], group: None, device: false };
        Ready { name: name.into(), meta, present: vec![true; 2], slot: None, eager: None }
    }

    fn names(buckets: &[Bucket]) -> Vec<Vec<&str>> {
        buckets.iter().map(|b| b.entries.iter().map(|e| e.name.as_str()).collect()).collect()
    }

    #[test]
    fn packs_by_dtype_and_op_up_to_the_threshold() {
        let r = vec![
            ready("a", DType::F32, ReduceOp::Sum, 10),
            ready("b", DType::F64, ReduceOp::Sum, 10),
            ready("c", DType::F32, ReduceOp::Sum, 10),
            ready("d", DType::F32, ReduceOp::Max, 10),
            ready("e", DType::F32, ReduceOp::Sum, 10),
            ready("big", DType::F32, ReduceOp::Sum, 1000),
        ];
        assert_eq!(names(&plan(r.clone(), 100)), [vec!["a", "c"], vec!["b"], vec!["d"], vec!["e"], vec!["big"]]);
        assert_eq!(names(&plan(r.clone(), 0)).len(), 6, "threshold 0: every tensor alone");
        assert_eq!(names(&plan(r, 1 << 20))[0], ["a", "c", "e", "big"]);
    }

    #[test]
    fn never_packs_host_and_device_tensors_together() {
        let on_device = |name| {
            let mut r = ready(name, DType::F32, ReduceOp::Sum, 10);
            r.meta.device = true;
            r
        };
        let r = vec![
            ready("a", DType::F32, ReduceOp::Sum, 10),
            on_device("g1"),
            ready("b", DType::F32, ReduceOp::Sum, 10),
            on_device("g2"),
        ];
        assert_eq!(names(&plan(r, 1 << 20)), [vec!["a", "b"], vec!["g1", "g2"]]);
    }
}
