//! The escape suite: a static program (tests/escape) tries, from containers built by
//! `keel build`, what a compromised service would try, booted in QEMU with keel as PID 1.
//! From the default posture every attempt must be denied; granted capabilities open
//! exactly their calls; `seccomp: unconfined` really lifts the filter; the control socket
//! refuses a container that binds it without CAP_SYS_BOOT; and PID 1 and a bystander
//! service stay healthy throughout. The table is written to target/escape-report.md.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn manifest(dir: &Path, kernel: &Path) -> PathBuf {
    let esc = dir.join("escape");
    fs::create_dir_all(esc.join("bin")).unwrap();
    fs::copy(env_path("KEEL_ESCAPE_BIN"), esc.join("bin/escape")).unwrap();
    // A setuid-root copy: running it must not raise anybody's privileges.
    fs::copy(env_path("KEEL_ESCAPE_BIN"), esc.join("bin/escape-suid")).unwrap();
    fs::set_permissions(
        esc.join("bin/escape-suid"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )
    .unwrap();
    let bb = dir.join("busybox");
    busybox_rootfs(&bb, &["sh", "echo", "sleep", "cat", "grep"]);
    fs::create_dir_all(bb.join("usr/bin")).unwrap();
    fs::copy(env_path("KEEL_BIN"), bb.join("usr/bin/keel")).unwrap();
    let m = format!(
        r#"
kernel:
  image: {kernel}
  cmdline: "console=ttyS0"
onboot:
  - name: escape-default
    image: ./escape
    command: [/bin/escape, default, --exhaust]
  - name: escape-user
    image: ./escape
    uid: 1000
    uts: host
    command: [/bin/escape, user]
  - name: escape-granted
    image: ./escape
    capabilities: [CAP_NET_ADMIN, CAP_SYS_TIME]
    command: [/bin/escape, granted]
  - name: escape-unconfined
    image: ./escape
    seccomp: unconfined
    command: [/bin/escape, unconfined]
  - name: escape-ctl
    image: ./escape
    binds: ["/run/keel/ctl.sock:/run/keel/ctl.sock"]
    command: [/bin/escape, ctl]
services:
  - name: bystander
    image: ./busybox
    command: ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"]
  - name: judge
    image: ./busybox
    depends_on: [bystander]
    capabilities: [CAP_SYS_BOOT]
    binds: ["/run/keel/ctl.sock:/run/keel/ctl.sock"]
    command: ["/bin/sh", "-c", "sleep 1; keel ctl status bystander | grep -q 'running' && echo JUDGE bystander running; keel ctl list; keel ctl poweroff; trap 'exit 0' TERM; sleep 60 & wait $!"]
"#,
        kernel = kernel.display()
    );
    let p = dir.join("keel.yml");
    fs::write(&p, m).unwrap();
    p
}

struct Run {
    begin: String,
    probes: BTreeMap<String, (String, String)>,
}

/// `onboot-escape-x | ESCAPE x probe WORD detail` lines, by label.
fn parse(console: &str) -> BTreeMap<String, Run> {
    let mut runs: BTreeMap<String, Run> = BTreeMap::new();
    for line in console.lines() {
        let Some(at) = line.find("ESCAPE") else { continue };
        let words: Vec<&str> = line[at..].splitn(5, ' ').collect();
        match words.as_slice() {
            ["ESCAPE-BEGIN", label, rest @ ..] => {
                runs.insert(
                    label.to_string(),
                    Run {
                        begin: rest.join(" "),
                        probes: BTreeMap::new(),
                    },
                );
            }
            ["ESCAPE", label, probe, word, rest @ ..] => {
                if let Some(r) = runs.get_mut(*label) {
                    r.probes
                        .insert(probe.to_string(), (word.to_string(), rest.join(" ")));
                }
            }
            _ => {}
        }
    }
    runs
}

fn report(runs: &BTreeMap<String, Run>, kernel: &str) -> String {
    let labels: Vec<&String> = runs.keys().collect();
    let mut probes: Vec<&String> = runs.values().flat_map(|r| r.probes.keys()).collect();
    probes.sort();
    probes.dedup();
    let mut t = format!("### Escape suite ({kernel})\n\n| attempt |");
    for l in &labels {
        t.push_str(&format!(" {l} |"));
    }
    t.push_str("\n|---|");
    t.push_str(&"---|".repeat(labels.len()));
    t.push('\n');
    for p in probes {
        t.push_str(&format!("| {p} |"));
        for l in &labels {
            let cell = runs[*l]
                .probes
                .get(p)
                .map(|(w, d)| format!("{w} {d}"))
                .unwrap_or_else(|| "-".into());
            t.push_str(&format!(" {} |", cell.trim()));
        }
        t.push('\n');
    }
    t
}

fn suite(kernel_var: &str) {
    require_root();
    let kernel = env_path(kernel_var);
    let d = scratch("escape");
    let m = manifest(&d, &kernel);
    let out = keel_build_ok(&m, &d.join("out"), &[]);
    let qemu = Command::new("timeout")
        .arg("900")
        .arg(repo().join("scripts/run-qemu.sh"))
        .arg(out.join("kernel"))
        .arg(out.join("initrd.img"))
        .env("KEEL_QEMU_MEM", "256")
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&qemu.stdout).replace('\r', "");
    let _ = fs::write(
        repo().join(format!("target/escape-console-{kernel_var}.log")),
        &console,
    );
    let runs = parse(&console);
    let table = report(&runs, kernel_var);
    let path = repo().join("target/escape-report.md");
    let mut all = fs::read_to_string(&path).unwrap_or_default();
    all.push_str(&table);
    all.push('\n');
    fs::write(&path, all).unwrap();
    let fail = |why: String| -> ! { panic!("{why}\n\n{table}\n--- console ---\n{console}") };

    for label in ["default", "user", "granted", "unconfined", "ctl"] {
        let Some(r) = runs.get(label) else {
            fail(format!("no results from escape-{label}"))
        };
        if r.probes.len() < 50 || !console.contains(&format!("ESCAPE-END {label}")) {
            fail(format!(
                "escape-{label} did not finish ({} attempts)",
                r.probes.len()
            ));
        }
    }
    let word = |label: &str, probe: &str| {
        runs[label]
            .probes
            .get(probe)
            .map(|p| p.0.as_str())
            .unwrap_or("missing")
    };
    // The default posture, as root and as an unprivileged user, denies everything.
    for label in ["default", "user", "ctl"] {
        for (probe, (w, detail)) in &runs[label].probes {
            if w != "DENIED" {
                fail(format!("escape-{label}: {probe} was not denied: {w} {detail}"));
            }
        }
    }
    for p in ["exhaust_pids", "exhaust_memory"] {
        assert_eq!(word("default", p), "DENIED", "{p}");
    }
    assert!(
        runs["default"].begin.contains("seccomp=2 capeff=0"),
        "{}",
        runs["default"].begin
    );
    assert!(runs["user"].begin.contains("uid=1000"), "{}", runs["user"].begin);
    assert!(runs["user"].probes["setuid_binary"].1.contains("euid 1000"));
    assert_eq!(runs["ctl"].probes["control_socket"].1, "refused by keel");
    // Granted capabilities open exactly what they name.
    let opened = ["settimeofday", "clock_settime", "adjtimex", "net_admin"];
    for (probe, (w, detail)) in &runs["granted"].probes {
        let want = if opened.contains(&probe.as_str()) {
            "ALLOWED"
        } else {
            "DENIED"
        };
        if w != want {
            fail(format!("escape-granted: {probe}: {w} {detail}, expected {want}"));
        }
    }
    // Unconfined really lifts the filter: what only seccomp stood in the way of now works,
    // and what capabilities guard stays shut.
    assert!(
        runs["unconfined"].begin.contains("seccomp=0"),
        "{}",
        runs["unconfined"].begin
    );
    for p in ["unshare_user", "clone_newuser", "personality"] {
        if word("unconfined", p) != "ALLOWED" {
            fail(format!(
                "escape-unconfined: {p} is {}, expected ALLOWED",
                word("unconfined", p)
            ));
        }
    }
    for p in [
        "mount",
        "reboot",
        "init_module",
        "settimeofday",
        "raw_socket",
        "sethostname",
    ] {
        if word("unconfined", p) == "ALLOWED" {
            fail(format!(
                "escape-unconfined: {p} is ALLOWED without its capability"
            ));
        }
    }
    // PID 1 kept supervising and answering, and shut the machine down cleanly.
    for want in [
        "JUDGE bystander running",
        "poweroff requested",
        "reboot: Power down",
    ] {
        if !console.contains(want) {
            fail(format!("{want:?} missing"));
        }
    }
}

#[test]
fn escape_suite_keel_kernel() {
    suite("KEEL_KERNEL");
}

#[test]
fn escape_suite_stock_kernel() {
    suite("KEEL_STOCK_KERNEL");
}
