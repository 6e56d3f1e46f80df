#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine (as root): installs what is missing,
# builds the kernel (cached) and the static keel binary, then runs lints, unit tests, host
# runtime tests and the QEMU boot tests.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$top"
echo "test: cargo fmt --check" >&2
cargo fmt --all -- --check
echo "test: cargo clippy" >&2
cargo clippy --all-targets --quiet -- -D warnings
scripts/fuzz-smoke.sh
echo "test: cargo test" >&2
rm -f target/escape-report.md
cargo test --quiet -- --test-threads=2 "$@"
# The escape suite's tables: what each container tried and what happened.
if [ -f target/escape-report.md ]; then cat target/escape-report.md; fi
