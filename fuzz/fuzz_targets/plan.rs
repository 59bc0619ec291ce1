//! The barrier plan (runner/src/plan.rs `Plan::parse`), the JSON the Spark side writes.
//!
//! Checks: a plan that parses writes JSON that parses to an equal plan, is valid, and has its
//! tasks in index order; an error is a message of bounded length (errors quote at most
//! `MAX_QUOTED` bytes of any value), never a panic.
#![no_main]

use ferrovod_runner::plan::Plan;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Plan::parse(text) {
        Ok(plan) => {
            assert!(plan.validate().is_ok());
            assert!(plan.tasks.windows(2).all(|w| w[0].index < w[1].index));
            assert!(plan.my_task().is_some());
            assert_eq!(Plan::parse(&plan.to_json()).expect("a written plan parses"), plan);
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty() && msg.len() < 1000, "{} bytes: {msg}", msg.len());
        }
    }
});
