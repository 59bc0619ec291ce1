#!/usr/bin/env bash
# Coverage-guided fuzzing of every decoder of bytes from the network or a file (fuzz/): builds
# the cargo-fuzz targets on the stable toolchain (libFuzzer's coverage flags are stable; no
# sanitizer, so no nightly), runs each for FUZZ_SECONDS (default 15) from the checked-in seeds
# plus whatever corpus fuzz/corpus/ already holds, then the Python control-channel fuzzer for
# the same time. Fails on the first crash, naming the target and the input it left in
# fuzz/artifacts/. Installs cargo-fuzz (pinned) when it is missing.
#
#   FUZZ_SECONDS=60 scripts/fuzz.sh            # every target
#   FUZZ_SECONDS=600 scripts/fuzz.sh negotiate # one target (or "control" for the Python one)
#   FUZZ_SEED=0 FUZZ_SECONDS=600 scripts/fuzz.sh # a random seed, as the long runs use
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
seconds="${FUZZ_SECONDS:-15}"
# A fixed seed by default, so that a CI run explores the same inputs every time (a new find is a
# long run's to make, not a coin toss of CI's); FUZZ_SEED=0 lets libFuzzer pick one.
seed="${FUZZ_SEED:-1}"
cargo_fuzz_version=0.13.2

if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $cargo_fuzz_version" ]; then
    cargo install cargo-fuzz --version "=$cargo_fuzz_version" --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(store_request store_response handshake tcp_hello tcp_header shm_hello negotiate rendezvous
        first_failure plan events control)
fi

cd fuzz
rust_targets=()
for t in "${targets[@]}"; do [ "$t" = control ] || rust_targets+=("$t"); done
if [ ${#rust_targets[@]} -gt 0 ]; then
    cargo fuzz build --sanitizer none
fi
for t in "${rust_targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    seeds=()
    [ -d "seeds/$t" ] && seeds=("seeds/$t")
    echo "fuzz: $t for ${seconds} s"
    # -rss_limit_mb bounds memory as a whole; the targets themselves check each decoder's
    # largest allocation against what its input may claim.
    if ! cargo fuzz run --sanitizer none "$t" "corpus/$t" "${seeds[@]}" -- \
        -max_total_time="$seconds" -seed="$seed" -rss_limit_mb=2048 -print_final_stats=1 >"artifacts/$t/log" 2>&1; then
        tail -n 40 "artifacts/$t/log" >&2
        echo "fuzz: $t crashed; the input is in fuzz/artifacts/$t/ (replay: cd fuzz && cargo fuzz run -s none $t FILE)" >&2
        exit 1
    fi
    grep -E '^stat::number_of_executed_units|^Done' "artifacts/$t/log" | tr '\n' ' '
    echo
done
for t in "${targets[@]}"; do
    if [ "$t" = control ]; then
        python="${PYTHON:-../.venv/bin/python}"
        [ -x "$python" ] || python=python3
        echo "fuzz: control for ${seconds} s"
        seed_arg=()
        [ "$seed" = 0 ] || seed_arg=(--seed "$seed")
        "$python" control_fuzz.py --seconds "$seconds" "${seed_arg[@]}"
    fi
done
