//! A piece of an allreduce whose bytes lie in several places, end to end (the engine's fused
//! tensors): the stage algorithms write it straight into their region and put the sums straight
//! back where the bytes lie, so the region is the fusion buffer and nothing is copied twice.

use std::ops::Range;

/// A piece of a region or less whose bytes lie in several places, end to end.
pub trait Packed {
    /// Writes the piece's bytes `span`, end to end, into `out` (`span.len()` bytes).
    fn pack(&self, span: Range<usize>, out: &mut [u8]);
    /// Calls `put(dst, at)` for every place the piece's bytes `span` go, in order, covering
    /// `span`: `dst` is where the piece's bytes `at..at + dst.len()` belong. The algorithms ask
    /// for spans of whole elements, and get whole elements.
    fn unpack(&mut self, span: Range<usize>, put: &mut dyn FnMut(&mut [u8], usize));
}

/// A piece made of byte runs that lie apart, end to end in this order (the engine's host tensors,
/// each a run).
pub struct Runs<'a>(pub Vec<&'a mut [u8]>);

impl Runs<'_> {
    fn lengths(&self) -> Vec<usize> {
        self.0.iter().map(|r| r.len()).collect()
    }
}

impl Packed for Runs<'_> {
    fn pack(&self, span: Range<usize>, out: &mut [u8]) {
        let start = span.start;
        for (run, within, at) in runs_within(self.lengths(), span) {
            let bytes = &self.0[run][within];
            out[at - start..at - start + bytes.len()].copy_from_slice(bytes);
        }
    }

    fn unpack(&mut self, span: Range<usize>, put: &mut dyn FnMut(&mut [u8], usize)) {
        for (run, within, at) in runs_within(self.lengths(), span) {
            put(&mut self.0[run][within], at);
        }
    }
}

/// The parts of `runs` (lengths, end to end from 0) that meet `span`: (run index, bytes
/// within the run, offset of those bytes in the piece).
pub fn runs_within(
    runs: impl IntoIterator<Item = usize>,
    span: Range<usize>,
) -> impl Iterator<Item = (usize, Range<usize>, usize)> {
    let mut start = 0;
    let runs = runs.into_iter().enumerate().map(move |(i, len)| {
        start += len;
        (i, start - len..start)
    });
    runs.take_while(move |(_, run)| run.start < span.end).filter_map(move |(i, run)| {
        let (from, to) = (run.start.max(span.start), run.end.min(span.end));
        (from < to).then(|| (i, from - run.start..to - run.start, from))
    })
}

#[cfg(test)]
mod tests {
    use super::runs_within;

    #[test]
    fn runs_within_cuts_the_runs_that_meet_a_span() {
        let runs = [4, 0, 8, 4];
        let got: Vec<_> = runs_within(runs, 2..10).collect();
        assert_eq!(got, vec![(0, 2..4, 2), (2, 0..6, 4)]);
        let got: Vec<_> = runs_within(runs, 0..16).collect();
        assert_eq!(got, vec![(0, 0..4, 0), (2, 0..8, 4), (3, 0..4, 12)]);
        assert_eq!(runs_within(runs, 12..16).collect::<Vec<_>>(), vec![(3, 0..4, 12)]);
        assert_eq!(runs_within(runs, 5..5).count(), 0);
    }
}
