//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh scratch directory under target/, unique per call.
pub fn scratch(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = repo().join("target/test-scratch").join(format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests create real containers and must run as root (see README: scripts/test.sh)"
    );
}

/// A bundle with a static busybox rootfs running `script` with /bin/sh, from the template
/// the image script uses.
pub fn busybox_bundle(dir: &Path, script: &str) -> PathBuf {
    let rootfs = dir.join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    let busybox = std::env::var("BUSYBOX").unwrap_or_else(|_| "/bin/busybox".into());
    fs::copy(&busybox, rootfs.join("bin/busybox"))
        .unwrap_or_else(|e| panic!("copy {busybox}: {e} (install busybox-static)"));
    for applet in ["sh", "sleep", "echo", "kill", "cat"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    fs::write(rootfs.join("entry"), script).unwrap();
    fs::copy(
        repo().join("scripts/busybox-bundle.json"),
        dir.join("config.json"),
    )
    .unwrap();
    dir.to_path_buf()
}

/// Rewrite a bundle's config.json through `edit`.
pub fn edit_config(bundle: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    edit(&mut spec);
    fs::write(&path, serde_json::to_vec(&spec).unwrap()).unwrap();
}

/// `src` (a tests/images directory) built into an initrd with `keel` as /init, then unpacked
/// into a fresh directory: a root for `keel init --root`.
pub fn unpacked_image(src: &str, keel: &str) -> PathBuf {
    let d = scratch("image");
    let img = d.join("initrd.img");
    let st = std::process::Command::new(repo().join("scripts/build-image.sh"))
        .arg(repo().join(src))
        .arg(&img)
        .arg(keel)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "build-image.sh {src}");
    let root = d.join("root");
    fs::create_dir_all(&root).unwrap();
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("zcat {} | cpio -idm --quiet", img.display()))
        .current_dir(&root)
        .status()
        .unwrap();
    assert!(st.success(), "unpack the initrd of {src}");
    root
}
