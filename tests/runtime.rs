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

/// A bundle whose script reports the seccomp mode and whether it may create a user
/// namespace and make a directory.
fn seccomp_probe(dir: &Path) -> std::path::PathBuf {
    let b = busybox_bundle(
        dir,
        "grep '^Seccomp:' /proc/self/status; \
         unshare -U true 2>/dev/null && echo userns-allowed || echo userns-denied; \
         mkdir /tmp/d 2>/dev/null && echo mkdir-allowed || echo mkdir-denied",
    );
    fs::create_dir_all(b.join("rootfs/proc")).unwrap();
    fs::create_dir_all(b.join("rootfs/tmp")).unwrap();
    for applet in ["grep", "unshare", "true", "mkdir"] {
        std::os::unix::fs::symlink("busybox", b.join("rootfs/bin").join(applet)).unwrap();
    }
    b
}

fn stdout_of(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn seccomp_defaults_on_and_can_be_lifted_or_replaced() {
    require_root();
    let d = scratch("rt-seccomp");
    let state = d.join("state");
    // No linux.seccomp: keel's default profile.
    let b = seccomp_probe(&d.join("default"));
    let out = stdout_of(&keel_run(&state, "sc-default", &b));
    assert_eq!(out, "Seccomp: 2 userns-denied mkdir-allowed");

    // The annotation lifts it.
    let b = seccomp_probe(&d.join("unconfined"));
    edit_config(&b, |s| {
        s["annotations"] = serde_json::json!({"org.keel.seccomp": "unconfined"})
    });
    let out = stdout_of(&keel_run(&state, "sc-unconfined", &b));
    assert_eq!(out, "Seccomp: 0 userns-allowed mkdir-allowed");

    // An explicit profile replaces it: everything allowed but mkdir.
    let b = seccomp_probe(&d.join("profile"));
    edit_config(&b, |s| {
        s["linux"]["seccomp"] = serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]})
    });
    let out = stdout_of(&keel_run(&state, "sc-profile", &b));
    assert_eq!(out, "Seccomp: 2 userns-allowed mkdir-denied");
    for id in ["sc-default", "sc-unconfined", "sc-profile"] {
        assert_clean(&state, id);
    }
}

#[test]
fn seccomp_problems_are_named_before_anything_runs() {
    require_root();
    let d = scratch("rt-seccomp-bad");
    let state = d.join("state");
    // Without no_new_privs the filter would need CAP_SYS_ADMIN.
    let b = seccomp_probe(&d.join("nnp"));
    edit_config(&b, |s| s["process"]["noNewPrivileges"] = serde_json::json!(false));
    let out = keel_run(&state, "sc-nnp", &b);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("config.json") && err.contains("noNewPrivileges"),
        "{err}"
    );

    let b = seccomp_probe(&d.join("notify"));
    edit_config(&b, |s| {
        s["linux"]["seccomp"] = serde_json::json!({"defaultAction": "SCMP_ACT_NOTIFY"})
    });
    let out = keel_run(&state, "sc-notify", &b);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("config.json") && err.contains("SCMP_ACT_NOTIFY"),
        "{err}"
    );

    let b = seccomp_probe(&d.join("word"));
    edit_config(&b, |s| {
        s["annotations"] = serde_json::json!({"org.keel.seccomp": "off"})
    });
    let out = keel_run(&state, "sc-word", &b);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("org.keel.seccomp") && err.contains("\"off\""),
        "{err}"
    );
    for id in ["sc-nnp", "sc-notify", "sc-word"] {
        assert_clean(&state, id);
    }
}
