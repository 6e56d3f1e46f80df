//! The embedded runtime on the host, as root, in real namespaces and cgroups, through
//! `keel run` (the same adapter PID 1 uses).

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::*;

const CGROUP_PARENT: &str = "keel-itest";

fn keel_run(state: &Path, id: &str, bundle: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["run", "--root"])
        .arg(state)
        .args(["--cgroup-parent", CGROUP_PARENT, "--id", id])
        .arg(bundle)
        .output()
        .expect("spawn keel run")
}

/// No state directory and no cgroup may survive a container.
fn assert_clean(state: &Path, id: &str) {
    assert!(
        !state.join(id).exists(),
        "state directory {} left behind",
        state.join(id).display()
    );
    assert!(
        !state.join(".bundles").join(id).exists(),
        "patched bundle left behind"
    );
    for entry in fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let base = entry.path();
        for p in [
            base.join(CGROUP_PARENT).join(id),
            base.join("unified").join(CGROUP_PARENT).join(id),
        ] {
            assert!(!p.exists(), "cgroup {} left behind", p.display());
        }
    }
    let cg = Path::new("/sys/fs/cgroup").join(CGROUP_PARENT).join(id);
    assert!(!cg.exists(), "cgroup {} left behind", cg.display());
}

#[test]
fn exit_codes_pass_through_and_nothing_is_left_behind() {
    require_root();
    let d = scratch("rt-exit");
    let state = d.join("state");
    for (id, script, want) in [
        ("ok", "exit 0", 0),
        ("three", "echo out; exit 3", 3),
        ("big", "exit 200", 200),
    ] {
        let b = busybox_bundle(&d.join(id), script);
        let out = keel_run(&state, id, &b);
        assert_eq!(
            out.status.code(),
            Some(want),
            "{id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_clean(&state, id);
    }
}

#[test]
fn container_output_reaches_the_caller() {
    require_root();
    let d = scratch("rt-out");
    let b = busybox_bundle(&d.join("b"), "echo hello-from-container; echo to-stderr >&2");
    let out = keel_run(&d.join("state"), "out", &b);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello-from-container\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("to-stderr"));
}

#[test]
fn killed_container_reports_the_signal() {
    require_root();
    let d = scratch("rt-sig");
    // A PID-namespace init cannot be killed from inside its namespace: use the host's.
    let b = busybox_bundle(&d.join("b"), "kill -KILL $$");
    edit_config(&b, |spec| {
        spec["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "pid")
    });
    let out = keel_run(&d.join("state"), "sig", &b);
    assert_eq!(
        out.status.code(),
        Some(128 + 9),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_clean(&d.join("state"), "sig");
}

#[test]
fn container_runs_in_its_own_namespaces() {
    require_root();
    let d = scratch("rt-ns");
    let b = busybox_bundle(
        &d.join("b"),
        "[ $$ = 1 ] || exit 10; [ \"$(cat /proc/1/cmdline | tr '\\0' ' ')\" = '/bin/sh /entry ' ] || exit 11; \
         echo x > /probe 2>/dev/null && exit 12; \
         grep -q '^NoNewPrivs:.*1' /proc/self/status || exit 14; exit 0",
    );
    fs::create_dir_all(b.join("rootfs/proc")).unwrap();
    let rootfs = b.join("rootfs/bin");
    std::os::unix::fs::symlink("busybox", rootfs.join("tr")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("grep")).unwrap();
    let out = keel_run(&d.join("state"), "ns", &b);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn broken_config_is_a_clear_error() {
    require_root();
    let d = scratch("rt-bad");
    let b = busybox_bundle(&d.join("b"), "exit 0");
    fs::write(
        b.join("config.json"),
        "{\"ociVersion\": \"1.0.2\",\n \"process\": [",
    )
    .unwrap();
    let out = keel_run(&d.join("state"), "bad", &b);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125));
    assert!(err.contains("config.json") && err.contains("line 2"), "{err}");
    assert_clean(&d.join("state"), "bad");
}

#[test]
fn missing_rootfs_and_executable_are_named() {
    require_root();
    let d = scratch("rt-missing");
    let b = busybox_bundle(&d.join("nofs"), "exit 0");
    fs::remove_dir_all(b.join("rootfs")).unwrap();
    let out = keel_run(&d.join("state"), "nofs", &b);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        err.contains("root.path") && err.contains("is not a directory"),
        "{err}"
    );

    let b = busybox_bundle(&d.join("noexe"), "exit 0");
    fs::remove_file(b.join("rootfs/bin/sh")).unwrap();
    let out = keel_run(&d.join("state"), "noexe", &b);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125));
    assert!(err.contains("\"/bin/sh\"") && err.contains("not found"), "{err}");
    assert_clean(&d.join("state"), "noexe");
}

#[test]
fn failing_create_leaves_no_state() {
    require_root();
    let d = scratch("rt-createfail");
    let b = busybox_bundle(&d.join("b"), "exit 0");
    // Valid JSON, but a mount libcontainer cannot perform: create fails inside the runtime.
    edit_config(&b, |spec| {
        spec["mounts"].as_array_mut().unwrap().push(serde_json::json!({
        "destination": "/nowhere", "type": "bind", "source": "/nonexistent/keel-source", "options": ["bind"]
        }))
    });
    let out = keel_run(&d.join("state"), "cf", &b);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("container cf: create failed"), "{err}");
    assert_clean(&d.join("state"), "cf");
}

#[test]
fn duplicate_id_is_refused_while_running() {
    require_root();
    let d = scratch("rt-dup");
    let state = d.join("state");
    let long = busybox_bundle(&d.join("long"), "sleep 3");
    let mut first = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["run", "--root"])
        .arg(&state)
        .args(["--cgroup-parent", CGROUP_PARENT, "--id", "dup"])
        .arg(&long)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !state.join("dup/state.json").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = keel_run(&state, "dup", &busybox_bundle(&d.join("other"), "exit 0"));
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("container dup: create failed: a container with this id already exists"));
    assert_eq!(first.wait().unwrap().code(), Some(0));
    assert_clean(&state, "dup");
}
