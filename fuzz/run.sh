#!/usr/bin/env bash
# Builds the fuzz targets and runs each for a while; fails on any crash,
# failed assertion, input slower than 1 s, or run past 2 GiB of memory.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default 30); TARGETs default to all of them
# (`cargo fuzz list`). Set FUZZ_RUNS=N to stop each target after N
# executions instead (SECONDS is then the time limit). FUZZ_SANITIZER
# (default address) is passed to cargo fuzz build: `none` runs safe Rust two
# to three times faster, for long offline runs. FUZZ_TIMEOUT (seconds,
# default 1) is libFuzzer's per-input limit: on a machine busy with other
# work, a 1 ms input can be starved past 1 s, so long runs beside other jobs
# use a larger one and re-time their slowest inputs alone. Needs cargo-fuzz;
# the stable toolchain works with RUSTC_BOOTSTRAP=1 (set here).
#
# The committed corpus (fuzz/corpus/<target>/) seeds each run and is not
# written to: new inputs go to a temporary directory, kept with FUZZ_KEEP=1.
# A failing input is saved in fuzz/artifacts/<target>/; reproduce it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
# (from fuzz/) and add it as a regression test in the main test suite.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

secs=${1:-30}
shift || true
export RUSTC_BOOTSTRAP=1

if (($#)); then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

# 16 codegen units: a much faster build for a slightly slower fuzzer.
# Each target binary links the whole gateway with the sanitizer and line
# tables (about 140 MB each). FUZZ_ONE_AT_A_TIME=1 (set by .ci/run) builds,
# runs and deletes one target at a time, so the disk holds one binary instead
# of all of them: the linker died of SIGBUS on a full CI disk (stop 29).
SECONDS=0
build_secs=0
build() { # build [TARGET]
    local started=$SECONDS
    cargo fuzz build --codegen-units 16 --sanitizer "${FUZZ_SANITIZER:-address}" "$@"
    build_secs=$((build_secs + SECONDS - started))
}
one_at_a_time=${FUZZ_ONE_AT_A_TIME:-0}
if ((one_at_a_time)); then
    : # each target is built in the loop below
elif ((${#targets[@]} == 1)); then
    build "${targets[0]}"
else
    build
fi
triple=$(rustc -vV | sed -n 's/^host: //p')
bin="target/$triple/release"

dict_for() {
    case "$1" in
    json_scan | rewrite_splice | request_* | responses | gemini_schema) echo dict/json.dict ;;
    sse_scanner | stream_*) echo dict/sse.dict ;;
    config) echo dict/yaml.dict ;;
    *) echo "" ;;
    esac
}

stat() { sed -n "s/^stat::$1: *//p" "$2" | tail -1; }

failed=()
rows=()
for t in "${targets[@]}"; do
    if ((one_at_a_time)); then
        build "$t"
        df -h . | tail -n1
    fi
    mkdir -p "artifacts/$t" "corpus/$t"
    work=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-fuzz-$t.XXXXXX")
    log="$work.log"
    args=(-max_total_time="$secs" -timeout="${FUZZ_TIMEOUT:-1}" -rss_limit_mb=2048 -max_len=16384
        -artifact_prefix="artifacts/$t/" -print_final_stats=1)
    if [[ -n "${FUZZ_RUNS:-}" ]]; then args+=(-runs="$FUZZ_RUNS"); fi
    dict=$(dict_for "$t")
    if [[ -n "$dict" ]]; then args+=(-dict="$dict"); fi
    started=$SECONDS
    rc=0
    "$bin/$t" "${args[@]}" "$work" "corpus/$t" >"$log" 2>&1 || rc=$?
    took=$((SECONDS - started))
    execs=$(stat number_of_executed_units "$log")
    rss=$(stat peak_rss_mb "$log")
    if ((rc)); then
        failed+=("$t")
        echo "---- $t FAILED (exit $rc); the end of its log:"
        tail -40 "$log"
        ls -t "artifacts/$t" | head -3 | sed "s|^|     input: fuzz/artifacts/$t/|"
    fi
    rows+=("$(printf '%-18s %12s %6ss %8s MB  %s' "$t" "${execs:-?}" "$took" "${rss:-?}" \
        "$( ((rc)) && echo FAILED || echo ok)")")
    if [[ "${FUZZ_KEEP:-}" == 1 ]]; then
        echo "$t: new inputs in $work, log in $log"
    else
        rm -rf "$work" "$log"
    fi
    if ((one_at_a_time)); then
        rm -f "$bin/$t" "$bin/deps/$t"-*
    fi
done

echo
echo "fuzz build ${build_secs}s; ${secs}s per target"
printf '%-18s %12s %7s %11s\n' target executions time "peak RSS"
printf '%s\n' "${rows[@]}"
if ((${#failed[@]})); then
    echo "fuzz: ${#failed[@]} target(s) failed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz: ${#targets[@]} targets, 0 crashes, 0 timeouts"
