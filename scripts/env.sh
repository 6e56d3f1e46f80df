# Sourced by test.sh, faults.sh and demo.sh: set up the machine, build the kernel and keel, and
# export KEEL_KERNEL, KEEL_STOCK_KERNEL, KEEL_BIN, KEEL_FAULTS_BIN and KEEL_ESCAPE_BIN.
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$top/scripts/setup.sh"
KEEL_KERNEL=$("$top/scripts/build-kernel.sh" | tail -n1)
KEEL_STOCK_KERNEL=$(ls /boot/vmlinuz-*-amd64 2>/dev/null | sort -V | tail -n1)
echo "env: building the static keel binary" >&2
# No cgroup v1 support on the device: as PID 1 keel mounts pure cgroup v2.
(cd "$top" && cargo build --release --target x86_64-unknown-linux-musl --no-default-features --quiet)
KEEL_BIN="$top/target/x86_64-unknown-linux-musl/release/keel"
echo "env: building the fault-injecting keel (feature faults, never shipped)" >&2
(cd "$top" && cargo build --profile faults --target x86_64-unknown-linux-musl --no-default-features --features faults --quiet)
KEEL_FAULTS_BIN="$top/target/x86_64-unknown-linux-musl/faults/keel"
echo "env: building the escape suite's static test program" >&2
(cd "$top/tests/escape" && cargo build --release --target x86_64-unknown-linux-musl --quiet)
KEEL_ESCAPE_BIN="$top/tests/escape/target/x86_64-unknown-linux-musl/release/keel-escape"
export KEEL_KERNEL KEEL_STOCK_KERNEL KEEL_BIN KEEL_FAULTS_BIN KEEL_ESCAPE_BIN
