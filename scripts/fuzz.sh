#!/usr/bin/env bash
# Build every fuzz target (fuzz/, cargo-fuzz + libFuzzer) and run each for
# SECONDS (default 20) on a corpus seeded from tests/data/vectors. Prints
# execs/s per target; exits non-zero if any target crashed (the input is kept
# in fuzz/artifacts/<target>/, replay it with `cargo fuzz run <target> <file>`).
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-20}
shift || true
# cargo-fuzz passes -Z flags (sanitizer coverage); this allows them on stable.
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
# Safe Rust only (the plugin loader is left out), so no sanitizer: twice the
# execs/s; overflow checks and debug assertions stay on.
build=(-s none --codegen-units 16)
cargo fuzz build "${build[@]}"
bash seed.sh >/dev/null
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)

failed=()
summary=()
for t in "${targets[@]}"; do
    log=$(mktemp)
    echo "fuzz.sh: $t for ${seconds}s"
    dict=()
    case $t in
        access_conf | fwknopd_conf) dict=(-dict=dict/conf.dict) ;;
        http_intake) dict=(-dict=dict/http.dict) ;;
    esac
    # max_len: a whole HTTP request (2000 bytes) or a config file of a few lines.
    if cargo fuzz run "${build[@]}" "$t" "corpus/$t" -- "${dict[@]}" \
        -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        status=ok
    else
        status=CRASH
        failed+=("$t")
        grep -E -A30 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -60 >&2 || tail -40 "$log" >&2
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
    summary+=("$(printf '%-14s %-6s %10s execs %8s execs/s  cov %s' "$t" "$status" "${execs:-?}" "${rate:-?}" "${cov:-?}")")
    rm -f "$log"
done
printf '%s\n' "fuzz.sh: ${seconds}s per target" "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
