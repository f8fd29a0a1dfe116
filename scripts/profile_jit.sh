#!/usr/bin/env bash
# Where llvmpipe (lavapipe) spends a kernel's time, instruction by instruction.
#
# llvmpipe compiles every compute pipeline to x86 code at run time, so profilers see
# anonymous memory. This runs a command, samples it with `perf` for a few seconds, stops it,
# disassembles the hot JIT pages from the live process with `gdb`, and prints:
#   - the share of samples per 512-byte chunk class: multiply-add blocks (vmulps/vaddps:
#     llvmpipe emits no FMA instructions, `fma()` included), per-lane store loops (each
#     storage store is a loop over the 8 lanes with a bounds check per component), texel
#     fetches, and the rest;
#   - the instruction mix ([rsp] marks stack spills and reloads);
#   - /tmp/profile_jit/annotated.txt: every hot instruction with its sample count.
#
#   scripts/profile_jit.sh [--delay SECONDS] [--wait-for TEXT] [--seconds SECONDS] -- COMMAND...
#
# --delay skips start-up and pipeline compilation (default 15); --wait-for TEXT first waits
# until the command's output holds TEXT (e.g. the bench's table header, printed once the
# ceiling and memory references are measured), then the delay. The command must run the
# kernel of interest long enough, e.g. one GEMM shape for a few thousand runs:
#
#   VIT_BENCH_QUICK=1 VIT_BENCH_RUNS=400 scripts/profile_jit.sh --delay 15 -- \
#       target/release/deps/kernels-<hash> --bench tiny qkv fwd lanes
#
# Needs perf and gdb (Debian: linux-perf gdb) and ptrace rights over the child.
set -euo pipefail

delay=15
seconds=3
wait_for=
while [[ $# -gt 0 ]]; do
    case "$1" in
        --delay) delay="$2"; shift 2 ;;
        --seconds) seconds="$2"; shift 2 ;;
        --wait-for) wait_for="$2"; shift 2 ;;
        --) shift; break ;;
        *) echo "unknown option $1 (usage: $0 [--delay S] [--wait-for TEXT] [--seconds S] -- COMMAND...)" >&2; exit 2 ;;
    esac
done
[[ $# -gt 0 ]] || { echo "usage: $0 [--delay S] [--seconds S] -- COMMAND..." >&2; exit 2; }
for tool in perf gdb python3; do
    command -v "$tool" >/dev/null || { echo "$0 needs $tool (apt-get install linux-perf gdb python3)" >&2; exit 1; }
done

out=/tmp/profile_jit
mkdir -p "$out"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
"$@" > "$out/command.log" 2>&1 &
pid=$!
trap 'kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
if [[ -n "$wait_for" ]]; then
    until grep -qF -- "$wait_for" "$out/command.log"; do
        kill -0 "$pid" 2>/dev/null || { echo "the command ended before printing '$wait_for'; see $out/command.log" >&2; exit 1; }
        sleep 1
    done
fi
sleep "$delay"
kill -0 "$pid" 2>/dev/null || { echo "the command ended within --delay $delay s; see $out/command.log" >&2; exit 1; }
perf record -F 4000 -p "$pid" -o "$out/perf.data" -- sleep "$seconds" > "$out/perf.log" 2>&1 \
    || { echo "perf record failed (see $out/perf.log; perf_event_paranoid?)" >&2; exit 1; }
# JIT code has no symbol file: perf names its samples after a missing perf-PID.map or [JIT].
perf script -i "$out/perf.data" -F ip,dso 2>/dev/null | { grep -E 'JIT|perf-' || true; } | awk '{print $1}' \
    | sort | uniq -c | sort -rn > "$out/ips.txt"
[[ -s "$out/ips.txt" ]] || { echo "no samples in JIT code (was the kernel running?)" >&2; exit 1; }
kill -STOP "$pid"
pages=$(python3 - "$out/ips.txt" <<'EOF'
import collections, sys
pages = collections.Counter()
for line in open(sys.argv[1]):
    count, ip = line.split()
    pages[int(ip, 16) >> 12] += int(count)
print(" ".join(f'-ex "x/1500i {hex(p << 12)}"' for p, n in sorted(pages.items()) if n >= 20))
EOF
)
eval gdb -p "$pid" -batch "$pages" 2>/dev/null | grep -E '^ +0x|^=>' > "$out/disassembly.txt" || true
kill -9 "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true

python3 - "$out" <<'EOF'
import collections, re, sys
out = sys.argv[1]
samples = {}
for line in open(f"{out}/ips.txt"):
    count, ip = line.split()
    samples[int(ip, 16)] = int(count)
rows, seen = [], set()
for line in open(f"{out}/disassembly.txt"):
    m = re.match(r"\s*=?>?\s*(0x[0-9a-f]+)(?: <[^>]*>)?:\s+(\S+)\s*(.*)", line)
    if not m or int(m.group(1), 16) in seen:
        continue
    addr = int(m.group(1), 16)
    seen.add(addr)
    rows.append((addr, samples.get(addr, 0), m.group(2), m.group(3)))
rows.sort()
with open(f"{out}/annotated.txt", "w") as f:
    for addr, n, op, args in rows:
        f.write(f"{n:6d}  {addr:#x}  {op} {args}\n")
total = sum(n for _, n, _, _ in rows)
print(f"{sum(samples.values())} samples in JIT code, {total} in the disassembled pages")
if not total:
    sys.exit(0)
chunks = collections.OrderedDict()
for addr, n, op, args in rows:
    c = chunks.setdefault(addr >> 9, collections.Counter())
    c["samples"] += n
    if op in ("vmulps", "vaddps", "vfmadd231ps", "vfmadd213ps"):
        c["arith"] += 1
    if op.startswith("mov") and re.search(r",\(%r\w+,%r\w+,4\)", args):
        c["store"] += 1
    if op in ("vpinsrd", "vinserti128", "vmovdqa") and "(%r" in args and "rsp" not in args:
        c["gather"] += 1
classes = collections.Counter()
for c in chunks.values():
    if c["arith"] >= 20:
        kind = "multiply-add blocks"
    elif c["store"] >= 3:
        kind = "per-lane store loops"
    elif c["gather"] >= 3:
        kind = "texel or vector loads"
    else:
        kind = "other (loop control, address math, per-lane loads)"
    classes[kind] += c["samples"]
print("\nshare of samples by 512-byte chunk:")
for kind, n in classes.most_common():
    print(f"  {n / total * 100:5.1f}%  {kind}")
mix = collections.Counter()
for _, n, op, args in rows:
    mix[op + (" [rsp]" if "rsp" in args else "")] += n
print("\ninstruction mix (samples land on the instruction after a stall):")
for op, n in mix.most_common(15):
    print(f"  {n / total * 100:5.1f}%  {op}")
print(f"\nannotated disassembly: {out}/annotated.txt")
EOF
