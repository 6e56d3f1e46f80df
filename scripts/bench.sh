#!/usr/bin/env bash
# keel's benchmarks: container lifecycle against runc and crun, boot against a LinuxKit-style
# image (busybox init + a shell rc + runc) on the same kernel, PID 1's memory, sizes, scale
# and restart latency. Writes OUT/results.md and OUT/results.json (run as root).
#
#   scripts/bench.sh [--quick] [--out DIR] [--only PART,...] [--rounds N] [--boots N]
#
# --quick is the short run CI uses to check that every part still works. DIR defaults to
# target/bench. KEEL_BIN, KEEL_HOST_BIN, KEEL_KERNEL and KEEL_STOCK_KERNEL are taken from the
# environment when set, otherwise built or found here.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
args=("$@")
out=""
for ((i = 0; i < ${#args[@]}; i++)); do
  [ "${args[$i]}" = --out ] && out=${args[$((i + 1))]:-}
done
[ -n "$out" ] || args+=(--out "$top/target/bench")

"$top/scripts/setup.sh"
export KEEL_KERNEL=${KEEL_KERNEL:-$("$top/scripts/build-kernel.sh" | tail -n1)}
export KEEL_STOCK_KERNEL=${KEEL_STOCK_KERNEL:-$(ls /boot/vmlinuz-*-amd64 2>/dev/null | sort -V | tail -n1)}
cd "$top"
if [ -z "${KEEL_BIN:-}" ]; then
  echo "bench: building the static keel binary" >&2
  cargo build --release --target x86_64-unknown-linux-musl --no-default-features --quiet
  KEEL_BIN="$top/target/x86_64-unknown-linux-musl/release/keel"
fi
if [ -z "${KEEL_HOST_BIN:-}" ]; then
  echo "bench: building keel with the image builder" >&2
  cargo build --release --quiet
  KEEL_HOST_BIN="$top/target/release/keel"
fi
export KEEL_BIN KEEL_HOST_BIN
echo "bench: building the harness" >&2
cargo build --release --target x86_64-unknown-linux-musl --quiet --manifest-path "$top/benches/keel-bench/Cargo.toml"
exec "$top/benches/keel-bench/target/x86_64-unknown-linux-musl/release/keel-bench" run --repo "$top" "${args[@]}"
