//! The cpio writer driven by arbitrary calls, then read back: what the writer accepted comes
//! back entry for entry (names normalised, inode numbers in order, hard-link groups sharing
//! an inode with the data in the last name), the archive is padded to 512 bytes, and names
//! the format cannot carry were refused.
#![no_main]

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use arbitrary::Arbitrary;
use keel::image::cpio::{read_entries, DeviceKind, Writer, FIRST_INO};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    Dir(Vec<u8>, u32),
    File(Vec<u8>, u32, Vec<u8>),
    Symlink(Vec<u8>, Vec<u8>),
    Device(Vec<u8>, u32, bool, u32, u32),
    Fifo(Vec<u8>, u32),
    /// Links to the name at this index of those added so far.
    Hardlink(Vec<u8>, u8),
    Owner(u32, u32),
}

#[derive(Arbitrary, Debug)]
struct Input {
    mtime: u32,
    ops: Vec<Op>,
}

/// What one entry must read back as.
#[derive(Debug)]
struct Want {
    name: Vec<u8>,
    mode: u32,
    owner: (u32, u32),
    rdev: (u32, u32),
    data: Vec<u8>,
    /// Index of the hard-link group (one per regular file), if any.
    group: Option<usize>,
}

/// The stored form of a name (the module's rule, restated): no empty or "." components,
/// "." alone for the root; None when the writer must refuse it.
fn stored(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.is_empty() || raw.contains(&0) {
        return None;
    }
    let parts: Vec<&[u8]> = raw
        .split(|&b| b == b'/')
        .filter(|p| !p.is_empty() && *p != b".")
        .collect();
    if parts.contains(&&b".."[..]) {
        return None;
    }
    let name = if parts.is_empty() {
        b".".to_vec()
    } else {
        parts.join(&b'/')
    };
    (name.len() < 4096 && name != b"TRAILER!!!").then_some(name)
}

fn path(b: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(b))
}

fuzz_target!(|input: Input| {
    let mut w = Writer::new(Vec::new(), input.mtime);
    let mut want: Vec<Want> = Vec::new();
    let mut names: Vec<Vec<u8>> = Vec::new();
    let mut taken = HashSet::new();
    let mut owner = (0, 0);
    let mut groups = 0;
    for op in &input.ops {
        let (raw, res, mode, rdev, data, group): (&[u8], _, u32, _, Vec<u8>, _) = match op {
            Op::Owner(u, g) => {
                w.set_owner(*u, *g);
                owner = (*u, *g);
                continue;
            }
            Op::Dir(n, m) => (n, w.dir(path(n), *m), 0o040000 | m, (0, 0), vec![], None),
            Op::File(n, m, d) => {
                groups += 1;
                let r = w.file(path(n), *m, d);
                (n, r, 0o100000 | m, (0, 0), d.clone(), Some(groups))
            }
            Op::Symlink(n, t) => (n, w.symlink(path(n), path(t)), 0o120777, (0, 0), t.clone(), None),
            Op::Device(n, m, block, ma, mi) => {
                let (kind, bits) = match block {
                    true => (DeviceKind::Block, 0o060000),
                    false => (DeviceKind::Char, 0o020000),
                };
                (
                    n,
                    w.device(path(n), *m, kind, *ma, *mi),
                    bits | m,
                    (*ma, *mi),
                    vec![],
                    None,
                )
            }
            Op::Fifo(n, m) => (n, w.fifo(path(n), *m), 0o010000 | m, (0, 0), vec![], None),
            Op::Hardlink(n, i) => {
                let Some(target) = names.get(usize::from(*i)).cloned() else {
                    continue;
                };
                let res = w.hardlink(path(n), path(&target));
                if res.is_ok() {
                    let last = want.last().expect("a hard link follows its file");
                    let (mode, owner, group) = (last.mode, last.owner, last.group);
                    let name = stored(n).expect("an accepted name is a valid name");
                    want.push(Want {
                        name: name.clone(),
                        mode,
                        owner,
                        rdev: (0, 0),
                        data: vec![],
                        group,
                    });
                    names.push(name.clone());
                    assert!(taken.insert(name));
                }
                continue;
            }
        };
        match res {
            Ok(()) => {
                let name = stored(raw).unwrap_or_else(|| panic!("accepted {raw:?}"));
                assert!(taken.insert(name.clone()), "accepted a duplicate {raw:?}");
                names.push(name.clone());
                want.push(Want {
                    name,
                    mode,
                    owner,
                    rdev,
                    data,
                    group,
                });
            }
            Err(e) => {
                // Refusals name what they refuse; only write errors (none into a Vec) break it.
                let _ = e.to_string();
            }
        }
    }
    let archive = w.finish().expect("writing into memory cannot fail");
    assert_eq!(archive.len() % 512, 0);
    let got = read_entries(&archive).expect("the reader reads what the writer wrote");
    assert_eq!(got.len(), want.len());

    // Hard-link groups: every name shares the inode and nlink; the data sits in the last.
    let mut ino = FIRST_INO;
    let mut prev_group = None;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.name, &w.name[..]);
        assert_eq!(g.mode, w.mode);
        assert_eq!((g.uid, g.gid), w.owner);
        assert_eq!(g.mtime, input.mtime);
        assert_eq!((g.rdev_major, g.rdev_minor), w.rdev);
        assert_eq!((g.dev_major, g.dev_minor), (0, 0));
        let same_group = w.group.is_some() && w.group == prev_group;
        if !same_group && i > 0 {
            ino += 1;
        }
        assert_eq!(g.ino, ino, "{:?}", w.name);
        prev_group = w.group;
        let size = want
            .iter()
            .filter(|x| x.group.is_some() && x.group == w.group)
            .count();
        let last_of_group = want
            .get(i + 1)
            .is_none_or(|n| w.group.is_none() || n.group != w.group);
        match w.group {
            Some(_) => {
                assert_eq!(g.nlink as usize, size);
                // The group's first entry is the file, holding its contents.
                let first = want.iter().find(|x| x.group == w.group).map(|x| &x.data[..]);
                let data = if last_of_group {
                    first.unwrap_or_default()
                } else {
                    &[]
                };
                assert_eq!(g.data, data);
            }
            None => {
                assert_eq!(g.nlink, if w.mode & 0o170000 == 0o040000 { 2 } else { 1 });
                assert_eq!(g.data, &w.data[..]);
            }
        }
    }
});
