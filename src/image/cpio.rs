//! Reproducible newc ("070701") cpio archives, the format the kernel's initramfs unpacker
//! reads, plus a strict parser of the same format.
//!
//! Everything that would make two builds of the same tree differ is fixed: owners (0 unless
//! asked), one mtime given at construction, inode numbers assigned in order of addition from
//! [`FIRST_INO`], device-of-inode fields 0, directory link counts 2, entries of a tree sorted by
//! the bytes of their paths. Hard links follow the convention of the kernel and GNU cpio: all
//! names of a group share one inode number and the group's nlink, and the data is stored once,
//! in the group's LAST entry (the earlier ones have size 0).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{major, minor};

/// The inode number of the first entry; the trailer uses 0, as GNU cpio does.
pub const FIRST_INO: u32 = 1;
/// The kernel skips names whose size, NUL included, exceeds PATH_MAX.
pub const PATH_MAX: usize = 4096;
const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &[u8] = b"TRAILER!!!";
/// GNU cpio pads archives to its 512-byte block; the kernel skips zeros between archives.
const BLOCK: u64 = 512;

// File type bits of the mode field: fixed by the format (and equal to Linux's).
const S_IFMT: u32 = 0o170000;
const S_IFSOCK: u32 = 0o140000;
const S_IFLNK: u32 = 0o120000;
const S_IFREG: u32 = 0o100000;
const S_IFBLK: u32 = 0o060000;
const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;
const S_IFIFO: u32 = 0o010000;

/// What can go wrong writing or reading an archive. Messages name the path and the problem.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// A name, mode, size, symlink target, device number or link the format cannot carry.
    #[error("{path:?}: {problem}")]
    Invalid { path: PathBuf, problem: String },
    #[error("{path:?}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing the archive: {0}")]
    Write(#[source] io::Error),
    #[error("an earlier error left the archive incomplete")]
    Broken,
    #[error("cpio archive truncated at byte {offset}: the {what} needs {needed} bytes")]
    Truncated {
        offset: usize,
        what: &'static str,
        needed: usize,
    },
    #[error("malformed cpio archive at byte {offset}: {problem}")]
    Malformed { offset: usize, problem: String },
}

fn invalid(path: &Path, problem: impl Into<String>) -> CpioError {
    CpioError::Invalid {
        path: path.into(),
        problem: problem.into(),
    }
}

fn read_err(path: &Path) -> impl FnOnce(io::Error) -> CpioError + '_ {
    move |source| CpioError::Read {
        path: path.into(),
        source,
    }
}

/// The kind of a device node; the values are the file type bits of the mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Char = S_IFCHR as isize,
    Block = S_IFBLK as isize,
}

/// Whose uid/gid [`Writer::add_tree`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owners {
    /// 0:0 for every entry, whoever owns the build tree.
    Root,
    /// The tree's own owners.
    Keep,
}

/// The header fields that vary between entries.
#[derive(Default)]
struct Header {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    rdev: (u32, u32),
}

/// A regular file held back so that [`Writer::hardlink`] calls right after it can join its
/// group: newc needs the group's nlink in every header and the data after the last one.
struct Held {
    names: Vec<Vec<u8>>,
    header: Header,
    data: Vec<u8>,
}

/// (dev, ino) of a hard-linked file in a tree -> (its names there, names written, inode number).
type Groups = HashMap<(u64, u64), (usize, usize, u32)>;

/// Writes a newc archive to `out`, entry by entry, in order of addition. Only
/// [`finish`](Self::finish) makes it complete (and writes the last regular file added).
pub struct Writer<W: Write> {
    out: W,
    mtime: u32,
    owner: (u32, u32),
    next_ino: u32,
    written: u64,
    names: HashSet<Vec<u8>>,
    held: Option<Held>,
    broken: bool,
}

impl<W: Write> Writer<W> {
    /// Every entry gets `mtime` (e.g. SOURCE_DATE_EPOCH, or 0) and owner 0:0.
    pub fn new(out: W, mtime: u32) -> Self {
        Writer {
            out,
            mtime,
            owner: (0, 0),
            next_ino: FIRST_INO,
            written: 0,
            names: HashSet::new(),
            held: None,
            broken: false,
        }
    }

    /// The owner of the entries added after this call.
    pub fn set_owner(&mut self, uid: u32, gid: u32) {
        self.owner = (uid, gid);
    }

    pub fn dir(&mut self, path: impl AsRef<Path>, mode: u32) -> Result<(), CpioError> {
        let h = self.header(path.as_ref(), S_IFDIR, mode)?;
        self.node(path.as_ref(), h, &[])
    }

    /// A regular file. It is held in memory until the next call that is not a
    /// [`hardlink`](Self::hardlink) to it, since a link group is written together.
    pub fn file(&mut self, path: impl AsRef<Path>, mode: u32, contents: &[u8]) -> Result<(), CpioError> {
        let path = path.as_ref();
        let mut header = self.header(path, S_IFREG, mode)?;
        header.size = file_size(path, contents.len() as u64)?;
        self.ready()?;
        let name = self.claim(path)?;
        header.ino = self.alloc_ino(path)?;
        self.held = Some(Held {
            names: vec![name],
            header,
            data: contents.to_vec(),
        });
        Ok(())
    }

    /// A symlink; Linux ignores a symlink's permissions, so they are always 0777.
    pub fn symlink(&mut self, path: impl AsRef<Path>, target: impl AsRef<Path>) -> Result<(), CpioError> {
        let (path, target) = (path.as_ref(), target.as_ref().as_os_str().as_bytes());
        check_target(path, target)?;
        let h = self.header(path, S_IFLNK, 0o777)?;
        self.node(path, h, target)
    }

    pub fn device(
        &mut self,
        path: impl AsRef<Path>,
        mode: u32,
        kind: DeviceKind,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        let path = path.as_ref();
        let mut h = self.header(path, kind as u32, mode)?;
        h.rdev = check_device(path, major.into(), minor.into())?;
        self.node(path, h, &[])
    }

    pub fn fifo(&mut self, path: impl AsRef<Path>, mode: u32) -> Result<(), CpioError> {
        let h = self.header(path.as_ref(), S_IFIFO, mode)?;
        self.node(path.as_ref(), h, &[])
    }

    /// Another name for `existing`, which must be the regular file added just before (or one
    /// of its links): the group is written when the next other entry is added, every name
    /// with the same inode number and nlink, the data in the last one.
    pub fn hardlink(&mut self, path: impl AsRef<Path>, existing: impl AsRef<Path>) -> Result<(), CpioError> {
        let (path, existing) = (path.as_ref(), existing.as_ref());
        let target = archive_name(existing)?;
        if self.broken {
            return Err(CpioError::Broken);
        }
        let in_group = self
            .held
            .as_ref()
            .is_some_and(|held| held.names.contains(&target));
        if !in_group {
            let problem = match self.names.contains(&target) {
                true => "it is not the regular file added just before",
                false => "no such entry",
            };
            let problem = format!("cannot hard-link to {existing:?}: {problem}");
            return Err(invalid(path, problem));
        }
        let name = self.claim(path)?;
        if let Some(held) = &mut self.held {
            held.names.push(name);
        }
        Ok(())
    }

    /// Adds `root` as "." and everything under it, see [`from_tree`](Writer::from_tree).
    pub fn add_tree(&mut self, root: &Path, owners: Owners) -> Result<(), CpioError> {
        self.ready()?;
        let result = self.tree(root, owners);
        self.broken |= result.is_err();
        result
    }

    /// Writes the TRAILER!!! entry, pads to 512 bytes and gives `out` back.
    pub fn finish(mut self) -> Result<W, CpioError> {
        self.ready()?;
        let trailer = Header {
            nlink: 1,
            ..Header::default()
        };
        self.entry(TRAILER, &trailer, &mut io::empty(), Path::new("TRAILER!!!"))?;
        let tail = ((BLOCK - self.written % BLOCK) % BLOCK) as usize;
        self.out
            .write_all(&[0; BLOCK as usize][..tail])
            .map_err(CpioError::Write)?;
        self.out.flush().map_err(CpioError::Write)?;
        Ok(self.out)
    }

    /// The whole tree under `root`, read with `symlink_metadata` (symlinks are never
    /// followed), sorted by the bytes of the paths so that the same tree gives the same
    /// archive whatever the directory order or timestamps. Modes, file types, device numbers
    /// and symlink targets are kept; owners become 0; hard links within the tree (same
    /// dev+ino, regular files) become newc hard links. On error the output is incomplete.
    pub fn from_tree(root: &Path, out: W, mtime: u32) -> Result<W, CpioError> {
        let mut writer = Writer::new(out, mtime);
        writer.add_tree(root, Owners::Root)?;
        writer.finish()
    }

    fn tree(&mut self, root: &Path, owners: Owners) -> Result<(), CpioError> {
        let meta = fs::symlink_metadata(root).map_err(read_err(root))?;
        if !meta.is_dir() {
            return Err(read_err(root)(io::ErrorKind::NotADirectory.into()));
        }
        let mut nodes = Vec::new();
        let mut dirs = vec![(root.to_path_buf(), Vec::new())];
        while let Some((dir, rel)) = dirs.pop() {
            for dirent in fs::read_dir(&dir).map_err(read_err(&dir))? {
                let host = dirent.map_err(read_err(&dir))?.path();
                let meta = fs::symlink_metadata(&host).map_err(read_err(&host))?;
                let mut name: Vec<u8> = rel.clone();
                if !name.is_empty() {
                    name.push(b'/');
                }
                name.extend_from_slice(host.file_name().unwrap_or_default().as_bytes());
                if meta.is_dir() {
                    dirs.push((host.clone(), name.clone()));
                }
                nodes.push((name, host, meta));
            }
        }
        // "." goes first even though a name like "-x" sorts before it.
        nodes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        nodes.insert(0, (b".".to_vec(), root.to_path_buf(), meta));

        let mut groups = Groups::new();
        for (_, _, meta) in nodes.iter().filter(|n| n.2.is_file() && n.2.nlink() > 1) {
            groups.entry((meta.dev(), meta.ino())).or_insert((0, 0, 0)).0 += 1;
        }
        for (name, host, meta) in &nodes {
            let path = Path::new(OsStr::from_bytes(name));
            let (kind, perm) = (meta.mode() & S_IFMT, meta.mode() & 0o7777);
            let mut h = self.header(path, kind, perm)?;
            if owners == Owners::Keep {
                (h.uid, h.gid) = (meta.uid(), meta.gid());
            }
            match kind {
                S_IFREG => self.tree_file(path, host, meta, h, &mut groups)?,
                S_IFLNK => {
                    let target = fs::read_link(host).map_err(read_err(host))?;
                    check_target(host, target.as_os_str().as_bytes())?;
                    self.node(path, h, target.as_os_str().as_bytes())?
                }
                S_IFCHR | S_IFBLK => {
                    h.rdev = check_device(host, major(meta.rdev()), minor(meta.rdev()))?;
                    self.node(path, h, &[])?
                }
                S_IFDIR | S_IFIFO | S_IFSOCK => self.node(path, h, &[])?,
                _ => return Err(invalid(host, format!("unknown file type {:#o}", meta.mode()))),
            }
        }
        Ok(())
    }

    /// A regular file of a tree, streamed from disk; a hard-linked one carries its data only
    /// under its group's last name.
    fn tree_file(
        &mut self,
        path: &Path,
        host: &Path,
        meta: &Metadata,
        mut h: Header,
        groups: &mut Groups,
    ) -> Result<(), CpioError> {
        let size = file_size(host, meta.len())?;
        let name = self.claim(path)?;
        match groups.get_mut(&(meta.dev(), meta.ino())) {
            Some((total, written, ino)) if *total > 1 => {
                if *written == 0 {
                    *ino = self.alloc_ino(path)?;
                }
                *written += 1;
                let nlink = u32::try_from(*total).map_err(|_| invalid(host, "too many hard links"))?;
                (h.ino, h.nlink) = (*ino, nlink);
                if written < total {
                    return self.entry(&name, &h, &mut io::empty(), host);
                }
            }
            _ => h.ino = self.alloc_ino(path)?,
        }
        h.size = size;
        let open = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(host);
        self.entry(&name, &h, &mut open.map_err(read_err(host))?, host)
    }

    /// Checks the permissions; the header of a new entry of this writer's owner and mtime.
    fn header(&self, path: &Path, kind: u32, perm: u32) -> Result<Header, CpioError> {
        if perm & !0o7777 != 0 {
            return Err(invalid(
                path,
                format!("mode {perm:#o} has bits beyond the permissions (0o7777)"),
            ));
        }
        let nlink = if kind == S_IFDIR { 2 } else { 1 };
        let (uid, gid) = self.owner;
        Ok(Header {
            mode: kind | perm,
            uid,
            gid,
            nlink,
            mtime: self.mtime,
            ..Header::default()
        })
    }

    /// A directory, symlink, device, fifo or socket: written at once.
    fn node(&mut self, path: &Path, mut h: Header, data: &[u8]) -> Result<(), CpioError> {
        self.ready()?;
        let name = self.claim(path)?;
        h.ino = self.alloc_ino(path)?;
        h.size = data.len() as u32; // only symlink targets, shorter than PATH_MAX
        self.entry(&name, &h, &mut &data[..], path)
    }

    /// Refuses to go on after a failed write; writes a held file group out.
    fn ready(&mut self) -> Result<(), CpioError> {
        if self.broken {
            return Err(CpioError::Broken);
        }
        let Some(Held {
            names,
            mut header,
            data,
        }) = self.held.take()
        else {
            return Ok(());
        };
        let size = header.size;
        header.nlink = names.len() as u32; // each name was a call that found an inode number
        for (i, name) in names.iter().enumerate() {
            let last = i + 1 == names.len();
            header.size = if last { size } else { 0 };
            let body: &mut dyn Read = if last { &mut &data[..] } else { &mut io::empty() };
            self.entry(name, &header, body, Path::new(OsStr::from_bytes(name)))?;
        }
        Ok(())
    }

    /// Validates a new entry's name and records it.
    fn claim(&mut self, path: &Path) -> Result<Vec<u8>, CpioError> {
        let name = archive_name(path)?;
        if !self.names.insert(name.clone()) {
            return Err(invalid(path, "already in the archive"));
        }
        Ok(name)
    }

    fn alloc_ino(&mut self, path: &Path) -> Result<u32, CpioError> {
        let ino = self.next_ino;
        self.next_ino = ino
            .checked_add(1)
            .ok_or_else(|| invalid(path, "no 32-bit inode number left"))?;
        Ok(ino)
    }

    /// Header, name, padding, exactly `h.size` bytes of `data`, padding. Any failure here
    /// leaves a partial entry, so the writer refuses to continue.
    fn entry(&mut self, name: &[u8], h: &Header, data: &mut dyn Read, path: &Path) -> Result<(), CpioError> {
        self.broken = true;
        let namesize = name.len() as u32 + 1; // names are checked against PATH_MAX
        let mut head = MAGIC.to_vec();
        let fields = [
            h.ino, h.mode, h.uid, h.gid, h.nlink, h.mtime, h.size, 0, 0, h.rdev.0, h.rdev.1, namesize, 0,
        ];
        for field in fields {
            head.extend_from_slice(format!("{field:08X}").as_bytes());
        }
        head.extend_from_slice(name);
        head.push(0);
        head.resize(head.len().next_multiple_of(4), 0);
        self.out.write_all(&head).map_err(CpioError::Write)?;

        let (mut buf, mut left) = ([0u8; 32 * 1024], h.size as usize);
        while left > 0 {
            let chunk = &mut buf[..left.min(32 * 1024)];
            data.read_exact(chunk).map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => {
                    invalid(path, "shorter than its size (changed while archived?)")
                }
                _ => read_err(path)(e),
            })?;
            self.out.write_all(chunk).map_err(CpioError::Write)?;
            left -= chunk.len();
        }
        let pad = (4 - h.size as usize % 4) % 4;
        self.out.write_all(&[0; 3][..pad]).map_err(CpioError::Write)?;
        self.written += (head.len() + h.size as usize + pad) as u64;
        self.broken = false;
        Ok(())
    }
}

/// The name as stored: no leading "/", no empty or "." components ("." alone for the root),
/// like `find .` prints it minus the "./".
fn archive_name(path: &Path) -> Result<Vec<u8>, CpioError> {
    let raw = path.as_os_str().as_bytes();
    if raw.is_empty() {
        return Err(invalid(path, "empty name"));
    }
    if raw.contains(&0) {
        return Err(invalid(path, "contains a NUL byte"));
    }
    let mut name = Vec::with_capacity(raw.len());
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => continue,
            b".." => {
                return Err(invalid(
                    path,
                    "`..` components are refused, entries stay under the root",
                ))
            }
            _ if name.is_empty() => {}
            _ => name.push(b'/'),
        }
        name.extend_from_slice(part);
    }
    if name.is_empty() {
        name.push(b'.');
    }
    if name.len() + 1 > PATH_MAX {
        let problem = format!(
            "name is {} bytes, over PATH_MAX ({PATH_MAX}) with its NUL",
            name.len()
        );
        return Err(invalid(path, problem));
    }
    if name == TRAILER {
        return Err(invalid(
            path,
            "TRAILER!!! marks the end of an archive, the kernel would stop there",
        ));
    }
    Ok(name)
}

/// newc sizes are 8 hex digits.
fn file_size(path: &Path, size: u64) -> Result<u32, CpioError> {
    let problem = || invalid(path, format!("{size} bytes, over newc's limit of 4 GiB - 1"));
    u32::try_from(size).map_err(|_| problem())
}

/// symlink(2) needs a non-empty target without NUL, shorter than PATH_MAX.
fn check_target(path: &Path, target: &[u8]) -> Result<(), CpioError> {
    let problem = match target {
        [] => "symlink target is empty",
        _ if target.contains(&0) => "symlink target contains a NUL byte",
        _ if target.len() >= PATH_MAX => "symlink target is longer than PATH_MAX",
        _ => return Ok(()),
    };
    Err(invalid(path, problem))
}

/// The kernel's initramfs unpacker packs major:minor into a 12:20-bit dev_t.
fn check_device(path: &Path, major: u64, minor: u64) -> Result<(u32, u32), CpioError> {
    if major > 0xfff || minor > 0xf_ffff {
        return Err(invalid(
            path,
            format!("device {major}:{minor} does not fit a 12-bit major, 20-bit minor"),
        ));
    }
    Ok((major as u32, minor as u32))
}

/// One entry of an archive, borrowed from its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// As stored, without the NUL.
    pub name: &'a [u8],
    pub ino: u32,
    /// File type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    /// The device holding the inode (c_devmajor/c_devminor); part of a hard link's identity.
    pub dev_major: u32,
    pub dev_minor: u32,
    /// The numbers of a device node (c_rdevmajor/c_rdevminor).
    pub rdev_major: u32,
    pub rdev_minor: u32,
    /// File contents or symlink target; empty for every other kind and for the earlier
    /// names of a hard-link group.
    pub data: &'a [u8],
}

/// A strict parser: every length is checked against the input before use, nothing is
/// allocated from a size field, padding must be zeros. Names are returned as stored, not
/// checked for "..": an unpacker must do that itself.
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    done: bool,
}

const FIELDS: &str = "c_ino c_mode c_uid c_gid c_nlink c_mtime c_filesize c_devmajor c_devminor c_rdevmajor c_rdevminor c_namesize c_check";

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader {
            bytes,
            pos: 0,
            done: false,
        }
    }

    /// The next entry, or `None` once TRAILER!!! has been read.
    pub fn next_entry(&mut self) -> Result<Option<Entry<'a>>, CpioError> {
        if self.done {
            return Ok(None);
        }
        self.done = true; // until this entry parses
        let start = self.pos;
        let head = self.slice(HEADER_LEN, "header")?;
        if &head[..6] != MAGIC {
            return Err(malformed(start, "bad magic, not a newc (070701) archive"));
        }
        let mut f = [0u32; 13];
        for (i, (field, name)) in f.iter_mut().zip(FIELDS.split(' ')).enumerate() {
            let hex = &head[6 + 8 * i..14 + 8 * i];
            let problem = || format!("{name} is not 8 hex digits: {:?}", String::from_utf8_lossy(hex));
            *field = parse_hex(hex).ok_or_else(|| malformed(start + 6 + 8 * i, problem()))?;
        }
        let [ino, mode, uid, gid, nlink, mtime, size, dev_major, dev_minor, rdev_major, rdev_minor, namesize, _] =
            f;
        if namesize == 0 || namesize as usize > PATH_MAX {
            let problem = format!("name size {namesize} is not within 1..={PATH_MAX}");
            return Err(malformed(start + 94, problem));
        }
        let name_at = self.pos;
        let name = self.slice(namesize as usize, "name")?;
        let Some((0, name)) = name.split_last() else {
            return Err(malformed(name_at, "name lacks its NUL terminator"));
        };
        if name.is_empty() || name.contains(&0) {
            return Err(malformed(name_at, "name is empty or holds a NUL"));
        }
        self.pad()?;
        let kind = mode & S_IFMT;
        let problem = match name {
            TRAILER if size == 0 => return Ok(None),
            TRAILER => "the trailer has data",
            _ if ![S_IFREG, S_IFDIR, S_IFLNK, S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK].contains(&kind) => {
                "unknown file type"
            }
            _ if size != 0 && kind != S_IFREG && kind != S_IFLNK => {
                "data on a node that is no file or symlink"
            }
            _ => "",
        };
        if !problem.is_empty() {
            let shown = String::from_utf8_lossy(name);
            return Err(malformed(
                start,
                format!("{shown:?} (mode {mode:#o}, {size} bytes): {problem}"),
            ));
        }
        let data = self.slice(size as usize, "data")?;
        self.pad()?;
        self.done = false;
        Ok(Some(Entry {
            name,
            ino,
            mode,
            uid,
            gid,
            nlink,
            mtime,
            dev_major,
            dev_minor,
            rdev_major,
            rdev_minor,
            data,
        }))
    }

    /// What follows the trailer (padding, or another archive the kernel would also unpack).
    pub fn remainder(&self) -> &'a [u8] {
        &self.bytes[self.pos..]
    }

    fn slice(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], CpioError> {
        let end = self.pos.checked_add(len).filter(|&end| end <= self.bytes.len());
        let Some(end) = end else {
            return Err(CpioError::Truncated {
                offset: self.pos,
                what,
                needed: len,
            });
        };
        let taken = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(taken)
    }

    /// Entries start at multiples of 4 from the start of the archive.
    fn pad(&mut self) -> Result<(), CpioError> {
        let at = self.pos;
        let pad = self.slice((4 - at % 4) % 4, "padding")?;
        if pad.iter().any(|&b| b != 0) {
            return Err(malformed(at, "padding is not zeros"));
        }
        Ok(())
    }
}

impl<'a> Iterator for Reader<'a> {
    type Item = Result<Entry<'a>, CpioError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_entry().transpose()
    }
}

/// Every entry of a single archive: up to TRAILER!!!, after which only zeros may follow.
pub fn read_entries(bytes: &[u8]) -> Result<Vec<Entry<'_>>, CpioError> {
    let mut reader = Reader::new(bytes);
    let mut entries = Vec::new();
    while let Some(entry) = reader.next_entry()? {
        entries.push(entry);
    }
    if let Some(i) = reader.remainder().iter().position(|&b| b != 0) {
        return Err(malformed(reader.pos + i, "data after the trailer"));
    }
    Ok(entries)
}

fn malformed(offset: usize, problem: impl Into<String>) -> CpioError {
    CpioError::Malformed {
        offset,
        problem: problem.into(),
    }
}

/// Exactly 8 hex digits; `u32::from_str_radix` would also take a sign.
fn parse_hex(hex: &[u8]) -> Option<u32> {
    hex.iter()
        .try_fold(0u32, |acc, &c| Some(acc << 4 | (c as char).to_digit(16)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, FileTypeExt, PermissionsExt};
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::SeqCst);
            let dir = std::env::temp_dir().join(format!("keel-cpio-{tag}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn require_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "creating device nodes needs root (scripts/test.sh)"
        );
    }

    /// GNU cpio, the reference reader, fed `archive` on stdin.
    fn gnu_cpio(args: &[&str], dir: &Path, archive: &[u8]) -> String {
        let mut child = Command::new("cpio")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("GNU cpio must be installed");
        child.stdin.take().unwrap().write_all(archive).unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "cpio {args:?}: {}: {stderr}",
            out.status
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn set_mode(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn mode_of(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode()
    }

    fn names<'a>(entries: &'a [Entry]) -> Vec<&'a str> {
        entries
            .iter()
            .map(|e| std::str::from_utf8(e.name).unwrap())
            .collect()
    }

    fn find<'a, 'b>(entries: &'b [Entry<'a>], name: &str) -> &'b Entry<'a> {
        entries
            .iter()
            .find(|e| e.name == name.as_bytes())
            .unwrap_or_else(|| panic!("no {name}"))
    }

    /// One entry of every kind, including a three-name hard-link group.
    fn sample() -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), 1_000_000);
        w.dir(".", 0o755).unwrap();
        w.dir("/etc/", 0o750).unwrap();
        w.set_owner(1000, 100);
        w.file("etc/motd", 0o640, b"hello\n").unwrap();
        w.hardlink("etc/motd.1", "etc/motd").unwrap();
        w.hardlink("./etc/motd.2", "/etc/motd.1").unwrap();
        w.set_owner(0, 0);
        w.symlink("etc/link", "motd").unwrap();
        w.device("null", 0o666, DeviceKind::Char, 1, 3).unwrap();
        w.device("sda", 0o660, DeviceKind::Block, 8, 0).unwrap();
        w.fifo("pipe", 0o600).unwrap();
        w.file("empty", 0o4755, b"").unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn header_bytes_follow_the_format() {
        let mut w = Writer::new(Vec::new(), 0x5F5E100);
        w.file("/hello", 0o644, b"hi\n").unwrap();
        let bytes = w.finish().unwrap();
        let fields = [
            "070701", "00000001", "000081A4", "00000000", "00000000", "00000001", "05F5E100", "00000003",
            "00000000", "00000000", "00000000", "00000000", "00000006", "00000000",
        ];
        assert_eq!(&bytes[..110], fields.concat().as_bytes());
        // Name, NUL, then the data at 116 (already aligned), padded to 120.
        assert_eq!(&bytes[110..120], b"hello\0hi\n\0");
        let trailer = [
            "070701",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000001",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "0000000B",
            "00000000",
            "TRAILER!!!\0",
        ];
        assert_eq!(&bytes[120..241], trailer.concat().as_bytes());
        assert_eq!(bytes.len(), 512, "padded to GNU cpio's block");
        assert!(bytes[241..].iter().all(|&b| b == 0));
    }

    #[test]
    fn every_kind_round_trips() {
        let bytes = sample();
        let entries = read_entries(&bytes).unwrap();
        let expected = [
            // name, ino, mode, uid, gid, nlink, rdev, data
            (".", 1, 0o40755, 0, 0, 2, (0, 0), &b""[..]),
            ("etc", 2, 0o40750, 0, 0, 2, (0, 0), b""),
            ("etc/motd", 3, 0o100640, 1000, 100, 3, (0, 0), b""),
            ("etc/motd.1", 3, 0o100640, 1000, 100, 3, (0, 0), b""),
            ("etc/motd.2", 3, 0o100640, 1000, 100, 3, (0, 0), b"hello\n"),
            ("etc/link", 4, 0o120777, 0, 0, 1, (0, 0), b"motd"),
            ("null", 5, 0o20666, 0, 0, 1, (1, 3), b""),
            ("sda", 6, 0o60660, 0, 0, 1, (8, 0), b""),
            ("pipe", 7, 0o10600, 0, 0, 1, (0, 0), b""),
            ("empty", 8, 0o104755, 0, 0, 1, (0, 0), b""),
        ];
        assert_eq!(entries.len(), expected.len(), "{:?}", names(&entries));
        for (e, (name, ino, mode, uid, gid, nlink, rdev, data)) in entries.iter().zip(expected) {
            let got = (
                e.name,
                e.ino,
                e.mode,
                e.uid,
                e.gid,
                e.nlink,
                (e.rdev_major, e.rdev_minor),
                e.data,
            );
            assert_eq!(
                got,
                (name.as_bytes(), ino, mode, uid, gid, nlink, rdev, data),
                "{name}"
            );
            assert_eq!((e.mtime, e.dev_major, e.dev_minor), (1_000_000, 0, 0), "{name}");
        }
    }

    #[test]
    fn gnu_cpio_lists_and_unpacks_what_the_writer_builds() {
        require_root();
        let bytes = sample();
        let tmp = TempDir::new("gnu");
        let listed = gnu_cpio(&["-t", "--quiet"], &tmp.0, &bytes);
        let expected = ". etc etc/motd etc/motd.1 etc/motd.2 etc/link null sda pipe empty";
        assert_eq!(
            listed.lines().collect::<Vec<_>>(),
            expected.split(' ').collect::<Vec<_>>()
        );

        let root = tmp.0.join("root");
        fs::create_dir(&root).unwrap();
        gnu_cpio(&["-idm", "--quiet"], &root, &bytes);
        assert_eq!(mode_of(&root) & 0o7777, 0o755);
        assert_eq!(mode_of(&root.join("etc")), 0o40750);
        let motd = fs::metadata(root.join("etc/motd")).unwrap();
        assert_eq!(
            (motd.mode(), motd.nlink(), motd.uid(), motd.gid()),
            (0o100640, 3, 1000, 100)
        );
        assert_eq!(motd.mtime(), 1_000_000);
        for link in ["etc/motd", "etc/motd.1", "etc/motd.2"] {
            assert_eq!(fs::read(root.join(link)).unwrap(), b"hello\n", "{link}");
            assert_eq!(fs::metadata(root.join(link)).unwrap().ino(), motd.ino(), "{link}");
        }
        assert_eq!(fs::read_link(root.join("etc/link")).unwrap(), Path::new("motd"));
        let null = fs::symlink_metadata(root.join("null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(
            (
                nix::sys::stat::major(null.rdev()),
                nix::sys::stat::minor(null.rdev())
            ),
            (1, 3)
        );
        assert_eq!(null.mode() & 0o7777, 0o666);
        let sda = fs::symlink_metadata(root.join("sda")).unwrap();
        assert!(sda.file_type().is_block_device());
        assert_eq!(
            (
                nix::sys::stat::major(sda.rdev()),
                nix::sys::stat::minor(sda.rdev())
            ),
            (8, 0)
        );
        assert!(fs::symlink_metadata(root.join("pipe"))
            .unwrap()
            .file_type()
            .is_fifo());
        assert_eq!(mode_of(&root.join("pipe")) & 0o7777, 0o600);
        assert_eq!(mode_of(&root.join("empty")), 0o104755);
    }

    /// A tree with every kind of node, two hard links in different directories, and a
    /// name that sorts between a directory and its children ("bin-x").
    fn build_tree(root: &Path, reverse: bool) {
        let mut steps: Vec<Box<dyn Fn()>> = vec![
            Box::new(|| fs::create_dir(root.join("bin")).unwrap()),
            Box::new(|| fs::create_dir(root.join("dev")).unwrap()),
            Box::new(|| fs::create_dir(root.join("etc")).unwrap()),
            Box::new(|| fs::create_dir(root.join("usr")).unwrap()),
            Box::new(|| fs::write(root.join("bin-x"), "x").unwrap()),
            Box::new(|| fs::write(root.join("empty"), "").unwrap()),
        ];
        if reverse {
            steps.reverse();
        }
        steps.iter().for_each(|step| step());
        let mut steps: Vec<Box<dyn Fn()>> = vec![
            Box::new(|| fs::write(root.join("bin/tool"), "#!/bin/sh\n").unwrap()),
            Box::new(|| fs::write(root.join("etc/conf"), "a = 1\n").unwrap()),
            Box::new(|| symlink("../bin/tool", root.join("etc/link")).unwrap()),
            Box::new(|| {
                let (kind, perm) = (
                    nix::sys::stat::SFlag::S_IFCHR,
                    nix::sys::stat::Mode::from_bits_truncate(0o666),
                );
                nix::sys::stat::mknod(&root.join("dev/null"), kind, perm, nix::sys::stat::makedev(1, 3))
                    .unwrap();
            }),
            Box::new(|| {
                nix::unistd::mkfifo(
                    &root.join("dev/pipe"),
                    nix::sys::stat::Mode::from_bits_truncate(0o600),
                )
                .unwrap()
            }),
        ];
        if reverse {
            steps.reverse();
        }
        steps.iter().for_each(|step| step());
        fs::hard_link(root.join("bin/tool"), root.join("usr/tool")).unwrap();
        for (path, mode) in [
            ("", 0o755),
            ("bin", 0o755),
            ("dev", 0o755),
            ("etc", 0o700),
            ("usr", 0o755),
        ] {
            set_mode(&root.join(path), mode);
        }
        for (path, mode) in [
            ("bin/tool", 0o755),
            ("bin-x", 0o644),
            ("empty", 0o600),
            ("etc/conf", 0o640),
        ] {
            set_mode(&root.join(path), mode);
        }
        set_mode(&root.join("dev/null"), 0o666);
        set_mode(&root.join("dev/pipe"), 0o600);
        nix::unistd::chown(&root.join("etc/conf"), Some(1000.into()), Some(1000.into())).unwrap();
    }

    #[test]
    fn from_tree_keeps_kinds_modes_and_links_and_gnu_cpio_recreates_it() {
        require_root();
        let tmp = TempDir::new("tree");
        let src = tmp.0.join("src");
        fs::create_dir(&src).unwrap();
        build_tree(&src, false);
        let bytes = Writer::from_tree(&src, Vec::new(), 42).unwrap();
        let entries = read_entries(&bytes).unwrap();
        let expected = ". bin bin-x bin/tool dev dev/null dev/pipe empty etc etc/conf etc/link usr usr/tool";
        assert_eq!(names(&entries), expected.split(' ').collect::<Vec<_>>());
        let inos: Vec<u32> = entries.iter().map(|e| e.ino).collect();
        assert_eq!(
            inos,
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 4],
            "in order, links share"
        );
        assert!(entries.iter().all(|e| (e.uid, e.gid, e.mtime) == (0, 0, 42)));
        let (tool, usr_tool) = (find(&entries, "bin/tool"), find(&entries, "usr/tool"));
        assert_eq!(
            (tool.nlink, tool.data),
            (2, &b""[..]),
            "data only under the last name"
        );
        assert_eq!((usr_tool.nlink, usr_tool.data), (2, &b"#!/bin/sh\n"[..]));
        assert_eq!((tool.mode, find(&entries, "etc").mode), (0o100755, 0o40700));
        assert_eq!(find(&entries, "etc/link").data, b"../bin/tool");
        let null = find(&entries, "dev/null");
        assert_eq!((null.mode, null.rdev_major, null.rdev_minor), (0o20666, 1, 3));
        assert_eq!(find(&entries, "dev/pipe").mode, 0o10600);

        let mut kept = Writer::new(Vec::new(), 42);
        kept.add_tree(&src, Owners::Keep).unwrap();
        let kept = kept.finish().unwrap();
        let conf = find(&read_entries(&kept).unwrap(), "etc/conf").clone();
        assert_eq!((conf.uid, conf.gid), (1000, 1000));

        let out = tmp.0.join("out");
        fs::create_dir(&out).unwrap();
        gnu_cpio(&["-idm", "--quiet"], &out, &bytes);
        for entry in &entries {
            let name = OsStr::from_bytes(entry.name);
            let (a, b) = (
                fs::symlink_metadata(src.join(name)).unwrap(),
                fs::symlink_metadata(out.join(name)).unwrap(),
            );
            assert_eq!((a.mode(), a.rdev()), (b.mode(), b.rdev()), "{name:?}");
            if a.is_file() {
                assert_eq!(
                    fs::read(src.join(name)).unwrap(),
                    fs::read(out.join(name)).unwrap(),
                    "{name:?}"
                );
                assert_eq!(b.mtime(), 42, "{name:?}");
            }
        }
        assert_eq!(
            fs::read_link(out.join("etc/link")).unwrap(),
            Path::new("../bin/tool")
        );
        assert_eq!(
            fs::metadata(out.join("etc/conf")).unwrap().uid(),
            0,
            "owners forced to root"
        );
        let (tool, usr_tool) = (
            fs::metadata(out.join("bin/tool")).unwrap(),
            fs::metadata(out.join("usr/tool")).unwrap(),
        );
        assert_eq!((tool.ino(), tool.nlink()), (usr_tool.ino(), 2));
    }

    #[test]
    fn from_tree_is_reproducible() {
        require_root();
        let tmp = TempDir::new("repro");
        let (a, b) = (tmp.0.join("a"), tmp.0.join("b"));
        fs::create_dir(&a).unwrap();
        build_tree(&a, false);
        let first = Writer::from_tree(&a, Vec::new(), 7).unwrap();

        // Other timestamps, host inode numbers and creation (hence directory) order.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::create_dir(&b).unwrap();
        build_tree(&b, true);
        assert_eq!(Writer::from_tree(&b, Vec::new(), 7).unwrap(), first);

        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1234);
        File::options()
            .write(true)
            .open(a.join("bin/tool"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        fs::write(a.join("etc/scratch"), "").unwrap();
        fs::remove_file(a.join("etc/scratch")).unwrap();
        assert_eq!(Writer::from_tree(&a, Vec::new(), 7).unwrap(), first);

        assert_ne!(
            Writer::from_tree(&a, Vec::new(), 8).unwrap(),
            first,
            "the mtime is recorded"
        );
        set_mode(&a.join("etc/conf"), 0o644);
        assert_ne!(
            Writer::from_tree(&a, Vec::new(), 7).unwrap(),
            first,
            "so are modes"
        );
    }

    #[test]
    fn refuses_names_and_values_the_format_cannot_carry() {
        let mut w = Writer::new(Vec::new(), 0);
        let long = "x".repeat(PATH_MAX);
        let nul = Path::new(OsStr::from_bytes(b"etc/pass\0wd"));
        let cases: [(&Path, &str); 7] = [
            (Path::new("a/../etc"), "`..`"),
            (Path::new(".."), "`..`"),
            (Path::new("/../etc/shadow"), "`..`"),
            (nul, "NUL"),
            (Path::new(&long), "over PATH_MAX"),
            (Path::new(""), "empty name"),
            (Path::new("/TRAILER!!!"), "end of an archive"),
        ];
        for (path, problem) in cases {
            for err in [
                w.dir(path, 0o755),
                w.file(path, 0o644, b"x"),
                w.symlink(path, "t"),
                w.fifo(path, 0o600),
            ] {
                let msg = err.unwrap_err().to_string();
                assert!(
                    msg.contains(&format!("{path:?}")) && msg.contains(problem),
                    "{path:?}: {msg}"
                );
            }
        }
        w.dir(&long[1..], 0o755).unwrap(); // 4095 bytes and the NUL fit
        w.file("a/TRAILER!!!", 0o644, b"").unwrap();

        let refuse = |result: Result<(), CpioError>, path: &str, problem: &str| {
            let msg = result.unwrap_err().to_string();
            assert!(
                msg.contains(&format!("{path:?}")) && msg.contains(problem),
                "{path}: {msg}"
            );
        };
        w.dir("etc", 0o755).unwrap();
        refuse(w.dir("/etc/", 0o700), "/etc/", "already in the archive");
        refuse(w.dir("d", 0o40755), "d", "beyond the permissions");
        refuse(w.symlink("l", ""), "l", "target is empty");
        refuse(
            w.device("big", 0o600, DeviceKind::Block, 4096, 0),
            "big",
            "12-bit major",
        );
        refuse(
            w.device("big", 0o600, DeviceKind::Char, 0, 1 << 20),
            "big",
            "20-bit minor",
        );
        refuse(w.hardlink("h", "nowhere"), "h", "no such entry");
        refuse(
            w.hardlink("h", "etc"),
            "h",
            "not the regular file added just before",
        );
        w.file("f", 0o644, b"data").unwrap();
        w.fifo("p", 0o600).unwrap();
        refuse(
            w.hardlink("h", "f"),
            "h",
            "not the regular file added just before",
        );

        // Refusals leave the writer usable, and nothing refused made it into the archive.
        let bytes = w.finish().unwrap();
        let entries = read_entries(&bytes).unwrap();
        assert_eq!(names(&entries), [&long[1..], "a/TRAILER!!!", "etc", "f", "p"]);
    }

    #[test]
    fn refuses_files_over_4_gib() {
        let tmp = TempDir::new("big");
        File::create(tmp.0.join("big")).unwrap().set_len(1 << 32).unwrap(); // sparse
        let err = Writer::from_tree(&tmp.0, Vec::new(), 0).unwrap_err().to_string();
        assert!(err.contains("big") && err.contains("4294967296 bytes"), "{err}");
        File::create(tmp.0.join("big")).unwrap().set_len(10).unwrap();
        Writer::from_tree(&tmp.0, Vec::new(), 0).unwrap();
        let err = Writer::from_tree(&tmp.0.join("big"), Vec::new(), 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("big") && err.contains("directory"), "{err}");
    }

    #[test]
    fn reader_refuses_every_truncation() {
        let bytes = sample();
        let trailer = bytes.windows(10).position(|w| w == TRAILER).unwrap();
        let end = (trailer + 11).next_multiple_of(4);
        let all = read_entries(&bytes).unwrap();
        for cut in 0..bytes.len() {
            match read_entries(&bytes[..cut]) {
                Err(CpioError::Truncated { .. }) if cut < end => {}
                Ok(entries) if cut >= end => assert_eq!(entries, all),
                other => panic!("cut at {cut} of {}: {other:?}", bytes.len()),
            }
            // The iterator ends after its first error.
            let items: Vec<_> = Reader::new(&bytes[..cut]).take(100).collect();
            let errors = items.iter().filter(|item| item.is_err()).count();
            assert_eq!(
                (items.len(), errors),
                if cut < end {
                    (items.len(), 1)
                } else {
                    (all.len(), 0)
                }
            );
            assert!(items.last().unwrap().is_err() == (cut < end));
        }
        // Any single corrupted byte: an error or entries, never a panic.
        for at in 0..bytes.len() {
            for value in [0, b'0', b'F', b'/', 0xff] {
                let mut copy = bytes.clone();
                copy[at] = value;
                let _ = read_entries(&copy);
            }
        }
    }

    #[test]
    fn reader_refuses_bad_magic_hex_sizes_and_padding() {
        let bytes = sample();
        let patched = |at: usize, with: &[u8]| {
            let mut copy = bytes.clone();
            copy[at..at + with.len()].copy_from_slice(with);
            read_entries(&copy).unwrap_err().to_string()
        };
        // Fields of the first header ("."): mode at 14, filesize at 54, namesize at 94.
        let etc_name = bytes.windows(4).position(|w| w == b"etc\0").unwrap();
        for (at, with, problem) in [
            (0, &b"070702"[..], "bad magic"),
            (0, b"\0\0\0\0\0\0", "bad magic"),
            (14, b"000041g0", "c_mode is not 8 hex digits"),
            (54, b"+0000001", "c_filesize is not 8 hex digits"),
            (94, b"00000000", "name size 0"),
            (94, b"FFFFFFFF", "name size 4294967295"),
            (94, b"00000001", "NUL terminator"),
            (etc_name + 4, b"x", "padding is not zeros"),
            (54, b"00000004", "(mode 0o40755, 4 bytes): data on a node"),
            (14, b"0000F1ED", "unknown file type"),
            (bytes.len() - 1, b"x", "after the trailer"),
        ] {
            let msg = patched(at, with);
            assert!(msg.contains(problem), "{at}: {msg}");
        }
        // A file's size far beyond the input: an error, no allocation.
        let etc_motd_2 = bytes.windows(10).position(|w| w == b"etc/motd.2").unwrap() - 110;
        assert!(patched(etc_motd_2 + 54, b"FFFFFFFF").contains("the data needs 4294967295 bytes"));
        assert!(matches!(
            read_entries(b""),
            Err(CpioError::Truncated { offset: 0, .. })
        ));

        // The padding after the trailer is not data, and a second archive may follow.
        let mut two = bytes.clone();
        two.extend_from_slice(&bytes);
        let mut reader = Reader::new(&two);
        assert_eq!(reader.by_ref().count(), 10);
        let rest = reader.remainder();
        assert!(rest.len() > bytes.len() && rest[..rest.len() - bytes.len()].iter().all(|&b| b == 0));
        assert_eq!(read_entries(&rest[rest.len() - bytes.len()..]).unwrap().len(), 10);
    }
}
