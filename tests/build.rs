//! `keel build`: a manifest with plain-directory images becomes a kernel + initrd that is
//! byte-identical when built twice, and boots.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn manifest(dir: &Path, kernel: &Path) -> PathBuf {
    busybox_rootfs(&dir.join("busybox"), &["sh", "echo", "sleep", "cat"]);
    let m = format!(
        r#"
kernel:
  image: {kernel}
  cmdline: "console=ttyS0"
onboot:
  - name: hello
    image: ./busybox
    command: ["/bin/echo", "hello from a built image"]
services:
  - name: bye
    image: ./busybox
    command: ["/bin/sh", "-c", "echo service up; sleep 1; echo poweroff > /run/keel/initctl; sleep 100"]
    binds: ["/run/keel/initctl:/run/keel/initctl"]
    stop_timeout: 2s
files:
  - path: etc/hostname
    contents: "built"
"#,
        kernel = kernel.display()
    );
    let p = dir.join("keel.yml");
    fs::write(&p, m).unwrap();
    p
}

fn keel_build(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("build")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn build_is_reproducible_and_boots() {
    require_root();
    let keel_bin = std::env::var("KEEL_BIN").expect("KEEL_BIN: the static keel (scripts/test.sh sets it)");
    let kernel = PathBuf::from(std::env::var("KEEL_KERNEL").expect("KEEL_KERNEL (scripts/test.sh sets it)"));
    let d = scratch("build");
    let m = manifest(&d, &kernel);
    let (a, b) = (d.join("out-a"), d.join("out-b"));
    for out in [&a, &b] {
        let o = keel_build(&[
            m.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--keel",
            &keel_bin,
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            stdout.contains("initrd.img") && stdout.lines().all(|l| l.len() > 64),
            "sha256 lines: {stdout}"
        );
    }
    for f in ["initrd.img", "kernel", "cmdline"] {
        assert_eq!(
            fs::read(a.join(f)).unwrap(),
            fs::read(b.join(f)).unwrap(),
            "{f} differs between two builds"
        );
    }
    let out = Command::new(repo().join("scripts/run-qemu.sh"))
        .arg(a.join("kernel"))
        .arg(a.join("initrd.img"))
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    for want in [
        "keel: hostname built",
        "hello | hello from a built image",
        "bye | service up",
        "poweroff requested through /run/keel/initctl",
        "reboot: Power down",
    ] {
        assert!(console.contains(want), "{want:?} missing\n{console}");
    }
}

#[test]
fn check_reports_bad_manifests_and_missing_images() {
    let d = scratch("build-check");
    let bad = d.join("bad.yml");
    fs::write(&bad, "services:\n  - name: a\n    image: ./nowhere\n").unwrap();
    let o = keel_build(&[bad.to_str().unwrap(), "--check"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("services a: image ./nowhere") && err.contains("is not a directory"),
        "{err}"
    );
    fs::write(&bad, "services:\n  - name: a\n    image: alpine:3.19\n").unwrap();
    let o = keel_build(&[bad.to_str().unwrap(), "--check"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("alpine:3.19"), "{err}");
    fs::write(
        &bad,
        "services:\n  - name: a\n    image: x\n    capabilites: [all]\n",
    )
    .unwrap();
    let o = keel_build(&[bad.to_str().unwrap(), "--check"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.yml: services[0] (a): unknown field `capabilites`"),
        "{err}"
    );
}

#[test]
fn files_are_never_written_through_a_symlink_in_the_image() {
    require_root();
    let keel_bin = std::env::var("KEEL_BIN").expect("KEEL_BIN: the static keel (scripts/test.sh sets it)");
    let d = scratch("build-files");
    // An "init" image whose opt is an absolute link to a directory outside the build.
    let victim = d.join("host-etc");
    fs::create_dir_all(&victim).unwrap();
    let img = d.join("initimg");
    fs::create_dir_all(&img).unwrap();
    std::os::unix::fs::symlink(&victim, img.join("opt")).unwrap();
    let m = d.join("keel.yml");
    fs::write(
        &m,
        "init: [./initimg]\nfiles:\n  - path: opt/app/conf\n    contents: pwned\n",
    )
    .unwrap();
    let o = keel_build(&[
        m.to_str().unwrap(),
        "-o",
        d.join("out").to_str().unwrap(),
        "--keel",
        &keel_bin,
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "built through a symlink: {err}");
    assert!(
        err.contains("files: opt/app/conf") && err.contains("is a symlink in the image"),
        "{err}"
    );
    assert!(
        fs::read_dir(&victim).unwrap().next().is_none(),
        "wrote outside the image"
    );
}
