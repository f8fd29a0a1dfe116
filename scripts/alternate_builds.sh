#!/usr/bin/env bash
# Compare two vit-wgpu builds on a noisy machine: run their `bench --json` one after the
# other, PAIRS times, and print each pair's ratio (B's images/s over A's) and the median.
# On a shared 2-core machine the same binary's rate moves by 1.5x within minutes, so only
# ratios of back-to-back runs say which build is faster.
#
#   scripts/alternate_builds.sh [--pairs N] OLD_BINARY NEW_BINARY -- BENCH_ARGS...
#
# e.g. (keep a copy of the old build first: cp target/release/vit-wgpu /tmp/vit-old)
#   scripts/alternate_builds.sh --pairs 5 /tmp/vit-old target/release/vit-wgpu -- --preset micro
set -euo pipefail

pairs=5
while [[ $# -gt 0 && "$1" == --* && "$1" != "--" ]]; do
    case "$1" in
        --pairs) pairs="$2"; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[[ $# -ge 3 && "$3" == "--" ]] || {
    echo "usage: $0 [--pairs N] OLD_BINARY NEW_BINARY -- BENCH_ARGS..." >&2
    exit 2
}
old="$1"
new="$2"
shift 3
for bin in "$old" "$new"; do
    [[ -x "$bin" ]] || { echo "$0: $bin is not an executable" >&2; exit 1; }
done

rate() {
    local out
    out=$("$1" bench "${@:2}" --json 2>/dev/null) || { echo "$0: $1 bench failed" >&2; exit 1; }
    grep -oE '"images_per_second":[0-9.eE+-]+' <<<"$out" | head -1 | cut -d: -f2
}

ratios=()
for i in $(seq "$pairs"); do
    a=$(rate "$old" "$@")
    b=$(rate "$new" "$@")
    r=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", b / a }')
    ratios+=("$r")
    awk -v i="$i" -v a="$a" -v b="$b" -v r="$r" \
        'BEGIN { printf "pair %d: old %.1f img/s, new %.1f img/s, new/old %sx\n", i, a, b, r }'
done
printf '%s\n' "${ratios[@]}" | sort -g | awk -v n="$pairs" '
    { v[NR] = $1 }
    END {
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "new/old over %d pairs: median %.3fx, range %.3f-%.3fx\n", n, m, v[1], v[NR]
    }'
