//! Identical files in read-only container roots stored once. keel's images each carry the
//! same static busybox (and the same libraries); the initrd holds one copy, hard-linked into
//! every bundle whose root is read-only (a writable root keeps its own copies, so a container
//! changing its files never changes another's).

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// Files smaller than this are not worth a link.
const MIN_SIZE: u64 = 4096;

/// What sharing saved.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Shared {
    pub files: u64,
    pub bytes: u64,
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            files(&e.path(), out)?;
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    Ok(())
}

fn digest(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finalize().into());
        }
        h.update(&buf[..n]);
    }
}

/// Replace each regular file under `roots` that has the content, mode and owner of one seen
/// before (in sorted path order, so the result is the same every time) by a hard link to it.
pub fn share(roots: &[PathBuf]) -> std::io::Result<Shared> {
    let mut all = Vec::new();
    for r in roots {
        files(r, &mut all)?;
    }
    all.sort();
    let mut first: HashMap<([u8; 32], u32, u32, u32), PathBuf> = HashMap::new();
    let mut saved = Shared::default();
    for path in all {
        let meta = fs::symlink_metadata(&path)?;
        if meta.len() < MIN_SIZE {
            continue;
        }
        let key = (digest(&path)?, meta.mode(), meta.uid(), meta.gid());
        match first.get(&key) {
            Some(orig) => {
                if fs::symlink_metadata(orig)?.ino() == meta.ino() {
                    continue;
                }
                let tmp = path.with_extension("keel-share");
                fs::hard_link(orig, &tmp)?;
                fs::rename(&tmp, &path)?;
                saved.files += 1;
                saved.bytes += meta.len();
            }
            None => {
                first.insert(key, path);
            }
        }
    }
    Ok(saved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn identical_files_become_one_inode_and_others_stay() {
        let d = std::env::temp_dir().join(format!("keel-share-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let (a, b, w) = (d.join("a"), d.join("b/x"), d.join("w"));
        for dir in [&a, &b, &w] {
            fs::create_dir_all(dir).unwrap();
        }
        let big = vec![7u8; 10_000];
        fs::write(a.join("busybox"), &big).unwrap();
        fs::write(b.join("busybox"), &big).unwrap();
        fs::write(b.join("other"), vec![8u8; 10_000]).unwrap();
        fs::write(b.join("small"), b"tiny").unwrap();
        fs::write(a.join("small"), b"tiny").unwrap();
        // Same bytes, other mode: kept apart.
        fs::write(b.join("exec"), &big).unwrap();
        fs::set_permissions(b.join("exec"), fs::Permissions::from_mode(0o755)).unwrap();
        // Not among the roots (a writable one): untouched.
        fs::write(w.join("busybox"), &big).unwrap();

        let saved = share(&[a.clone(), d.join("b")]).unwrap();
        assert_eq!(
            saved,
            Shared {
                files: 1,
                bytes: 10_000
            }
        );
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        assert_eq!(ino(&a.join("busybox")), ino(&b.join("busybox")));
        assert_ne!(ino(&a.join("busybox")), ino(&b.join("exec")));
        assert_ne!(ino(&a.join("busybox")), ino(&w.join("busybox")));
        assert_ne!(ino(&a.join("small")), ino(&b.join("small")));
        assert_eq!(fs::read(b.join("busybox")).unwrap(), big);
        // Again: nothing more to share.
        assert_eq!(share(&[a, d.join("b")]).unwrap(), Shared::default());
        let _ = fs::remove_dir_all(&d);
    }
}
