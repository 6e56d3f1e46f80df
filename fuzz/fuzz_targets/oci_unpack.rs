//! OCI layers unpacked into a fresh rootfs. The invariant is not only "no panic": whatever
//! the layers hold (paths, `..`, absolute names, symlinks, hard links, whiteouts, devices),
//! nothing outside the rootfs is created, changed or removed. Two canaries watch for it: a
//! directory beside the rootfs (reached by relative escapes) and one at a fixed absolute
//! path (reached by absolute symlinks followed on the host), plus the layout itself.
//!
//! Input: layers separated by SEP; each layer's first byte picks its compression (0 tar,
//! 1 gzip, 2 zstd, modulo 3), the rest is the blob.
#![no_main]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use keel::image::oci::{unpack, Compression, Digest, ImageConfig, Layer, Resolved, Store};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest as _, Sha256};

const SEP: &[u8] = b"%%KEEL-LAYER%%";
/// Fixed, so that seeds can aim absolute symlinks at it. Everything lives on /dev/shm: on a
/// disk, creating and removing the directories of every run is most of the time.
const FIXED_CANARY: &str = "/dev/shm/keel-fuzz-canary";

fn digest(bytes: &[u8]) -> Digest {
    let hex: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    Digest::parse(&format!("sha256:{hex}")).expect("a sha256 digest")
}

/// Every path under `dir` with its kind, size, link count, mode and content.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u32, u64, u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let m = fs::symlink_metadata(&p).expect("lstat");
            let content = if m.is_file() {
                fs::read(&p).unwrap_or_default()
            } else {
                vec![]
            };
            if m.is_dir() {
                todo.push(p.clone());
            }
            out.push((p, m.mode(), m.len(), m.nlink(), content));
        }
    }
    out.sort();
    out
}

fn canary(dir: &Path) {
    fs::create_dir_all(dir.join("dir")).expect("canary dir");
    fs::write(dir.join("victim"), b"victim").expect("canary file");
}

fuzz_target!(|data: &[u8]| {
    let fixed = Path::new(FIXED_CANARY);
    if !fixed.join("victim").exists() {
        canary(fixed);
    }
    let base = Path::new("/dev/shm").join(format!("keel-fuzz-oci-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    let (layout, rootfs, beside) = (base.join("layout"), base.join("rootfs"), base.join("canary"));
    fs::create_dir_all(layout.join("blobs/sha256")).expect("layout");
    fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
    canary(&beside);

    let mut layers = Vec::new();
    let mut rest = data;
    loop {
        let (layer, next) = match rest.windows(SEP.len()).position(|w| w == SEP) {
            Some(i) => (&rest[..i], Some(&rest[i + SEP.len()..])),
            None => (rest, None),
        };
        if let Some((&c, blob)) = layer.split_first() {
            let d = digest(blob);
            fs::write(layout.join("blobs/sha256").join(d.hex()), blob).expect("blob");
            let compression = [Compression::None, Compression::Gzip, Compression::Zstd][usize::from(c % 3)];
            layers.push(Layer {
                digest: d,
                size: blob.len() as u64,
                compression,
            });
        }
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
    let store = Store::open(&layout).expect("a valid layout");
    let before = (snapshot(&layout), snapshot(&beside), snapshot(fixed));
    let resolved = Resolved {
        store,
        reference: "fuzz".into(),
        name: "fuzz".into(),
        manifest: digest(b"manifest"),
        config_digest: digest(b"config"),
        config: ImageConfig::default(),
        layers,
    };
    if let Err(e) = unpack(&resolved, &rootfs) {
        let _ = e.to_string();
    }

    let mut top: Vec<String> = fs::read_dir(&base)
        .expect("base")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(
        top,
        ["canary", "layout", "rootfs"],
        "something appeared beside the rootfs"
    );
    assert!(
        fs::symlink_metadata(&rootfs).expect("rootfs").is_dir(),
        "the rootfs was replaced"
    );
    let after = (snapshot(&layout), snapshot(&beside), snapshot(fixed));
    assert!(
        before == after,
        "outside the rootfs changed: {before:?} -> {after:?}"
    );
    let _ = fs::remove_dir_all(&base);
});
