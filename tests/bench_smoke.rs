//! The benchmarks still run: `scripts/bench.sh --quick` measures every part once (a few
//! rounds, one boot of each image) and writes its Markdown and JSON. The numbers themselves
//! are not judged (benchmarks report, tests do not time); that every part produced them is.
//!
//! Inputs (scripts/test.sh sets them): KEEL_BIN, KEEL_KERNEL, KEEL_STOCK_KERNEL.

mod common;

use std::fs;
use std::process::Command;

use common::*;
use serde_json::Value;

fn positive(v: &Value, what: &str) {
    assert!(
        v["median"].as_f64().is_some_and(|m| m > 0.0),
        "{what}: no measurement: {v}"
    );
}

#[test]
fn quick_benchmark_run_measures_every_part() {
    require_root();
    for var in ["KEEL_BIN", "KEEL_KERNEL", "KEEL_STOCK_KERNEL"] {
        assert!(
            std::env::var_os(var).is_some(),
            "{var} is not set (scripts/test.sh sets it)"
        );
    }
    let out = repo().join("target/bench-smoke");
    let _ = fs::remove_dir_all(&out);
    let st = Command::new(repo().join("scripts/bench.sh"))
        .arg("--quick")
        .arg("--out")
        .arg(&out)
        .env("KEEL_HOST_BIN", env!("CARGO_BIN_EXE_keel"))
        .status()
        .expect("run scripts/bench.sh");
    assert!(
        st.success(),
        "scripts/bench.sh --quick failed; see {}/results.json and consoles/",
        out.display()
    );
    let r: Value = serde_json::from_slice(&fs::read(out.join("results.json")).unwrap()).unwrap();

    let l = &r["lifecycle"]["ms"];
    for runtime in ["runc", "crun", "keel run", "keel in-process"] {
        for col in [
            "isolated_seccomp",
            "isolated_no_seccomp",
            "back_to_back_seccomp",
            "back_to_back_no_seccomp",
        ] {
            positive(&l[runtime][col], &format!("lifecycle {runtime} {col}"));
        }
    }
    for run in ["keel@debian", "baseline@debian", "keel@keel"] {
        let v = &r["boot"]["runs"][run]["ms_kib"];
        positive(&v["init_to_ready_ms"], &format!("boot {run}"));
        positive(&v["pid1_pss_kib"], &format!("boot {run} PID 1 Pss"));
        positive(&v["machine_used_kib"], &format!("boot {run} memory"));
    }
    assert!(
        r["boot"]["ratio_init_to_ready"].as_f64().is_some(),
        "{}",
        r["boot"]
    );
    let s = &r["scale"]["services"]["10"]["ms_kib"];
    for k in [
        "init_to_ready_ms",
        "pid1_rss_kib",
        "ctl_socket_ms",
        "ctl_command_ms",
    ] {
        positive(&s[k], &format!("scale 10 {k}"));
    }
    positive(&r["restart"]["exit_to_exec_ms"], "restart latency");
    let f = &r["footprint"];
    for k in [
        "keel_binary_bytes",
        "minimal_image_bytes",
        "reference_keel_image_bytes",
        "reference_baseline_image_bytes",
    ] {
        assert!(f[k].as_u64().is_some_and(|b| b > 0), "footprint {k}: {f}");
    }

    let md = fs::read_to_string(out.join("results.md")).unwrap();
    for section in [
        "### Container lifecycle",
        "### Boot to all services ready",
        "### Footprint",
        "### Scale",
        "### Restart latency",
    ] {
        assert!(md.contains(section), "results.md lacks {section}:\n{md}");
    }
    assert!(!md.contains("failed:"), "results.md:\n{md}");
}
