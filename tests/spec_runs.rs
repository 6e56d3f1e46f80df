//! A config.json generated from a manifest entry runs as it is, under runc and under keel's
//! embedded runtime, and the default posture (seccomp included) holds inside the container.

mod common;

use std::process::Command;

use common::*;
use keel::manifest::parse;
use keel::spec::{generate, ImageDefaults, Section};

/// Exits 0 only if the sandbox is as the defaults promise.
const PROBE: &str = r#"
grep -q '^CapEff:[[:space:]]*0000000000000000$' /proc/self/status || exit 11
grep -q '^NoNewPrivs:[[:space:]]*1$' /proc/self/status || exit 12
touch /probe 2>/dev/null && exit 13
echo x > /tmp/ok || exit 14
[ -s /proc/kcore ] && exit 15
echo 1 > /proc/sys/kernel/hostname 2>/dev/null && exit 16
[ "$(hostname)" = probe ] || exit 17
grep -q '^Seccomp:[[:space:]]*2$' /proc/self/status || exit 18
unshare -U true 2>/dev/null && exit 19
unshare -n true 2>/dev/null && exit 20
exit 0
"#;

/// Each test its own container name: the generated cgroup path derives from it.
fn bundle(name: &str) -> std::path::PathBuf {
    let d = scratch("spec-runs");
    let b = busybox_bundle(&d.join("b"), PROBE);
    let rootfs_bin = b.join("rootfs/bin");
    for applet in ["grep", "touch", "hostname", "unshare", "true"] {
        std::os::unix::fs::symlink("busybox", rootfs_bin.join(applet)).unwrap();
    }
    for dir in ["proc", "dev", "sys", "tmp", "run"] {
        std::fs::create_dir_all(b.join("rootfs").join(dir)).unwrap();
    }
    let manifest = format!(
        "services:\n  - {{name: {name}, image: local, hostname: probe, command: [/bin/sh, /entry]}}\n"
    );
    let m = parse(&manifest, "t.yml").unwrap();
    let spec = generate(&m.services[0], Section::Service, &ImageDefaults::default()).unwrap();
    std::fs::write(b.join("config.json"), serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    b
}

#[test]
fn generated_config_runs_under_runc_as_is() {
    require_root();
    let b = bundle("probe-runc");
    let id = format!("keel-spec-{}", std::process::id());
    let out = Command::new("runc")
        .args(["--root", "/run/keel-test-runc", "run", "--bundle"])
        .arg(&b)
        .arg(&id)
        .output()
        .expect("runc (scripts/setup.sh installs it)");
    assert_eq!(
        out.status.code(),
        Some(0),
        "runc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn generated_config_runs_under_keel() {
    require_root();
    let b = bundle("probe-keel");
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["run", "--root"])
        .arg(scratch("spec-state"))
        .args(["--cgroup-parent", "keel-itest", "--id", "specprobe"])
        .arg(&b)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "keel run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
