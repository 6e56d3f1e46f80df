#!/usr/bin/env bash
# The long fuzz campaign: every target (or those named) in turn for SECONDS each (default
# 600), one process on one core, continuing past crashes (fork mode) so that one run finds
# every shallow bug; crash inputs land in fuzz/artifacts/<target>/, new inputs in
# fuzz/corpus/<target>/ (minimise with `cargo fuzz cmin -s none -O <target>` before
# committing). Needs cargo-fuzz (`cargo install cargo-fuzz`); sanitizer off: the targets are
# safe Rust, and it is several times faster.
#   fuzz/campaign.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
mkdir -p logs
for t in "${targets[@]}"; do
  echo "campaign: $t for ${secs}s" >&2
  mkdir -p "corpus/$t" "artifacts/$t"
  cargo fuzz run -s none -O "$t" "corpus/$t" -- -fork=1 -ignore_crashes=1 -ignore_timeouts=1 \
    -ignore_ooms=1 -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"logs/$t.log" 2>&1 || echo "campaign: $t exited with $?" >&2
  grep -E "^#[0-9]+" "logs/$t.log" | tail -n1 >&2 || true
  echo "campaign: $t crashes: $(ls "artifacts/$t" | wc -l)" >&2
done
