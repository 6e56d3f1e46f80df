#!/usr/bin/env bash
# Where a container's lifecycle goes: keel's embedded runtime (`keel bench-runtime`, built
# with symbols) and crun on the benchmark's /bin/true bundle, under perf (CPU by process and
# by function), and the system calls that keep keel waiting longest (strace, containers
# started 100 ms apart as PID 1 starts services). Writes OUT/profile.txt (run as root).
#
#   scripts/bench-profile.sh [OUT] [N]      (default target/bench/profile, 100 containers)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$top/target/bench/profile}
n=${2:-100}
mkdir -p "$out"
out=$(cd "$out" && pwd)

# Builds everything the benchmark needs and leaves its bundle in $out/bench/work/lifecycle.
"$top/scripts/bench.sh" --quick --only lifecycle --out "$out/bench" >/dev/null
bundle="$out/bench/work/lifecycle/seccomp"
echo "bench-profile: building keel with symbols" >&2
(cd "$top" && CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
  cargo build --release --target x86_64-unknown-linux-musl --no-default-features --quiet \
  --target-dir "$top/target/profile")
keel="$top/target/profile/x86_64-unknown-linux-musl/release/keel"

# As the benchmark does: a private mount namespace, the runtimes' state on a tmpfs, cgroup v2.
unshare -m --propagation private bash -s "$out" "$bundle" "$keel" "$n" <<'EOF'
set -euo pipefail
out=$1 bundle=$2 keel=$3 n=$4
state=$out/state
mkdir -p "$state" && mount -t tmpfs tmpfs "$state"
[ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ] || mount -t cgroup2 cgroup2 /sys/fs/cgroup
seq "$n" | sed 's/.*//' | perf record -q -F 5000 -e cpu-clock --call-graph dwarf,32768 \
  -o "$out/keel.perf" "$keel" bench-runtime --root "$state/keel" --id prof "$bundle" > "$out/keel-times.txt"
perf record -q -F 5000 -e cpu-clock -o "$out/crun.perf" -- \
  sh -c "for i in \$(seq $n); do crun --root $state/crun run --bundle $bundle prof; done"
for i in $(seq 20); do echo; sleep 0.1; done |
  strace -f -T -qq -e 'trace=!wait4,waitid,read,recvmsg,recvfrom,accept,accept4,pselect6,ppoll,poll,epoll_wait' \
    -o "$out/keel.strace" "$keel" bench-runtime --root "$state/keel" --id prof "$bundle" > /dev/null
rmdir /sys/fs/cgroup/keel-bench/lifecycle /sys/fs/cgroup/keel-bench 2>/dev/null || true
EOF

{
  echo "== CPU by process, keel bench-runtime ($n containers): samples at 5 kHz"
  perf report -i "$out/keel.perf" --sort comm -n --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$'
  echo
  echo "== CPU by process, crun run ($n containers): samples at 5 kHz"
  perf report -i "$out/crun.perf" --sort comm -n --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$'
  echo
  echo "== keel's own process: functions with their callees (children), above 2%"
  perf report -i "$out/keel.perf" --comm keel --children --sort sym --stdio -g none --percent-limit 2 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -80
  echo
  echo "== system calls by total time, 20 containers 100 ms apart (strace -T, which adds its own cost to every call; waits for children left out)"
  awk '{ if (match($0, /<[0-9.]+>$/)) { t = substr($0, RSTART + 1, RLENGTH - 2); n = ($2 == "<...") ? $3 : $2; split(n, a, "("); s[a[1]] += t; c[a[1]]++ } }
       END { for (k in s) printf "%10.1f ms %6d  %s\n", s[k] * 1000, c[k], k }' "$out/keel.strace" | sort -rn | head -15
  echo
  echo "== the slowest single system calls"
  awk '{ if (match($0, /<[0-9.]+>$/)) { t = substr($0, RSTART + 1, RLENGTH - 2); if (t > 0.002) printf "%8.1f ms  %s\n", t * 1000, substr($0, 1, 140) } }' \
    "$out/keel.strace" | sort -rn | head -25
} > "$out/profile.txt"
echo "bench-profile: wrote $out/profile.txt" >&2
