//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

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

/// A path the environment names (scripts/env.sh sets these up), which must exist.
pub fn env_path(var: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(p) if Path::new(&p).exists() => PathBuf::from(p),
        Some(p) => panic!("{var}={} does not exist", Path::new(&p).display()),
        None => panic!("{var} is not set (scripts/env.sh sets it up; scripts/test.sh runs it)"),
    }
}

/// The static keel that boots as PID 1 in the QEMU tests.
pub fn keel_bin() -> PathBuf {
    env_path("KEEL_BIN")
}

/// `src` (a tests/images directory) built into an initrd at `out` with `keel` as /init.
pub fn build_image_with(src: &str, out: &Path, keel: &Path) {
    let st = std::process::Command::new(repo().join("scripts/build-image.sh"))
        .arg(repo().join(src))
        .arg(out)
        .arg(keel)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run scripts/build-image.sh");
    assert!(st.success(), "build-image.sh failed for {src}");
}

/// `keel build MANIFEST -o OUT --keel $KEEL_BIN EXTRA...`, which must succeed; returns OUT.
pub fn keel_build_ok(manifest: &Path, out: &Path, extra: &[&std::ffi::OsStr]) -> PathBuf {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("build")
        .arg(manifest)
        .arg("-o")
        .arg(out)
        .arg("--keel")
        .arg(keel_bin())
        .args(extra)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run keel build");
    assert!(
        o.status.success(),
        "keel build {}: {}",
        manifest.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    out.to_path_buf()
}

/// The static busybox in `dir`/bin with `applets` linked to it: a rootfs or a plain-directory
/// image.
pub fn busybox_rootfs(dir: &Path, applets: &[&str]) {
    fs::create_dir_all(dir.join("bin")).unwrap();
    let busybox = std::env::var("BUSYBOX").unwrap_or_else(|_| "/bin/busybox".into());
    fs::copy(&busybox, dir.join("bin/busybox"))
        .unwrap_or_else(|e| panic!("copy {busybox}: {e} (install busybox-static)"));
    for applet in applets {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
}

/// Serial console output as text: carriage returns, NULs and terminal escapes (keel's
/// colours, a shell's cursor queries) taken out.
pub fn clean_console(raw: &[u8]) -> String {
    let raw = String::from_utf8_lossy(raw).replace(['\r', '\0'], "");
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Collect what `out` (a VM's serial console) writes, as it comes, until it closes.
pub fn collect(mut out: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
    let console = Arc::new(Mutex::new(Vec::new()));
    let sink = console.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    (console, reader)
}

/// A VM in QEMU, stdin closed (`scripts/run-qemu.sh KERNEL INITRD CMDLINE` with
/// `qemu_args` added): the process, its console as it comes, and the collecting thread.
pub fn spawn_qemu(
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    qemu_args: &str,
) -> (std::process::Child, Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
    let mut child = std::process::Command::new(repo().join("scripts/run-qemu.sh"))
        .env("KEEL_QEMU_ARGS", qemu_args)
        .arg(kernel)
        .arg(initrd)
        .arg(cmdline)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run scripts/run-qemu.sh");
    let out = child.stdout.take().expect("QEMU's stdout is piped");
    let (console, reader) = collect(out);
    (child, console, reader)
}

/// What is wrong with `console`: a pattern of `expected` missing, or not on a line after the
/// previous pattern's; a line with a `forbidden` pattern.
pub fn console_problems(console: &str, expected: &[&str], forbidden: &[&str]) -> Vec<String> {
    let lines: Vec<&str> = console.lines().collect();
    let mut at = 0;
    let mut problems = Vec::new();
    for pat in expected {
        match lines[at..].iter().position(|l| l.contains(pat)) {
            Some(i) => at += i + 1,
            None => {
                let anywhere = lines.iter().any(|l| l.contains(pat));
                problems.push(format!(
                    "{pat:?} {}",
                    if anywhere { "is out of order" } else { "is missing" }
                ));
            }
        }
    }
    for pat in forbidden {
        if let Some(l) = lines.iter().find(|l| l.contains(pat)) {
            problems.push(format!("unexpected line: {l}"));
        }
    }
    problems
}

/// A bundle with a static busybox rootfs running `script` with /bin/sh, from the template
/// the image script uses.
pub fn busybox_bundle(dir: &Path, script: &str) -> PathBuf {
    let rootfs = dir.join("rootfs");
    busybox_rootfs(&rootfs, &["sh", "sleep", "echo", "kill", "cat"]);
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
    build_image_with(src, &img, Path::new(keel));
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
