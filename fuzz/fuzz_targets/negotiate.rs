//! The engine's negotiation frames (engine/negotiate.rs): a round's gathered fixed-size frames
//! and spilled tails decoded into every rank's message, then decided by `agree` and planned
//! into buckets by the fusion, as the engine does with what its peers sent.
//!
//! Input: ranks, cache size, eager bytes, cache slots (a byte each), then the frames, then the
//! spilled tails. Checks: lengths over the limit are refused without allocating them; a
//! decoded message encodes to bytes that decode to the same encoding; deciding the same round
//! twice gives the same decisions; nothing panics (sizes of announced tensors included).
#![no_main]

use ferrovod::fuzzing::{
    MAX_NEGOTIATION, negotiation_frame, negotiation_message, negotiation_round, negotiation_spills,
};
use ferrovod_fuzz::{largest_allocation, take};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let [ranks, cache_len, eager, slots] = take::<4>(&mut data);
    let ranks = usize::from(ranks % 4) + 1;
    let frame = negotiation_frame(usize::from(cache_len) * 4, usize::from(eager) * 4);
    let mut all = data.get(..frame * ranks).map(<[u8]>::to_vec).unwrap_or_else(|| data.to_vec());
    all.resize(frame * ranks, 0);
    let rest_in = data.get(frame * ranks..).unwrap_or_default();

    let (spills, largest) = largest_allocation(|| negotiation_spills(frame, &all));
    assert!(largest < 4096, "{largest} bytes allocated reading the lengths");
    let spills = match spills {
        Ok(s) => s,
        Err(e) => {
            let claimed = all.chunks(frame).map(|f| u32::from_le_bytes(f[..4].try_into().unwrap()) as usize);
            assert!(claimed.clone().any(|c| c > MAX_NEGOTIATION), "refused lengths under the limit: {e}");
            return;
        }
    };
    // The second allgather carries exactly the spilled bytes; the harness takes them from the
    // input (zeros past its end). Past 64 KiB a tail is zeros only, which a shorter one covers;
    // a larger cap made every run 10x slower (a whole tail decoded and agreed twice).
    let spilled: usize = spills.iter().sum();
    if spilled > 1 << 16 {
        return;
    }
    let mut rest = rest_in[..rest_in.len().min(spilled)].to_vec();
    rest.resize(spilled, 0);

    let slots = usize::from(slots % 8);
    let Ok(round) = negotiation_round(frame, &all, &rest, slots) else { return };
    for m in &round.encoded {
        assert_eq!(negotiation_message(m).as_deref(), Some(&m[..]), "a message encodes to what it decodes from");
    }
    let again = negotiation_round(frame, &all, &rest, slots).expect("decoded once, decodes again");
    assert_eq!(round.agreement, again.agreement, "the same round decides the same way");
    assert_eq!(round.ready_bytes, again.ready_bytes);
});
