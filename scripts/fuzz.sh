#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ one after the other, each for a fixed time.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      (default: 30 s, every target)
#
# 1. Installs cargo-fuzz if `cargo fuzz` is missing; builds every target with nightly
#    (libFuzzer, AddressSanitizer, debug assertions and overflow checks).
# 2. Per target: replays fuzz/regressions/<target>/ (crashes found before must stay fixed),
#    then fuzzes for SECONDS_PER_TARGET with one worker, from fuzz/corpus/<target>/ (kept
#    between runs, gitignored) plus the committed fuzz/seeds/<target>/.
# 3. Prints executions and coverage per target (libFuzzer's final stats), copies any crash,
#    timeout or out-of-memory input into fuzz/regressions/<target>/ and exits non-zero if any
#    target failed. Logs: fuzz/target/fuzz-logs/<target>.log.
#
# Everything is bounded: the build by FUZZ_BUILD_TIMEOUT (default 3600 s), one input by
# FUZZ_INPUT_TIMEOUT (default 30 s; the harnesses' own hang checks fire at 10 s), one target by
# its time plus FUZZ_GRACE (default 120 s). One fuzzer runs at a time, single-threaded.
# FUZZ_TOOLCHAIN (default nightly) picks the toolchain, FUZZ_SANITIZER (default address) the
# sanitizer: `none` runs faster (no AddressSanitizer), without checking the
# `unsafe` code of dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

secs=${1:-30}
if [[ $# -gt 0 ]]; then shift; fi
if ! [[ $secs =~ ^[0-9]+$ ]] || [[ $secs -eq 0 ]]; then
    echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
    exit 2
fi
toolchain=${FUZZ_TOOLCHAIN:-nightly}
build_timeout=${FUZZ_BUILD_TIMEOUT:-3600}
input_timeout=${FUZZ_INPUT_TIMEOUT:-30}
grace=${FUZZ_GRACE:-120}
sanitizer=${FUZZ_SANITIZER:-address}
cargo_fuzz=(cargo "+$toolchain" fuzz)

if ! "${cargo_fuzz[@]}" --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    timeout "$build_timeout" cargo install cargo-fuzz --locked
fi

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <("${cargo_fuzz[@]}" list)
fi
known=$("${cargo_fuzz[@]}" list)
for t in "${targets[@]}"; do
    if ! grep -qx "$t" <<<"$known"; then
        echo "fuzz.sh: no fuzz target '$t' (have: $(tr '\n' ' ' <<<"$known"))" >&2
        exit 2
    fi
done

echo "fuzz.sh: building ${#targets[@]} target(s) with $toolchain"
timeout "$build_timeout" "${cargo_fuzz[@]}" build -O -s "$sanitizer"

logs=$root/fuzz/target/fuzz-logs
mkdir -p "$logs"
summary=$logs/summary.txt
: >"$summary"
failed=()
# libFuzzer flags: one worker; a per-input time limit (hangs); 256 MiB per allocation and
# 1.5 GiB in all (unbounded allocations); final stats for the summary.
flags=(-timeout="$input_timeout" -rss_limit_mb=1536 -malloc_limit_mb=256 -print_final_stats=1)

for t in "${targets[@]}"; do
    log=$logs/$t.log
    artifacts=$root/fuzz/artifacts/$t
    regressions=$root/fuzz/regressions/$t
    mkdir -p "$artifacts" "$root/fuzz/corpus/$t"
    marker=$(mktemp)
    status=ok

    mapfile -t replay < <(find "$regressions" -maxdepth 1 -type f ! -name '.*' 2>/dev/null | sort)
    if [[ ${#replay[@]} -gt 0 ]]; then
        if ! timeout "$((grace + input_timeout * ${#replay[@]}))" \
            "${cargo_fuzz[@]}" run -O -s "$sanitizer" "$t" "${replay[@]}" -- "${flags[@]}" >"$log.replay" 2>&1; then
            status="REGRESSION"
            echo "fuzz.sh: $t: a regression input fails again, see $log.replay" >&2
        fi
    fi

    corpora=("$root/fuzz/corpus/$t")
    if [[ -d $root/fuzz/seeds/$t ]]; then corpora+=("$root/fuzz/seeds/$t"); fi
    echo "fuzz.sh: $t: fuzzing for ${secs}s"
    start=$(date +%s)
    rc=0
    timeout --signal=INT --kill-after=30 "$((secs + grace))" \
        "${cargo_fuzz[@]}" run -O -s "$sanitizer" "$t" "${corpora[@]}" -- \
        -max_total_time="$secs" "${flags[@]}" >"$log" 2>&1 || rc=$?
    elapsed=$(($(date +%s) - start))

    found=()
    while IFS= read -r f; do found+=("$f"); done < <(
        find "$artifacts" -maxdepth 1 -type f -newer "$marker" \
            \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | sort
    )
    rm -f "$marker"
    if [[ ${#found[@]} -gt 0 ]]; then
        mkdir -p "$regressions"
        cp "${found[@]}" "$regressions/"
        status="CRASH(${#found[@]})"
        for f in "${found[@]}"; do
            echo "fuzz.sh: $t: $(basename "$f") -> fuzz/regressions/$t/" >&2
        done
    elif [[ $rc -ne 0 ]]; then
        status="FAILED(rc=$rc)"
    fi
    if [[ $status != ok ]]; then
        failed+=("$t")
        tail -n 40 "$log" >&2 || true
    fi

    # Final stats: "#N DONE cov: X ft: Y corp: A/B ..." and "stat::..." lines.
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([^ ]*\).*/\1/p' <<<"$last")
    printf '%-26s %-12s %6ss %12s %8s/s %7s %7s %12s\n' "$t" "$status" "$elapsed" \
        "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" | tee -a "$summary"
done

echo
printf '%-26s %-12s %7s %12s %10s %7s %7s %12s\n' target status time execs rate cov ft corpus
cat "$summary"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz.sh: FAILED: ${failed[*]} (inputs in fuzz/regressions/, logs in $logs)" >&2
    exit 1
fi
echo "fuzz.sh: all ${#targets[@]} target(s) ran ${secs}s without a crash"
