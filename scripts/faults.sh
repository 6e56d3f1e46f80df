#!/usr/bin/env bash
# The fault and abuse suite in full (tests/faults.rs with KEEL_FAULTS=full): ten thousand
# orphans, a thousand crash-loop restarts, 59000 signals, a 100000-line flood, twenty power
# cuts, the 90 s shutdown bound. CI runs the same tests, smaller. Arguments go to the test
# binary (a test name to run one). KEEL_FAULTS_POWER_CUTS and KEEL_FAULTS_SEED choose the
# power cuts. Consoles are kept in target/faults/.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$top"
# --nocapture: the measurements (`faults: ...` lines) are the suite's report.
KEEL_FAULTS=full cargo test --test faults -- --test-threads=2 --nocapture "$@"
