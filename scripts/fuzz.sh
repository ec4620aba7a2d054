#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a while with libFuzzer, on the stable toolchain.
#
#   scripts/fuzz.sh            # 60 s per target (what CI runs)
#   scripts/fuzz.sh 600        # longer
#
# cargo-fuzz needs nightly for its sanitizer flags; the coverage instrumentation libFuzzer
# needs is available on stable (`-Cpasses=sancov-module` and LLVM's sanitizer-coverage
# options), so this builds the targets with those flags (release, debug assertions on,
# `--cfg fuzzing`) into their own target directory and runs each binary with
# `-max_total_time`. Without AddressSanitizer a memory error is not caught, but Culex's
# decoders are safe Rust: what a run finds is a panic (failed assertion, overflow, out of
# bounds), which libFuzzer reports with the input that caused it (saved as crash-* in the
# target's artifact directory). Any finding makes the script exit non-zero.
#
# Environment: CARGO_TARGET_DIR (the fuzz build goes to $CARGO_TARGET_DIR/fuzz, default
# ./target/fuzz).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_PER_TARGET="${1:-60}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/fuzz"
WORK="$TARGET_DIR/runs"

export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
-Cdebug-assertions -Coverflow-checks"

# An explicit --target keeps RUSTFLAGS off the build scripts (they would not link).
HOST="$(rustc -vV | sed -n 's/^host: //p')"
CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release --target "$HOST" \
    --manifest-path "$ROOT/fuzz/Cargo.toml" --bins

targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' "$ROOT/fuzz/Cargo.toml" | grep -v '^culex-proto-fuzz$')
failed=0
for t in $targets; do
    corpus="$WORK/$t/corpus"
    artifacts="$WORK/$t/artifacts/"
    mkdir -p "$corpus" "$artifacts"
    # Seeds kept in the repository, if any, are read but never written.
    seeds=()
    [ -d "$ROOT/fuzz/corpus/$t" ] && seeds=("$ROOT/fuzz/corpus/$t")
    echo "fuzz: $t for ${SECONDS_PER_TARGET}s"
    if ! "$TARGET_DIR/$HOST/release/$t" -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 \
        -artifact_prefix="$artifacts" "$corpus" "${seeds[@]}" 2>"$WORK/$t/log"; then
        echo "fuzz: $t FAILED; its log ends with:" >&2
        tail -40 "$WORK/$t/log" >&2
        failed=1
    else
        grep -E "stat::number_of_executed_units|stat::new_units_added" "$WORK/$t/log" | sed "s/^/fuzz: $t: /"
    fi
done
exit "$failed"
