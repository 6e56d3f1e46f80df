//! `keel init --root`: the boot test image run on the host with keel as PID 1 of fresh
//! namespaces. The same flow as the QEMU boot, in about three seconds.

mod common;

use std::process::Command;

use common::*;

#[test]
fn boot_test_image_runs_in_development_mode() {
    require_root();
    let keel = env!("CARGO_BIN_EXE_keel");
    let root = unpacked_image("tests/images/boot", keel);

    // One stream, as on a console: keel logs to stderr, containers write to stdout.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec timeout 120 {keel} init --root {} --cmdline keel.debug 2>&1",
            root.display()
        ))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout).to_string();
    let fail = |why: &str| -> ! { panic!("{why}\n----- output -----\n{log}\n----- end -----") };
    if out.status.code() != Some(0) {
        fail(&format!("keel init exited with {:?}", out.status));
    }
    let mut at = 0;
    for pat in [
        "keel: keel ",
        "keel: hostname keel-test",
        "hello: onboot container ran (pid 1)",
        "keel: [FAILED] onboot fail failed: exit code 3",
        "keel: [FAILED] onboot hang failed: timed out (signal SIGKILL)",
        "keel: reaped orphan",
        "keel: [  OK  ] onboot orphans finished: exit code 0",
        "keel: [  OK  ] started service svc",
        "KEEL-CHECK:",
        "svc: got SIGTERM",
        "bye: onshutdown container ran",
        "keel: poweroff now",
        "keel init: PID 1 powered off",
    ] {
        match log[at..].find(pat) {
            Some(i) => at += i + pat.len(),
            None => fail(&format!("{pat:?} missing or out of order")),
        }
    }
    // A check may fail only where this host refuses the step and keel said so.
    let excused = [
        ("PID 1 oom_score_adj -1000", "oom_score_adj: cannot write"),
        ("nofile hard limit", "rlimits: setrlimit NOFILE"),
    ];
    for line in log.lines().filter(|l| l.starts_with("check: FAIL ")) {
        let what = &line["check: FAIL ".len()..];
        let ok = excused
            .iter()
            .any(|(c, warning)| *c == what && log.contains(warning));
        if !ok {
            fail(&format!("check failed: {what}"));
        }
    }
    assert!(!log.contains("keel: internal error"));
}
