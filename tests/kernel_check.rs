//! `keel check-kernel`: keel's own kernel matches its fragment; a distribution kernel is
//! told what it lacks; a kernel without seccomp filters fails.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::*;

fn check(config: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("check-kernel")
        .arg(config)
        .output()
        .unwrap()
}

#[test]
fn keel_kernel_matches_its_fragment() {
    let kernel = PathBuf::from(std::env::var("KEEL_KERNEL").expect("KEEL_KERNEL (scripts/test.sh sets it)"));
    let o = check(&kernel.with_file_name("config"));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert!(!out.contains("differ"), "{out}");
}

#[test]
fn distribution_kernel_gets_a_list_and_a_kernel_without_seccomp_fails() {
    let stock = std::fs::read_dir("/boot")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("config-"))
        })
        .expect("a /boot/config-* (scripts/setup.sh installs linux-image-amd64)");
    let o = check(&stock);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("(required): all"), "{out}");
    assert!(
        out.contains("hardening") && out.contains("should not be set"),
        "{out}"
    );

    let text = std::fs::read_to_string(&stock).unwrap();
    let d = scratch("kcheck");
    let weak = d.join("config");
    std::fs::write(
        &weak,
        text.replace("CONFIG_SECCOMP_FILTER=y", "# CONFIG_SECCOMP_FILTER is not set"),
    )
    .unwrap();
    let o = check(&weak);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("CONFIG_SECCOMP_FILTER: not set, want y")
            && out.contains("lacks what keel's sandbox needs"),
        "{out}"
    );
}
