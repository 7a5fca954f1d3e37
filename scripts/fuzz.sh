#!/usr/bin/env bash
# Run the fuzz targets in fuzz/ (cargo-fuzz, libFuzzer), each for FUZZ_SECONDS (default 60), and
# print the executions per target in a table. Exits non-zero when a target crashed (a panic, a
# failed property, a sanitizer report, a timeout or running out of memory).
#
#   scripts/fuzz.sh                    every target, FUZZ_SECONDS each
#   scripts/fuzz.sh cursor token       only these
#   FUZZ_SECONDS=10 scripts/fuzz.sh --quick
#                                      the short run CI makes (.ci/run): also prints a TAP line
#                                      per target, `# pass N` / `# fail N` (what scripts/test.sh
#                                      sums) and `fuzz: N passed, N failed`
#
# FUZZ_SANITIZER: address (default) or none. The stable toolchain runs cargo-fuzz with
# RUSTC_BOOTSTRAP=1 (its -Z flags); AddressSanitizer works that way (the runtime ships with the
# standard library), so it is on, as cargo-fuzz's default. `none` is quicker and needs no ASan
# runtime; libFuzzer's coverage guidance works the same.
#
# Each target starts from its seed corpus, fuzz/corpus/<target>/ (committed, left untouched),
# plus what earlier runs found, fuzz/target/corpus/<target>/ (where new inputs are written).
# A crash's input is saved as fuzz/artifacts/<target>/crash-<sha1>; replay it with
#   RUSTC_BOOTSTRAP=1 .tools/cargo-fuzz/bin/cargo-fuzz fuzz run <target> <file>
# and turn it into a regression unit test in the crate at fault. Logs: fuzz/target/logs/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ="$ROOT/fuzz"
SECONDS_PER_TARGET="${FUZZ_SECONDS:-60}"
SANITIZER="${FUZZ_SANITIZER:-address}"
quick=false
targets=()
for arg in "$@"; do
    case "$arg" in
        --quick) quick=true ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        -*)
            echo "unknown option $arg" >&2
            exit 2
            ;;
        *) targets+=("$arg") ;;
    esac
done
if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(find "$FUZZ/fuzz_targets" -name '*.rs' -printf '%f\n' | sed 's/\.rs$//' | sort)
fi
if ! [[ "$SECONDS_PER_TARGET" =~ ^[0-9]+$ ]] || [[ "$SECONDS_PER_TARGET" -lt 1 ]]; then
    echo "FUZZ_SECONDS must be a whole number of seconds, at least 1" >&2
    exit 2
fi

CARGO_FUZZ="$("$ROOT/scripts/install-cargo-fuzz.sh" | tail -n 1)"
export RUSTC_BOOTSTRAP=1
cd "$FUZZ"

# One build of every target (the gateway's library and its dependencies are built once, with
# cargo-fuzz's instrumentation, into fuzz/target); each run below finds it up to date.
echo "building the fuzz targets (sanitizer: $SANITIZER)" >&2
build_started=$SECONDS
mkdir -p "$FUZZ/target"
build_status=0
"$CARGO_FUZZ" fuzz build --sanitizer "$SANITIZER" >"$FUZZ/target/build.log" 2>&1 || build_status=$?
grep -v '^ *Compiling ' "$FUZZ/target/build.log" >&2 || true
if [[ $build_status -ne 0 ]]; then
    echo "the fuzz targets do not build (exit $build_status)" >&2
    $quick && printf '1..1\nnot ok 1 - fuzz targets build\n# pass 0\n# fail 1\n'
    exit "$build_status"
fi
echo "built in $((SECONDS - build_started)) s" >&2

mkdir -p "$FUZZ/target/logs"
rows=()
passed=0
failed=0
n=0
for target in "${targets[@]}"; do
    n=$((n + 1))
    seeds="$FUZZ/corpus/$target"
    work="$FUZZ/target/corpus/$target"
    log="$FUZZ/target/logs/$target.log"
    mkdir -p "$work" "$FUZZ/artifacts/$target"
    [[ -d "$seeds" ]] || mkdir -p "$seeds"
    echo "fuzzing $target for ${SECONDS_PER_TARGET} s" >&2
    status=0
    # The work corpus first: libFuzzer writes what it finds to the first directory only.
    "$CARGO_FUZZ" fuzz run --sanitizer "$SANITIZER" "$target" "$work" "$seeds" -- \
        -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 -timeout=10 \
        -rss_limit_mb=2048 -artifact_prefix="$FUZZ/artifacts/$target/" \
        >"$log" 2>&1 || status=$?
    runs="$(awk -F: '/^stat::number_of_executed_units/ {gsub(/ /, "", $2); print $2}' "$log" | tail -n 1)"
    if [[ -z "$runs" ]]; then
        runs="$(sed -n 's/^#\([0-9]*\)[[:space:]]*DONE.*/\1/p; s/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n 1)"
    fi
    runs="${runs:-0}"
    rate="$(awk -F: '/^stat::average_exec_per_sec/ {gsub(/ /, "", $2); print $2}' "$log" | tail -n 1)"
    rate="${rate:-$((runs / SECONDS_PER_TARGET))}"
    corpus="$(find "$work" -type f | wc -l)"
    if [[ $status -eq 0 ]]; then
        result="ok"
        passed=$((passed + 1))
        $quick && echo "ok $n - fuzz $target: $runs executions in ${SECONDS_PER_TARGET} s"
    else
        artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)"
        result="FAILED (exit $status)${artifact:+: $artifact}"
        failed=$((failed + 1))
        $quick && echo "not ok $n - fuzz $target: exit $status after $runs executions${artifact:+, input $artifact}"
        echo "--- $target: the end of $log" >&2
        grep -v '^"' "$log" | tail -n 40 >&2
    fi
    rows+=("$target|$SECONDS_PER_TARGET|$runs|$rate|$corpus|$result")
done

{
    printf '%-16s %8s %14s %10s %8s  %s\n' target seconds executions 'exec/s' corpus result
    for row in "${rows[@]}"; do
        IFS='|' read -r t s r e c res <<<"$row"
        printf '%-16s %8s %14s %10s %8s  %s\n' "$t" "$s" "$r" "$e" "$c" "$res"
    done
}
if $quick; then
    echo "1..$n"
    echo "# pass $passed"
    echo "# fail $failed"
    echo "fuzz: $passed passed, $failed failed"
fi
[[ $failed -eq 0 ]]
