//! Size budgets: the device binary and the smallest bootable image. These fail on growth.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use common::*;

/// Measured 2.64 MB (static, stripped, opt-level z, LTO, lld --icf=all, no cgroup v1,
/// regex-lite; scripts/bench.sh, README "Measured"): about 12% of room. The project's ceiling
/// is 3.5 MB; growth past this budget should be a decision, not an accident.
const KEEL_BINARY_BUDGET: u64 = 3_000_000;
/// Measured 3.76 MB: keel's kernel 2.59 MB + an initrd with keel alone 1.17 MB; about 20%
/// of room, for kernel hardening too. The project's ceiling is 6 MB.
const MINIMAL_IMAGE_BUDGET: u64 = 4_500_000;

fn path_from_env(var: &str) -> PathBuf {
    PathBuf::from(
        std::env::var_os(var).unwrap_or_else(|| panic!("{var} is not set (scripts/test.sh sets it)")),
    )
}

#[test]
fn keel_binary_is_static_stripped_and_within_budget() {
    let bin = path_from_env("KEEL_BIN");
    let size = fs::metadata(&bin).unwrap().len();
    assert!(
        size <= KEEL_BINARY_BUDGET,
        "{} is {size} bytes, budget {KEEL_BINARY_BUDGET}",
        bin.display()
    );
    let out = Command::new("file").arg(&bin).output().expect("run file");
    let desc = String::from_utf8_lossy(&out.stdout);
    assert!(desc.contains("statically linked"), "{desc}");
    assert!(
        desc.contains("stripped") && !desc.contains("not stripped"),
        "{desc}"
    );
}

#[test]
fn minimal_image_is_within_budget() {
    let kernel = path_from_env("KEEL_KERNEL");
    let src = scratch("minimal-src");
    let img = scratch("minimal").join("initrd.img");
    let st = Command::new(repo().join("scripts/build-image.sh"))
        .arg(&src)
        .arg(&img)
        .arg(path_from_env("KEEL_BIN"))
        .status()
        .unwrap();
    assert!(st.success());
    let (k, i) = (
        fs::metadata(&kernel).unwrap().len(),
        fs::metadata(&img).unwrap().len(),
    );
    assert!(
        k + i <= MINIMAL_IMAGE_BUDGET,
        "kernel {k} + initrd {i} bytes, budget {MINIMAL_IMAGE_BUDGET}"
    );
}
