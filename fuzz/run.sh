#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer's coverage instrumentation (what
# `cargo fuzz build -s none` does, on the stable toolchain and with no tool
# but cargo) and runs them:
#
#   fuzz/run.sh smoke          every target for a few seconds from its seeds
#                              (CI: a crash fails the run)
#   fuzz/run.sh TARGET [RUNS]  one target for RUNS executions (default: until
#                              stopped), growing fuzz/work/TARGET
#   fuzz/run.sh list           the targets
#
# The build has its own target directory (${CARGO_TARGET_DIR:-target}/fuzz):
# its flags differ from a normal build's, which would otherwise rebuild
# everything each time. A crashing input lands in fuzz/artifacts/TARGET/;
# rerun it with `BIN fuzz/artifacts/TARGET/crash-…` (the path is printed).
set -euo pipefail
cd "$(dirname "$0")"

# Seconds each target runs in a smoke run.
SMOKE_SECONDS=3

targets=()
for file in fuzz_targets/*.rs; do
    name=${file#fuzz_targets/}
    targets+=("${name%.rs}")
done

host=$(rustc -vV | sed -n 's/^host: //p')
target_dir="${CARGO_TARGET_DIR:-../target}/fuzz"
bin_dir="$target_dir/$host/release"

build() {
    # --target keeps these flags off build scripts and proc macros, which
    # are not fuzzed and would fail to link with coverage hooks.
    CARGO_TARGET_DIR="$target_dir" \
    RUSTFLAGS="-Cpasses=sancov-module \
        -Cllvm-args=-sanitizer-coverage-level=4 \
        -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
        -Cllvm-args=-sanitizer-coverage-pc-table \
        -Cllvm-args=-sanitizer-coverage-trace-compares \
        --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
        cargo build --release --target "$host" -p gatehouse-fuzz --bins
}

# run TARGET GROWN_CORPUS_DIR LIBFUZZER_OPTIONS...: fuzzes from the grown
# corpus and the seeds; new inputs go to the grown one only.
run() {
    local target=$1 grown=$2
    shift 2
    mkdir -p "$grown" "artifacts/$target"
    "$bin_dir/$target" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="artifacts/$target/" "$@" "$grown" "corpus/$target"
}

case "${1:-}" in
list)
    printf '%s\n' "${targets[@]}"
    ;;
smoke)
    build
    grown=$(mktemp -d)
    trap 'rm -rf "$grown"' EXIT
    for target in "${targets[@]}"; do
        log="$grown/$target.log"
        if ! run "$target" "$grown/$target" -max_total_time="$SMOKE_SECONDS" >"$log" 2>&1; then
            cat "$log"
            echo "fuzz target $target failed: see above" >&2
            exit 1
        fi
        # "#123 DONE cov: 456 ft: 789 corp: …" and "Done 123 runs in 3 second(s)"
        printf '%-24s %s; %s\n' "$target" \
            "$(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$log")" \
            "$(grep -o 'DONE *cov: [0-9]*' "$log" | sed 's/DONE */coverage /')"
    done
    ;;
'' | -*)
    echo "usage: $0 smoke | list | TARGET [RUNS]" >&2
    exit 2
    ;;
*)
    target=$1
    if [[ ! -f fuzz_targets/$target.rs ]]; then
        echo "no fuzz target $target; there are: ${targets[*]}" >&2
        exit 2
    fi
    build
    runs=()
    if [[ -n ${2:-} ]]; then runs=(-runs="$2"); fi
    run "$target" "work/$target" "${runs[@]}"
    ;;
esac
