//! OCI image layouts (the directory format `skopeo copy … oci:DIR:TAG` and `umoci` write):
//! find an image by reference, verify every blob against its digest, read the image config
//! and unpack the layers into a rootfs.
//!
//! Nothing in a layout is trusted: a blob is checked against its digest and size before it is
//! used, digests are the only thing that become blob paths (so they are validated strictly),
//! and a layer can never create, change or remove anything outside the rootfs, whatever paths,
//! hard links and symlinks it contains.
//!
//! # Reference matching
//!
//! An image is found through the `org.opencontainers.image.ref.name` annotation of the
//! entries in a store's `index.json`. Skopeo writes only the tag there (`3.19` for
//! `oci:DIR:3.19`), other tools a full reference, so a reference and an annotation are compared
//! loosely, in tiers:
//!
//! 1. Both are first canonicalised: a leading `docker.io/` or `index.docker.io/` is dropped,
//!    then a leading `library/` (so `docker.io/library/alpine:3.19` is `alpine:3.19`).
//! 2. Exact: the canonical forms are equal.
//! 3. Suffix, only when no entry of the store matched exactly: the shorter canonical form is a
//!    tail of the longer one, starting right after a `/` (`alpine:3.19` and
//!    `ghcr.io/x/alpine:3.19`), or it is a bare tag (no `/`, no `:`) starting right after the
//!    longer one's `:` (`3.19` and `alpine:3.19`). There is no implied `:latest`.
//!
//! A reference containing `@` (`name@sha256:…`), or that is itself a digest, matches the entry
//! with that digest instead; the name part is not checked.
//!
//! Stores are searched in order and the first store with a match wins. Within a store, the
//! best tier must name exactly one digest (entries repeating the same digest are fine);
//! otherwise the reference is ambiguous and the error lists the candidates.
//!
//! An entry may be an image index (multi-platform): its first `linux/amd64` manifest is taken
//! (the variant is ignored, as the image spec says the first match should be used).

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fmt::{self, Write as _};
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, BufRead, BufReader, Read, Seek};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const OS: &str = "linux";
const ARCH: &str = "amd64";
/// index.json, manifests and configs are read whole; real ones are kilobytes.
const MAX_JSON: u64 = 16 << 20;
/// Image indexes pointing at image indexes: allowed, but not without end.
const MAX_NESTING: usize = 4;
/// Symlinks followed while resolving one path inside the rootfs (the kernel's ELOOP limit).
const MAX_SYMLINKS: usize = 40;

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
const CONFIG_TYPES: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error("{path}: invalid digest {digest:?} (only sha256:<64 lowercase hex> is accepted)")]
    BadDigest { path: PathBuf, digest: String },
    #[error("{path}: blob is {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{path}: blob content is {actual}, its descriptor says {expected}")]
    DigestMismatch {
        path: PathBuf,
        expected: Digest,
        actual: Digest,
    },
    #[error("invalid image reference {reference:?}: {msg}")]
    Reference { reference: String, msg: String },
    #[error(
        "image {reference:?} not found; searched {} (names there: {})",
        join(.stores.iter().map(|p| p.display())),
        join(.names)
    )]
    NotFound {
        reference: String,
        stores: Vec<PathBuf>,
        names: Vec<String>,
    },
    #[error(
        "image {reference:?} is ambiguous in {store}: {}",
        join(.candidates.iter().map(|(n, d)| format!("{n} = {d}")))
    )]
    Ambiguous {
        reference: String,
        store: PathBuf,
        /// (annotation, digest) of every matching entry.
        candidates: Vec<(String, Digest)>,
    },
    #[error("{path}: no linux/amd64 image in this index (it has: {})", join(.available))]
    NoPlatform { path: PathBuf, available: Vec<String> },
    #[error("layer {layer}: {msg}")]
    Layer { layer: Digest, msg: String },
    #[error("layer {layer}: entry {entry:?}: {msg}")]
    Entry {
        layer: Digest,
        entry: String,
        msg: String,
    },
}

type Result<T, E = OciError> = std::result::Result<T, E>;

fn join<T: fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let v: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn invalid(path: &Path, msg: impl Into<String>) -> OciError {
    OciError::Invalid {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> OciError + '_ {
    move |source| OciError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A `sha256:<64 lowercase hex>` digest. Nothing else is accepted, so turning one into a
/// blob path can never traverse anywhere.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Option<Digest> {
        let hex = s.strip_prefix("sha256:")?;
        let ok = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| Digest(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn hex(&self) -> &str {
        self.0.strip_prefix("sha256:").unwrap_or(&self.0)
    }

    fn of(hasher: Sha256) -> Digest {
        let mut s = String::from("sha256:");
        for b in hasher.finalize() {
            let _ = write!(s, "{b:02x}");
        }
        Digest(s)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The parts of an image config keel uses; the bundle manifest may override each. Empty
/// strings are `None`, as the image spec treats them as unset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// Labels; a null `Labels` (as some tools write) is none.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<std::collections::BTreeMap<String, String>, D::Error> {
    Ok(Option::deserialize(d)?.unwrap_or_default())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// One layer of a resolved image, to be applied in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    pub digest: Digest,
    pub size: u64,
    pub compression: Compression,
}

/// An image found in a store: its manifest has been read and verified, its layers have not.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub store: Store,
    /// The reference as asked for.
    pub reference: String,
    /// The annotation (or digest) of the index.json entry that matched.
    pub name: String,
    /// The image manifest (the linux/amd64 one when reached through an index).
    pub manifest: Digest,
    /// The config blob: the image ID, in Docker's words.
    pub config_digest: Digest,
    pub config: ImageConfig,
    pub layers: Vec<Layer>,
}

/// Totals for progress output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnpackStats {
    pub layers: usize,
    /// Archive entries processed, whiteouts included.
    pub entries: u64,
    /// Regular-file content written.
    pub bytes: u64,
    /// Entries whose extended attributes were not kept (a newc initrd cannot carry them),
    /// and the first of them with its attribute names.
    pub xattr_entries: u64,
    pub first_xattr: Option<(String, String)>,
}

#[derive(Deserialize)]
struct IndexJson {
    #[serde(default)]
    manifests: Vec<DescJson>,
}

#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescJson {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: Option<HashMap<String, String>>,
    #[serde(default)]
    platform: Option<PlatformJson>,
}

#[derive(Clone, Deserialize)]
struct PlatformJson {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Deserialize)]
struct ManifestJson {
    config: DescJson,
    #[serde(default)]
    layers: Vec<DescJson>,
}

#[derive(Deserialize)]
struct ConfigJson {
    architecture: Option<String>,
    os: Option<String>,
    config: Option<ImageConfig>,
}

impl DescJson {
    fn digest(&self, within: &Path) -> Result<Digest> {
        Digest::parse(&self.digest).ok_or_else(|| OciError::BadDigest {
            path: within.to_path_buf(),
            digest: self.digest.clone(),
        })
    }

    fn ref_name(&self) -> Option<&str> {
        let name = self.annotations.as_ref()?.get(REF_NAME)?;
        (!name.is_empty()).then_some(name.as_str())
    }
}

fn parse_json<T: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| invalid(path, format!("malformed JSON: {e}")))
}

/// One OCI image layout directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Checks that `root` is an image layout (its `oci-layout` file says version 1.0.0).
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Layout {
            image_layout_version: String,
        }
        let root = root.into();
        let path = root.join("oci-layout");
        let layout: Layout = parse_json(&path, &read_small(&path)?)?;
        if layout.image_layout_version != "1.0.0" {
            let v = layout.image_layout_version;
            return Err(invalid(&path, format!("layout version {v:?}, not 1.0.0")));
        }
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// A blob opened, its size and digest checked, and rewound: content is only used once
    /// it is known to be the right one.
    fn open_blob(&self, digest: &Digest, size: u64) -> Result<(PathBuf, File)> {
        let path = self.blob_path(digest);
        let mut file = File::open(&path).map_err(io_err(&path))?;
        let actual = file.metadata().map_err(io_err(&path))?.len();
        if actual != size {
            return Err(OciError::SizeMismatch {
                path,
                expected: size,
                actual,
            });
        }
        let mut hasher = Sha256::new();
        io::copy(&mut file, &mut hasher).map_err(io_err(&path))?;
        let actual = Digest::of(hasher);
        if &actual != digest {
            return Err(OciError::DigestMismatch {
                path,
                expected: digest.clone(),
                actual,
            });
        }
        file.rewind().map_err(io_err(&path))?;
        Ok((path, file))
    }

    fn read_json<T: DeserializeOwned>(&self, digest: &Digest, size: u64) -> Result<(PathBuf, T)> {
        if size > MAX_JSON {
            let msg = format!("{size} bytes is too large for a manifest or config");
            return Err(invalid(&self.blob_path(digest), msg));
        }
        let (path, file) = self.open_blob(digest, size)?;
        let mut bytes = Vec::new();
        file.take(size).read_to_end(&mut bytes).map_err(io_err(&path))?;
        let value = parse_json(&path, &bytes)?;
        Ok((path, value))
    }

    /// Follows an index.json entry through image indexes to the image it stands for.
    fn load(&self, entry: &DescJson, reference: &str, name: &str) -> Result<Resolved> {
        let mut desc = entry.clone();
        let mut within = self.root.join("index.json");
        for _ in 0..MAX_NESTING {
            let digest = desc.digest(&within)?;
            let mt = desc.media_type.as_str();
            if MANIFEST_TYPES.contains(&mt) {
                return self.image(digest, desc.size, reference, name);
            }
            if !INDEX_TYPES.contains(&mt) {
                let msg = format!("{digest} has media type {mt:?}, not an image manifest or index");
                return Err(invalid(&within, msg));
            }
            let (path, index): (_, IndexJson) = self.read_json(&digest, desc.size)?;
            let pick = index.manifests.iter().find(|m| {
                m.platform
                    .as_ref()
                    .is_some_and(|p| p.os == OS && p.architecture == ARCH)
            });
            match pick {
                Some(m) => desc = m.clone(),
                None => {
                    let available = index
                        .manifests
                        .iter()
                        .filter_map(|m| m.platform.as_ref())
                        .map(|p| format!("{}/{}", p.os, p.architecture))
                        .collect();
                    return Err(OciError::NoPlatform { path, available });
                }
            }
            within = path;
        }
        Err(invalid(
            &within,
            format!("image indexes nested over {MAX_NESTING} deep"),
        ))
    }

    fn image(&self, manifest: Digest, size: u64, reference: &str, name: &str) -> Result<Resolved> {
        let (path, m): (_, ManifestJson) = self.read_json(&manifest, size)?;
        if !CONFIG_TYPES.contains(&m.config.media_type.as_str()) {
            return Err(invalid(
                &path,
                format!(
                    "config media type {:?} is not a container image config",
                    m.config.media_type
                ),
            ));
        }
        let config_digest = m.config.digest(&path)?;
        let (cpath, c): (_, ConfigJson) = self.read_json(&config_digest, m.config.size)?;
        let (os, arch) = (c.os.as_deref(), c.architecture.as_deref());
        if os.is_some_and(|os| os != OS) || arch.is_some_and(|a| a != ARCH) {
            let (os, arch) = (os.unwrap_or("?"), arch.unwrap_or("?"));
            return Err(invalid(
                &cpath,
                format!("image is for {os}/{arch}, not {OS}/{ARCH}"),
            ));
        }
        let mut config = c.config.unwrap_or_default();
        config.working_dir = config.working_dir.filter(|s| !s.is_empty());
        config.user = config.user.filter(|s| !s.is_empty());
        let mut layers = Vec::with_capacity(m.layers.len());
        for l in &m.layers {
            let digest = l.digest(&path)?;
            let compression = layer_compression(&l.media_type).ok_or_else(|| {
                let msg = format!("layer {digest}: unsupported media type {:?}", l.media_type);
                invalid(&path, msg)
            })?;
            layers.push(Layer {
                digest,
                size: l.size,
                compression,
            });
        }
        Ok(Resolved {
            store: self.clone(),
            reference: reference.to_owned(),
            name: name.to_owned(),
            manifest,
            config_digest,
            config,
            layers,
        })
    }
}

fn read_small(path: &Path) -> Result<Vec<u8>> {
    let file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    if len > MAX_JSON {
        return Err(invalid(path, format!("{len} bytes is too large")));
    }
    let mut bytes = Vec::new();
    file.take(MAX_JSON)
        .read_to_end(&mut bytes)
        .map_err(io_err(path))?;
    Ok(bytes)
}

/// The OCI layer types (including the deprecated non-distributable ones, which are the same
/// format) and Docker's.
fn layer_compression(media_type: &str) -> Option<Compression> {
    let prefixes = [
        "application/vnd.oci.image.layer.v1.",
        "application/vnd.oci.image.layer.nondistributable.v1.",
        "application/vnd.docker.image.rootfs.diff.",
        "application/vnd.docker.image.rootfs.foreign.diff.",
    ];
    match prefixes.iter().find_map(|p| media_type.strip_prefix(p))? {
        "tar" => Some(Compression::None),
        "tar+gzip" | "tar.gzip" => Some(Compression::Gzip),
        "tar+zstd" | "tar.zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

/// What a reference asks for.
enum Wanted {
    Name(String),
    Digest(Digest),
}

impl Wanted {
    fn parse(reference: &str) -> Result<Wanted> {
        let bad = |msg: &str| OciError::Reference {
            reference: reference.to_owned(),
            msg: msg.to_owned(),
        };
        if reference.is_empty() {
            return Err(bad("empty"));
        }
        if let Some((_, digest)) = reference.rsplit_once('@') {
            return Digest::parse(digest)
                .map(Wanted::Digest)
                .ok_or_else(|| bad("the part after @ is not sha256:<64 lowercase hex>"));
        }
        Ok(match Digest::parse(reference) {
            Some(d) => Wanted::Digest(d),
            None => Wanted::Name(canonical(reference).to_owned()),
        })
    }

    /// 0 for an exact match, 1 for a suffix match (see the module docs).
    fn tier(&self, entry: &DescJson) -> Option<u8> {
        match self {
            Wanted::Digest(d) => (entry.digest == d.as_str()).then_some(0),
            Wanted::Name(want) => {
                let have = canonical(entry.ref_name()?);
                if have == want {
                    Some(0)
                } else {
                    suffix_match(have, want).then_some(1)
                }
            }
        }
    }
}

fn canonical(name: &str) -> &str {
    let name = ["docker.io/", "index.docker.io/"]
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name);
    name.strip_prefix("library/").unwrap_or(name)
}

fn suffix_match(a: &str, b: &str) -> bool {
    let (short, long) = if a.len() < b.len() { (a, b) } else { (b, a) };
    match long.strip_suffix(short) {
        Some(head) if !short.is_empty() => {
            head.ends_with('/') || (head.ends_with(':') && !short.contains(['/', ':']))
        }
        _ => false,
    }
}

/// Finds `reference` in the stores, in order (see the module docs for the rules), and reads
/// and verifies its manifest and config.
pub fn resolve(stores: &[Store], reference: &str) -> Result<Resolved> {
    let wanted = Wanted::parse(reference)?;
    let mut names = Vec::new();
    for store in stores {
        let path = store.root.join("index.json");
        let index: IndexJson = parse_json(&path, &read_small(&path)?)?;
        let tiers: Vec<(u8, &DescJson)> = index
            .manifests
            .iter()
            .filter_map(|m| wanted.tier(m).map(|t| (t, m)))
            .collect();
        names.extend(
            index
                .manifests
                .iter()
                .filter_map(|m| m.ref_name().map(String::from)),
        );
        let Some(best) = tiers.iter().map(|(t, _)| *t).min() else {
            continue;
        };
        let matches: Vec<&DescJson> = tiers
            .iter()
            .filter(|(t, _)| *t == best)
            .map(|(_, m)| *m)
            .collect();
        let Some(first) = matches.first() else {
            continue;
        };
        if matches.iter().any(|m| m.digest != first.digest) {
            let mut candidates = Vec::new();
            for m in &matches {
                let name = m.ref_name().unwrap_or_default().to_owned();
                candidates.push((name, m.digest(&path)?));
            }
            return Err(OciError::Ambiguous {
                reference: reference.to_owned(),
                store: store.root.clone(),
                candidates,
            });
        }
        let name = first.ref_name().unwrap_or(&first.digest);
        return store.load(first, reference, name);
    }
    names.sort();
    names.dedup();
    Err(OciError::NotFound {
        reference: reference.to_owned(),
        stores: stores.iter().map(|s| s.root.clone()).collect(),
        names,
    })
}

/// Applies the image's layers to `rootfs` (created if missing), in order. Each layer blob is
/// verified whole before any of it is unpacked.
pub fn unpack(resolved: &Resolved, rootfs: &Path) -> Result<UnpackStats> {
    unpack_observed(resolved, rootfs, |_| {})
}

/// [`unpack`], calling `layer_done` with the running totals after each layer (for progress).
pub fn unpack_observed(
    resolved: &Resolved,
    rootfs: &Path,
    mut layer_done: impl FnMut(&UnpackStats),
) -> Result<UnpackStats> {
    fs::create_dir_all(rootfs).map_err(io_err(rootfs))?;
    let mut stats = UnpackStats::default();
    for layer in &resolved.layers {
        let (_, file) = resolved.store.open_blob(&layer.digest, layer.size)?;
        let lerr = |msg: String| OciError::Layer {
            layer: layer.digest.clone(),
            msg,
        };
        let reader = BufReader::with_capacity(1 << 16, file);
        let tar: Box<dyn Read> = match layer.compression {
            Compression::None => Box::new(reader),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
            Compression::Zstd => Box::new(Zstd::new(reader).map_err(|e| lerr(format!("zstd: {e}")))?),
        };
        let mut archive = tar::Archive::new(tar);
        let mut applier = Applier {
            root: rootfs,
            written: HashSet::new(),
            stats: &mut stats,
        };
        let entries = archive.entries().map_err(|e| lerr(e.to_string()))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| lerr(format!("reading the archive: {e}")))?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            applier.apply(&mut entry).map_err(|msg| OciError::Entry {
                layer: layer.digest.clone(),
                entry: name,
                msg,
            })?;
        }
        stats.layers += 1;
        layer_done(&stats);
    }
    Ok(stats)
}

/// Applies one layer's entries. Paths are kept relative to the rootfs and resolved by
/// `resolve_dir`, so no path operation starts outside it.
struct Applier<'a> {
    root: &'a Path,
    /// Real paths (relative) this layer created, with their ancestors: whiteouts and opaque
    /// directories act on lower layers only.
    written: HashSet<PathBuf>,
    stats: &'a mut UnpackStats,
}

fn ctx(what: &'static str) -> impl FnOnce(io::Error) -> String {
    move |e| format!("{what}: {e}")
}

impl Applier<'_> {
    /// Extended attributes (file capabilities, SELinux labels) come as pax records; the
    /// initrd keel writes has no place for them, so they are counted for a warning rather
    /// than dropped unsaid.
    fn note_xattrs<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) {
        let Ok(Some(exts)) = entry.pax_extensions() else {
            return;
        };
        let names: Vec<String> = exts
            .filter_map(|e| e.ok()?.key().ok().map(str::to_owned))
            .filter_map(|k| {
                k.strip_prefix("SCHILY.xattr.")
                    .or_else(|| k.strip_prefix("LIBARCHIVE.xattr."))
                    .map(str::to_owned)
            })
            .collect();
        if names.is_empty() {
            return;
        }
        self.stats.xattr_entries += 1;
        if self.stats.first_xattr.is_none() {
            let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            self.stats.first_xattr = Some((path, names.join(", ")));
        }
    }

    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), String> {
        use tar::EntryType as T;
        let hdr = entry.header();
        let kind = hdr.entry_type();
        if matches!(
            kind,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            return Ok(());
        }
        self.stats.entries += 1;
        self.note_xattrs(entry);
        let hdr = entry.header();
        let mode = hdr.mode().map_err(ctx("mode"))? & 0o7777;
        let id = |v: io::Result<u64>| -> Result<u32, String> {
            let v = v.map_err(ctx("owner"))?;
            u32::try_from(v).map_err(|_| format!("owner id {v} is too large"))
        };
        let (uid, gid) = (id(hdr.uid())?, id(hdr.gid())?);
        let dev = match (kind, hdr.device_major(), hdr.device_minor()) {
            (T::Char | T::Block, Ok(Some(ma)), Ok(Some(mi))) => makedev(ma.into(), mi.into()),
            (T::Char | T::Block, ..) => return Err("device without valid major/minor numbers".into()),
            _ => 0,
        };
        let path = entry.path().map_err(ctx("path"))?.into_owned();
        let comps = components(&path)?;
        let Some((last, parent)) = comps.split_last() else {
            if !kind.is_dir() {
                return Err("names the root but is not a directory".into());
            }
            return owner_mode(self.root, uid, gid, mode);
        };
        if let Some(hidden) = last.as_bytes().strip_prefix(b".wh.") {
            return self.whiteout(parent, hidden);
        }
        let link = match kind {
            T::Link => Some(self.link_target(entry)?),
            _ => None,
        };
        let rel = resolve_dir(self.root, parent, true)?
            .unwrap_or_default()
            .join(last);
        let full = self.root.join(&rel);
        if link.as_ref() == Some(&rel) {
            return Ok(()); // a hard link to itself
        }
        let is_dir = match fs::symlink_metadata(&full) {
            Ok(m) if m.is_dir() && kind.is_dir() => true,
            Ok(_) => remove(&full).map_err(ctx("replacing")).map(|()| false)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(format!("inspecting: {e}")),
        };
        match kind {
            T::Regular | T::Continuous => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&full)
                    .map_err(ctx("create"))?;
                self.stats.bytes += io::copy(entry, &mut f).map_err(ctx("write"))?;
                std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(ctx("chown"))?;
                f.set_permissions(Permissions::from_mode(mode))
                    .map_err(ctx("chmod"))?;
            }
            T::Directory => {
                if !is_dir {
                    fs::create_dir(&full).map_err(ctx("mkdir"))?;
                }
                owner_mode(&full, uid, gid, mode)?;
            }
            T::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(ctx("symlink target"))?
                    .ok_or("symlink without a target")?;
                std::os::unix::fs::symlink(&target, &full).map_err(ctx("symlink"))?;
                std::os::unix::fs::lchown(&full, Some(uid), Some(gid)).map_err(ctx("chown"))?;
            }
            T::Link => {
                let target = self.root.join(link.unwrap_or_default());
                fs::hard_link(target, &full).map_err(ctx("link"))?;
            }
            T::Char | T::Block | T::Fifo => {
                let flag = match kind {
                    T::Char => SFlag::S_IFCHR,
                    T::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let perm = Mode::from_bits_truncate(mode as libc::mode_t);
                mknod(&full, flag, perm, dev).map_err(|e| format!("mknod: {e}"))?;
                owner_mode(&full, uid, gid, mode)?;
            }
            other => return Err(format!("unsupported entry type {other:?}")),
        }
        for a in rel.ancestors() {
            if a.as_os_str().is_empty() || !self.written.insert(a.to_path_buf()) {
                break;
            }
        }
        Ok(())
    }

    /// `.wh.NAME` removes NAME from lower layers; `.wh..wh..opq` empties the directory of
    /// what lower layers put there; other `.wh..wh.` names are aufs bookkeeping.
    fn whiteout(&mut self, parent: &[OsString], hidden: &[u8]) -> Result<(), String> {
        let opaque = hidden == b".wh..opq";
        if !opaque && hidden.starts_with(b".wh.") {
            return Ok(());
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err("invalid whiteout name".into());
        }
        let Some(dir) = resolve_dir(self.root, parent, false)? else {
            return Ok(()); // nothing below to hide
        };
        if opaque {
            return self.clear(&dir).map_err(ctx("opaque directory"));
        }
        let rel = dir.join(OsStr::from_bytes(hidden));
        if self.written.contains(&rel) {
            return Ok(());
        }
        remove(&self.root.join(rel)).map_err(ctx("whiteout"))
    }

    /// Removes everything under `dir` that this layer did not write.
    fn clear(&self, dir: &Path) -> io::Result<()> {
        for e in fs::read_dir(self.root.join(dir))? {
            let e = e?;
            let rel = dir.join(e.file_name());
            if !self.written.contains(&rel) {
                remove(&self.root.join(&rel))?;
            } else if e.file_type()?.is_dir() {
                self.clear(&rel)?;
            }
        }
        Ok(())
    }

    /// The existing non-directory a hard link entry points at, relative to the rootfs.
    fn link_target<R: Read>(&self, entry: &tar::Entry<'_, R>) -> Result<PathBuf, String> {
        let target = entry
            .link_name()
            .map_err(ctx("link target"))?
            .ok_or("hard link without a target")?;
        let shown = target.display();
        let comps = components(&target).map_err(|e| format!("link target {shown}: {e}"))?;
        let missing = || format!("link target {shown} does not exist");
        let (last, parent) = comps.split_last().ok_or("hard link to the root")?;
        let rel = resolve_dir(self.root, parent, false)?
            .ok_or_else(missing)?
            .join(last);
        match fs::symlink_metadata(self.root.join(&rel)) {
            Ok(m) if m.is_dir() => Err(format!("link target {shown} is a directory")),
            Ok(_) => Ok(rel),
            Err(_) => Err(missing()),
        }
    }
}

/// A tar path as components: `.` dropped; `..` and absolute paths refused, as a layer has no
/// business naming anything outside its root.
fn components(path: &Path) -> Result<Vec<OsString>, String> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => return Err("path has a `..` component".into()),
            Component::RootDir | Component::Prefix(_) => return Err("path is absolute".into()),
        }
    }
    Ok(out)
}

/// The real directory, relative to `root`, that `comps` names when `root` is seen as `/`.
/// Symlinks already in the rootfs are followed (containerd does the same; Docker unpacks in a
/// chroot), but never out of it: an absolute target starts again at `root` and `..` stops
/// there. Every component is inspected with lstat, so no symlink is followed by the kernel.
/// Missing directories are created (0755, root's) when `create`, else the answer is None.
fn resolve_dir(root: &Path, comps: &[OsString], create: bool) -> Result<Option<PathBuf>, String> {
    let mut real = PathBuf::new();
    let mut todo: Vec<OsString> = comps.iter().rev().cloned().collect();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            real.pop();
            continue;
        }
        let next = real.join(&c);
        let full = root.join(&next);
        match fs::symlink_metadata(&full) {
            Ok(m) if m.is_dir() => real = next,
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err("too many levels of symlinks".into());
                }
                let target = fs::read_link(&full).map_err(ctx("readlink"))?;
                if target.has_root() {
                    real = PathBuf::new();
                }
                for tc in target.components().rev() {
                    match tc {
                        Component::Normal(n) => todo.push(n.to_os_string()),
                        Component::ParentDir => todo.push("..".into()),
                        _ => {}
                    }
                }
            }
            Ok(_) => return Err(format!("{} is not a directory", next.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::create_dir(&full).map_err(ctx("mkdir"))?;
                fs::set_permissions(&full, Permissions::from_mode(0o755)).map_err(ctx("chmod"))?;
                real = next;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", next.display())),
        }
    }
    Ok(Some(real))
}

/// Owner before mode: chown clears the set-id bits.
fn owner_mode(path: &Path, uid: u32, gid: u32, mode: u32) -> Result<(), String> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(ctx("chown"))?;
    fs::set_permissions(path, Permissions::from_mode(mode)).map_err(ctx("chmod"))
}

/// Removes whatever is at `path` without following it.
fn remove(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A zstd stream through ruzstd, across concatenated and skippable frames (which `zstd`,
/// `pzstd` and seekable-zstd writers produce). Content checksums are not checked: the
/// compressed blob's sha256 already was.
struct Zstd<R: BufRead> {
    src: R,
    dec: FrameDecoder,
    done: bool,
}

impl<R: BufRead> Zstd<R> {
    fn new(src: R) -> io::Result<Self> {
        let mut z = Zstd {
            src,
            dec: FrameDecoder::new(),
            done: false,
        };
        z.done = !z.next_frame()?;
        Ok(z)
    }

    /// Starts the next frame; false at the end of the stream.
    fn next_frame(&mut self) -> io::Result<bool> {
        loop {
            if self.src.fill_buf()?.is_empty() {
                return Ok(false);
            }
            match self.dec.reset(&mut self.src) {
                Ok(()) => return Ok(true),
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    let want = u64::from(length);
                    let skipped = io::copy(&mut (&mut self.src).take(want), &mut io::sink())?;
                    if skipped != want {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                Err(e) => return Err(io::Error::other(e)),
            }
        }
    }
}

impl<R: BufRead> Read for Zstd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while !self.done && !buf.is_empty() {
            while self.dec.can_collect() < buf.len() && !self.dec.is_finished() {
                let more = buf.len() - self.dec.can_collect();
                self.dec
                    .decode_blocks(&mut self.src, BlockDecodingStrategy::UptoBytes(more))
                    .map_err(io::Error::other)?;
            }
            let n = self.dec.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            self.done = !self.next_frame()?;
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::sync::atomic::{AtomicU32, Ordering};

    const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    const TGZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    const TZST: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    const DOCKER_TGZ: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

    /// `zst/` and `zst/hello.txt` ("hello from zstd\n"), made with GNU tar and the `zstd` tool
    /// as two frames (the archive split after its first 1024 bytes), content checksums on.
    const ZSTD_LAYER: [u8; 136] = [
        0x28, 0xb5, 0x2f, 0xfd, 0x64, 0x00, 0x03, 0xa5, 0x02, 0x00, 0x52, 0x83, 0x0b, 0x11, 0xb0, 0xeb, 0x67,
        0x14, 0x02, 0x52, 0x76, 0x98, 0x00, 0x91, 0xbd, 0x55, 0xe8, 0x6b, 0x20, 0x4c, 0x01, 0x07, 0x46, 0x55,
        0x1c, 0x84, 0xe8, 0xba, 0x0d, 0x2a, 0xa5, 0x83, 0xc4, 0xb2, 0xe7, 0xdf, 0xcb, 0x2c, 0x6b, 0x4e, 0xe0,
        0x1c, 0x3f, 0xde, 0x99, 0xe5, 0x16, 0xcb, 0x5e, 0x0d, 0x20, 0x30, 0x2d, 0x30, 0x32, 0x0e, 0x60, 0xaa,
        0x41, 0x2e, 0xd8, 0x03, 0x0e, 0x38, 0x3d, 0x49, 0x54, 0x80, 0xcf, 0x60, 0x4a, 0x07, 0xf4, 0xf4, 0x8e,
        0x0f, 0x1c, 0x70, 0x50, 0x00, 0xe3, 0xc9, 0xbd, 0x01, 0x95, 0xa9, 0x01, 0x4d, 0x28, 0xb5, 0x2f, 0xfd,
        0x64, 0x00, 0x05, 0xc5, 0x00, 0x00, 0x88, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x20, 0x66, 0x72, 0x6f, 0x6d,
        0x20, 0x7a, 0x73, 0x74, 0x64, 0x0a, 0x00, 0x01, 0x00, 0xd9, 0xfb, 0xc1, 0x12, 0x07, 0x31, 0xc2, 0x86,
    ];

    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::SeqCst);
            let d = std::env::temp_dir().join(format!("keel-oci-{name}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&d);
            fs::create_dir_all(&d).unwrap();
            Scratch(d)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn require_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "unpacking preserves owners and makes device nodes: run the tests as root"
        );
    }

    fn sha(bytes: &[u8]) -> String {
        let mut h = Sha256::new();
        h.update(bytes);
        Digest::of(h).0
    }

    /// Writes an image layout the way skopeo does.
    struct Layout(PathBuf);

    impl Layout {
        fn new(root: PathBuf) -> Layout {
            fs::create_dir_all(root.join("blobs/sha256")).unwrap();
            fs::write(root.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
            fs::write(root.join("index.json"), r#"{"schemaVersion":2,"manifests":[]}"#).unwrap();
            Layout(root)
        }

        fn blob(&self, media_type: &str, bytes: &[u8]) -> Value {
            let d = sha(bytes);
            fs::write(self.0.join("blobs/sha256").join(&d[7..]), bytes).unwrap();
            json!({"mediaType": media_type, "digest": d, "size": bytes.len()})
        }

        fn image(&self, layers: &[(&str, Vec<u8>)]) -> Value {
            self.image_with(config_json("amd64"), layers)
        }

        fn image_with(&self, config: Value, layers: &[(&str, Vec<u8>)]) -> Value {
            let config = self.blob(CONFIG_TYPES[0], config.to_string().as_bytes());
            let layers: Vec<Value> = layers.iter().map(|(t, b)| self.blob(t, b)).collect();
            let m = json!({"schemaVersion": 2, "mediaType": MANIFEST_TYPES[0],
                           "config": config, "layers": layers});
            self.blob(MANIFEST_TYPES[0], m.to_string().as_bytes())
        }

        fn index(&self, entries: &[Value]) {
            let index = json!({"schemaVersion": 2, "manifests": entries});
            fs::write(self.0.join("index.json"), index.to_string()).unwrap();
        }

        fn store(&self) -> Store {
            Store::open(&self.0).unwrap()
        }
    }

    #[test]
    fn labels_are_read_and_a_null_is_none() {
        let tmp = Scratch::new("labels");
        let l = Layout::new(tmp.0.clone());
        let mut with = config_json("amd64");
        with["config"]["Labels"] = json!({"org.mobyproject.config": "{\"net\":\"host\"}"});
        let mut null = config_json("amd64");
        null["config"]["Labels"] = Value::Null;
        let a = l.image_with(with, &[]);
        let b = l.image_with(null, &[]);
        l.index(&[named(&a, "a:1"), named(&b, "b:1")]);
        let stores = [l.store()];
        let got = resolve(&stores, "a:1").unwrap();
        assert_eq!(
            got.config
                .labels
                .get("org.mobyproject.config")
                .map(String::as_str),
            Some(r#"{"net":"host"}"#)
        );
        assert!(resolve(&stores, "b:1").unwrap().config.labels.is_empty());
    }

    fn named(desc: &Value, name: &str) -> Value {
        let mut d = desc.clone();
        d["annotations"] = json!({ REF_NAME: name });
        d
    }

    fn config_json(arch: &str) -> Value {
        json!({"architecture": arch, "os": "linux",
               "config": {"Entrypoint": ["/bin/app"], "Cmd": ["--serve"], "Env": ["PATH=/bin"],
                          "WorkingDir": "/srv", "User": ""},
               "rootfs": {"type": "layers", "diff_ids": []}})
    }

    /// Builds layers with raw header names, so hostile paths can be written too.
    struct Tar(tar::Builder<Vec<u8>>);

    impl Tar {
        fn new() -> Tar {
            Tar(tar::Builder::new(Vec::new()))
        }

        fn entry(&mut self, kind: tar::EntryType, name: &str, link: &str, mode: u32, data: &[u8]) {
            self.owned(kind, name, link, mode, (0, 0), data);
        }

        fn owned(
            &mut self,
            kind: tar::EntryType,
            name: &str,
            link: &str,
            mode: u32,
            (uid, gid): (u64, u64),
            data: &[u8],
        ) {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(uid);
            h.set_gid(gid);
            h.set_mtime(0);
            h.set_size(data.len() as u64);
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_cksum();
            self.0.append(&h, data).unwrap();
        }

        fn file(&mut self, name: &str, data: &[u8]) -> &mut Tar {
            self.entry(tar::EntryType::Regular, name, "", 0o644, data);
            self
        }

        fn dir(&mut self, name: &str) -> &mut Tar {
            self.entry(tar::EntryType::Directory, name, "", 0o755, b"");
            self
        }

        fn symlink(&mut self, name: &str, target: &str) -> &mut Tar {
            self.entry(tar::EntryType::Symlink, name, target, 0o777, b"");
            self
        }

        fn hardlink(&mut self, name: &str, target: &str) -> &mut Tar {
            self.entry(tar::EntryType::Link, name, target, 0o644, b"");
            self
        }

        fn node(&mut self, kind: tar::EntryType, name: &str, mode: u32, dev: (u32, u32)) {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_size(0);
            h.set_device_major(dev.0).unwrap();
            h.set_device_minor(dev.1).unwrap();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            self.0.append(&h, io::empty()).unwrap();
        }

        fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Tar {
            self.0.append_pax_extensions(records.iter().copied()).unwrap();
            self
        }

        fn bytes(&mut self) -> Vec<u8> {
            let b = std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()));
            b.into_inner().unwrap()
        }
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// One image (tagged `t`) with these layers, resolved and unpacked into `dir/rootfs`.
    fn unpack_layers(dir: &Path, layers: &[(&str, Vec<u8>)]) -> (Result<UnpackStats>, PathBuf) {
        let layout = Layout::new(dir.join("layout"));
        layout.index(&[named(&layout.image(layers), "t")]);
        let resolved = resolve(&[layout.store()], "t").unwrap();
        let rootfs = dir.join("rootfs");
        (unpack(&resolved, &rootfs), rootfs)
    }

    fn read(p: impl AsRef<Path>) -> String {
        fs::read_to_string(p).unwrap()
    }

    #[test]
    fn extended_attributes_are_counted_not_dropped_unsaid() {
        require_root();
        let d = Scratch::new("xattrs");
        let layer = Tar::new()
            .dir("bin")
            .pax(&[("SCHILY.xattr.security.capability", b"\x01\x00\x00\x02")])
            .file("bin/ping", b"ping")
            .pax(&[
                ("SCHILY.xattr.user.a", b"1"),
                ("LIBARCHIVE.xattr.user.b", b"Mg=="),
            ])
            .file("bin/other", b"x")
            .file("bin/plain", b"y")
            .bytes();
        let (stats, rootfs) = unpack_layers(&d.0, &[(TAR, layer)]);
        let stats = stats.unwrap();
        assert_eq!(stats.xattr_entries, 2);
        assert_eq!(
            stats.first_xattr,
            Some(("bin/ping".into(), "security.capability".into()))
        );
        assert_eq!(read(rootfs.join("bin/ping")), "ping");
    }

    #[test]
    fn digests_are_strict() {
        let good = format!("sha256:{}", "0123456789abcdef".repeat(4));
        assert_eq!(Digest::parse(&good).unwrap().hex(), &good[7..]);
        for bad in [
            format!("sha256:{}", "0123456789ABCDEF".repeat(4)),
            format!("sha512:{}", "0123456789abcdef".repeat(4)),
            format!("sha256:{}", "0123456789abcdef".repeat(3)),
            format!("{good}\n"),
            "sha256:../../../../etc/passwd".into(),
            format!("sha256:../{}", &good[10..]),
            String::new(),
        ] {
            assert_eq!(Digest::parse(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn reference_matching_rules() {
        let tier = |reference: &str, annotation: &str| {
            let desc: DescJson = serde_json::from_value(json!({
                "digest": "sha256:x", "size": 1, "annotations": { REF_NAME: annotation }
            }))
            .unwrap();
            Wanted::parse(reference).unwrap().tier(&desc)
        };
        assert_eq!(
            tier("docker.io/library/alpine:3.19", "docker.io/library/alpine:3.19"),
            Some(0)
        );
        assert_eq!(tier("alpine:3.19", "docker.io/library/alpine:3.19"), Some(0));
        assert_eq!(tier("docker.io/alpine:3.19", "library/alpine:3.19"), Some(0));
        assert_eq!(tier("3.19", "3.19"), Some(0));
        assert_eq!(tier("docker.io/library/alpine:3.19", "3.19"), Some(1));
        assert_eq!(tier("3.19", "docker.io/library/alpine:3.19"), Some(1));
        assert_eq!(tier("ghcr.io/x/alpine:3.19", "alpine:3.19"), Some(1));
        assert_eq!(tier("localhost:5000/app:1", "app:1"), Some(1));
        assert_eq!(tier("alpine:3.19", "3.20"), None);
        assert_eq!(tier("alpine", "alpine:latest"), None, "no implied :latest");
        assert_eq!(
            tier("pine:3.19", "alpine:3.19"),
            None,
            "tails start at a boundary"
        );
        assert_eq!(tier("5000/app:1", "localhost:5000/app:1"), None, "not a port");
        assert_eq!(tier("app:1", "localhost:5000/app:1"), Some(1));
        assert_eq!(tier("19", "alpine:3.19"), None);
        assert!(matches!(Wanted::parse(""), Err(OciError::Reference { .. })));
        assert!(matches!(
            Wanted::parse("x@sha256:zz"),
            Err(OciError::Reference { .. })
        ));
    }

    #[test]
    fn resolves_full_and_short_names() {
        let dir = Scratch::new("names");
        let layout = Layout::new(dir.0.join("layout"));
        let a = layout.image(&[
            (TAR, Tar::new().file("a", b"a").bytes()),
            (TGZ, gzip(&Tar::new().bytes())),
        ]);
        let b = layout.image_with(json!({"architecture": "amd64", "os": "linux"}), &[]);
        layout.index(&[named(&a, "docker.io/library/alpine:3.19"), named(&b, "3.20")]);
        let stores = [layout.store()];
        for r in [
            "docker.io/library/alpine:3.19",
            "alpine:3.19",
            "library/alpine:3.19",
            "3.19",
        ] {
            let got = resolve(&stores, r).unwrap();
            assert_eq!(got.manifest.as_str(), a["digest"], "{r}");
            assert_eq!(got.name, "docker.io/library/alpine:3.19");
        }
        let got = resolve(&stores, "alpine:3.19").unwrap();
        assert_eq!(
            got.config,
            ImageConfig {
                entrypoint: Some(vec!["/bin/app".into()]),
                cmd: Some(vec!["--serve".into()]),
                env: Some(vec!["PATH=/bin".into()]),
                working_dir: Some("/srv".into()),
                user: None,
                labels: Default::default(),
            }
        );
        let kinds: Vec<Compression> = got.layers.iter().map(|l| l.compression).collect();
        assert_eq!(kinds, [Compression::None, Compression::Gzip]);
        assert_eq!(got.store, stores[0]);
        for r in ["docker.io/library/alpine:3.20", "alpine:3.20", "3.20"] {
            let got = resolve(&stores, r).unwrap();
            assert_eq!(got.manifest.as_str(), b["digest"], "{r}");
            assert_eq!(got.config, ImageConfig::default());
            assert!(got.layers.is_empty());
        }
        let by_digest = format!("alpine@{}", b["digest"].as_str().unwrap());
        assert_eq!(
            resolve(&stores, &by_digest).unwrap().manifest.as_str(),
            b["digest"]
        );
    }

    #[test]
    fn ambiguous_references_list_the_candidates() {
        let dir = Scratch::new("ambiguous");
        let layout = Layout::new(dir.0.join("layout"));
        let a = layout.image(&[(TAR, Tar::new().file("a", b"a").bytes())]);
        let b = layout.image(&[(TAR, Tar::new().file("b", b"b").bytes())]);
        layout.index(&[
            named(&a, "ghcr.io/one/app:1"),
            named(&b, "quay.io/two/app:1"),
            named(&a, "1"),
            named(&a, "ghcr.io/one/other:2"),
            named(&a, "other:2"),
        ]);
        let stores = [layout.store()];
        let err = resolve(&stores, "app:1").unwrap_err();
        assert!(matches!(err, OciError::Ambiguous { .. }), "{err}");
        let msg = err.to_string();
        for s in [
            a["digest"].as_str().unwrap(),
            b["digest"].as_str().unwrap(),
            "ghcr.io/one/app:1",
        ] {
            assert!(msg.contains(s), "{msg}");
        }
        assert!(msg.contains(&*dir.0.to_string_lossy()), "{msg}");
        // An exact match outranks tails; the same digest twice is not ambiguous.
        assert_eq!(resolve(&stores, "1").unwrap().manifest.as_str(), a["digest"]);
        assert_eq!(resolve(&stores, "2").unwrap().manifest.as_str(), a["digest"]);
    }

    #[test]
    fn stores_are_searched_in_order_and_named_when_nothing_matches() {
        let dir = Scratch::new("order");
        let one = Layout::new(dir.0.join("one"));
        let two = Layout::new(dir.0.join("two"));
        let a = one.image(&[(TAR, Tar::new().file("a", b"a").bytes())]);
        let b = two.image(&[(TAR, Tar::new().file("b", b"b").bytes())]);
        one.index(&[named(&a, "app:1")]);
        two.index(&[named(&b, "app:1"), named(&b, "only-two")]);
        let stores = [one.store(), two.store()];
        assert_eq!(resolve(&stores, "app:1").unwrap().manifest.as_str(), a["digest"]);
        assert_eq!(resolve(&stores, "only-two").unwrap().store, stores[1]);
        let err = resolve(&stores, "nope:1").unwrap_err();
        assert!(matches!(err, OciError::NotFound { .. }), "{err}");
        let msg = err.to_string();
        for s in [&one.0, &two.0] {
            assert!(msg.contains(&*s.to_string_lossy()), "{msg}");
        }
        assert!(msg.contains("only-two"), "{msg}");
        assert!(resolve(&[], "x")
            .unwrap_err()
            .to_string()
            .contains("searched none"));
        let err = Store::open(dir.0.join("missing")).unwrap_err();
        assert!(err.to_string().contains("missing/oci-layout"), "{err}");
    }

    #[test]
    fn multi_platform_index_picks_linux_amd64() {
        let dir = Scratch::new("platform");
        let layout = Layout::new(dir.0.join("layout"));
        let arm = layout.image_with(config_json("arm64"), &[]);
        let amd = layout.image(&[(TAR, Tar::new().file("amd", b"64").bytes())]);
        let attestation = layout.blob("application/vnd.in-toto+json", b"{}");
        let mut entries = vec![
            json!({"platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}),
            json!({"platform": {"os": "linux", "architecture": "amd64", "variant": "v3"}}),
            json!({"platform": {"os": "unknown", "architecture": "unknown"}}),
        ];
        for (e, d) in entries.iter_mut().zip([&arm, &amd, &attestation]) {
            for k in ["mediaType", "digest", "size"] {
                e[k] = d[k].clone();
            }
        }
        let index = json!({"schemaVersion": 2, "manifests": entries});
        let index = layout.blob(INDEX_TYPES[0], index.to_string().as_bytes());
        let only_arm = json!({"schemaVersion": 2, "manifests": [entries[0]]});
        let only_arm = layout.blob(INDEX_TYPES[1], only_arm.to_string().as_bytes());
        layout.index(&[
            named(&index, "multi"),
            named(&only_arm, "arm"),
            named(&arm, "plain-arm"),
        ]);
        let stores = [layout.store()];
        let got = resolve(&stores, "multi").unwrap();
        assert_eq!(got.manifest.as_str(), amd["digest"]);
        assert_eq!(got.layers.len(), 1);
        let err = resolve(&stores, "arm").unwrap_err();
        assert!(matches!(err, OciError::NoPlatform { .. }), "{err}");
        assert!(err.to_string().contains("linux/arm64"), "{err}");
        let err = resolve(&stores, "plain-arm").unwrap_err();
        assert!(err.to_string().contains("linux/arm64, not linux/amd64"), "{err}");
    }

    #[test]
    fn blobs_are_verified() {
        let dir = Scratch::new("verify");
        let layout = Layout::new(dir.0.join("layout"));
        let good = layout.image(&[(TAR, Tar::new().file("a", b"a").bytes())]);
        let mut short = good.clone();
        short["size"] = json!(good["size"].as_u64().unwrap() - 1);
        let tampered = layout.image(&[(TAR, Tar::new().file("x", b"x").bytes())]);
        layout.index(&[
            named(&good, "good"),
            named(&short, "short"),
            named(&tampered, "bad"),
        ]);
        let stores = [layout.store()];
        let err = resolve(&stores, "short").unwrap_err();
        assert!(matches!(err, OciError::SizeMismatch { .. }), "{err}");
        let hex = &good["digest"].as_str().unwrap()[7..];
        assert!(err.to_string().contains(hex), "{err}");

        // A manifest whose bytes changed (same length).
        let digest = tampered["digest"].as_str().unwrap();
        let path = layout.0.join("blobs/sha256").join(&digest[7..]);
        let mut bytes = fs::read(&path).unwrap();
        bytes = String::from_utf8(bytes)
            .unwrap()
            .replace("\"schemaVersion\":2", "\"schemaVersion\":3")
            .into_bytes();
        fs::write(&path, &bytes).unwrap();
        let err = resolve(&stores, "bad").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, OciError::DigestMismatch { .. }), "{msg}");
        assert!(msg.contains(digest) && msg.contains(&sha(&bytes)), "{msg}");
        assert!(msg.contains(&*path.to_string_lossy()), "{msg}");

        // A layer changed after resolving: nothing of it is unpacked.
        let resolved = resolve(&stores, "good").unwrap();
        let layer = layout
            .0
            .join("blobs/sha256")
            .join(resolved.layers[0].digest.hex());
        let mut bytes = fs::read(&layer).unwrap();
        bytes[0] = b'b';
        fs::write(&layer, &bytes).unwrap();
        let rootfs = dir.0.join("rootfs");
        let err = unpack(&resolved, &rootfs).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(resolved.layers[0].digest.as_str()) && msg.contains(&sha(&bytes)),
            "{msg}"
        );
        assert_eq!(fs::read_dir(&rootfs).unwrap().count(), 0);
    }

    #[test]
    fn bad_digests_are_refused() {
        let dir = Scratch::new("baddigest");
        let layout = Layout::new(dir.0.join("layout"));
        let good = layout.image(&[]);
        let with = |d: &str| {
            let mut v = named(&good, d);
            v["digest"] = json!(d);
            v
        };
        let upper = format!("sha256:{}", good["digest"].as_str().unwrap()[7..].to_uppercase());
        layout.index(&[with("sha256:../../../../etc/passwd"), with(&upper)]);
        let stores = [layout.store()];
        for r in ["sha256:../../../../etc/passwd", upper.as_str()] {
            let err = resolve(&stores, r).unwrap_err();
            assert!(matches!(err, OciError::BadDigest { .. }), "{err}");
            assert!(err.to_string().contains(r), "{err}");
        }
        // A layer descriptor inside a manifest.
        let layer = json!({"mediaType": TAR, "digest": "sha256:../../oci-layout", "size": 30});
        let config = layout.blob(CONFIG_TYPES[1], config_json("amd64").to_string().as_bytes());
        let m = json!({"schemaVersion": 2, "config": config, "layers": [layer]});
        let m = layout.blob(MANIFEST_TYPES[1], m.to_string().as_bytes());
        layout.index(&[named(&m, "m")]);
        let err = resolve(&stores, "m").unwrap_err();
        assert!(matches!(err, OciError::BadDigest { .. }), "{err}");
    }

    #[test]
    fn whiteouts_and_opaque_directories() {
        require_root();
        let dir = Scratch::new("whiteout");
        let lower = Tar::new()
            .dir("etc/")
            .file("etc/a", b"a")
            .file("etc/b", b"b")
            .file("d/x", b"x")
            .file("d/sub/y", b"y")
            .dir("o/")
            .file("o/lower", b"lower")
            .file("o/sub/lower2", b"lower2")
            .bytes();
        let upper = Tar::new()
            .file("etc/.wh.a", b"")
            .file(".wh.d", b"")
            .file("etc/added", b"added")
            .file("etc/.wh.added", b"") // whiteouts hide lower layers only
            .dir("o/")
            .file("o/new", b"new")
            .file("o/sub/new2", b"new2")
            .file("o/.wh..wh..opq", b"")
            .file("o/after", b"after")
            .file("missing/.wh.x", b"")
            .file("missing2/.wh..wh..opq", b"")
            .bytes();
        let (stats, root) = unpack_layers(&dir.0, &[(TAR, lower), (TGZ, gzip(&upper))]);
        let stats = stats.unwrap();
        assert_eq!(stats.layers, 2);
        assert_eq!(stats.entries, 8 + 11);
        assert!(!root.join("etc/a").exists());
        assert_eq!(read(root.join("etc/b")), "b");
        assert_eq!(read(root.join("etc/added")), "added");
        assert!(!root.join("d").exists());
        let mut o: Vec<String> = walk(&root.join("o"));
        o.sort();
        assert_eq!(o, ["after", "new", "sub", "sub/new2"]);
        assert!(!root.join("missing").exists() && !root.join("missing2").exists());
    }

    fn walk(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&e.path()).into_iter().map(|s| format!("{name}/{s}")));
            }
            out.push(name);
        }
        out
    }

    #[test]
    fn links_symlinks_owners_and_modes() {
        require_root();
        let dir = Scratch::new("links");
        let mut lower = Tar::new();
        lower.owned(tar::EntryType::Directory, "./", "", 0o750, (0, 0), b"");
        lower
            .file("bin/busybox", b"#!busybox")
            .symlink("bin/ls", "busybox");
        lower.symlink("abs", "/etc/shadow");
        lower.owned(tar::EntryType::Regular, "bin/su", "", 0o4755, (1234, 5678), b"su");
        lower.owned(tar::EntryType::Symlink, "bin/who", "su", 0o777, (42, 43), b"");
        lower.owned(tar::EntryType::Directory, "tmp/", "", 0o1777, (0, 0), b"");
        lower.hardlink("bin/sh", "bin/busybox");
        let upper = Tar::new()
            .hardlink("sbin/init", "./bin/busybox")
            .hardlink("bin/sh", "bin/sh")
            .hardlink("lslink", "bin/ls")
            .bytes();
        let (stats, root) = unpack_layers(&dir.0, &[(TAR, lower.bytes()), (TAR, upper)]);
        let stats = stats.unwrap();
        assert_eq!(stats.bytes, "#!busybox".len() as u64 + 2);
        let ino = |p: &str| fs::symlink_metadata(root.join(p)).unwrap().ino();
        assert_eq!(ino("bin/sh"), ino("bin/busybox"));
        assert_eq!(ino("sbin/init"), ino("bin/busybox"));
        assert_eq!(
            ino("lslink"),
            ino("bin/ls"),
            "a hard link to a symlink is to the link"
        );
        assert_eq!(fs::symlink_metadata(root.join("bin/busybox")).unwrap().nlink(), 3);
        assert_eq!(fs::read_link(root.join("bin/ls")).unwrap(), Path::new("busybox"));
        assert_eq!(fs::read_link(root.join("abs")).unwrap(), Path::new("/etc/shadow"));
        let su = fs::metadata(root.join("bin/su")).unwrap();
        assert_eq!((su.mode() & 0o7777, su.uid(), su.gid()), (0o4755, 1234, 5678));
        let who = fs::symlink_metadata(root.join("bin/who")).unwrap();
        assert_eq!((who.uid(), who.gid()), (42, 43));
        assert_eq!(fs::metadata(root.join("tmp")).unwrap().mode() & 0o7777, 0o1777);
        assert_eq!(fs::metadata(root.join("sbin")).unwrap().mode() & 0o7777, 0o755);
        assert_eq!(
            fs::metadata(&root).unwrap().mode() & 0o7777,
            0o750,
            "`./` is the root"
        );
    }

    #[test]
    fn escapes_are_refused() {
        require_root();
        let x = || {
            let mut t = Tar::new();
            t.dir("x/");
            t
        };
        let cases = [
            ("../evil", x().file("../evil", b"evil").bytes()),
            ("a/../../evil", x().file("a/../../evil", b"evil").bytes()),
            ("/evil", x().file("/evil", b"evil").bytes()),
            ("pw", x().hardlink("pw", "/etc/passwd").bytes()),
            ("pw2", x().hardlink("pw2", "../outside/victim").bytes()),
            ("x/.wh...", x().file("x/.wh...", b"").bytes()),
        ];
        for (entry, layer) in cases {
            let dir = Scratch::new("escape");
            fs::create_dir(dir.0.join("outside")).unwrap();
            fs::write(dir.0.join("outside/victim"), "victim").unwrap();
            let (res, root) = unpack_layers(&dir.0, &[(TAR, layer)]);
            let err = res.unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, OciError::Entry { .. }), "{msg}");
            assert!(
                msg.contains(&format!("{entry:?}")) && msg.contains("layer sha256:"),
                "{msg}"
            );
            let mut top = walk(&dir.0);
            top.retain(|p| !p.starts_with("layout") && !p.starts_with("rootfs"));
            top.sort();
            assert_eq!(top, ["outside", "outside/victim"], "{entry}");
            assert_eq!(walk(&root), ["x"], "{entry}");
            assert_eq!(fs::metadata(dir.0.join("outside/victim")).unwrap().nlink(), 1);
            assert_eq!(read(dir.0.join("outside/victim")), "victim");
        }
    }

    #[test]
    fn symlinks_in_the_rootfs_never_lead_out() {
        require_root();
        let dir = Scratch::new("symlinks");
        let outside = dir.0.join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("victim"), "victim").unwrap();
        let abs = outside.to_str().unwrap();
        let lower = Tar::new()
            .symlink("etc", abs)
            .symlink("up", "../../../../../..")
            .symlink("out", abs)
            .symlink("f", &format!("{abs}/victim"))
            .symlink("loop", "loop")
            .bytes();
        let upper = Tar::new()
            .file("etc/passwd", b"root")
            .file("up/evil", b"evil")
            .file("out/.wh.victim", b"")
            .file("f", b"new")
            .bytes();
        let (res, root) = unpack_layers(&dir.0, &[(TAR, lower), (TAR, upper)]);
        res.unwrap();
        // Followed as if the rootfs were `/`: the writes land inside it.
        assert_eq!(
            read(root.join(abs.trim_start_matches('/')).join("passwd")),
            "root"
        );
        assert_eq!(read(root.join("evil")), "evil");
        assert!(fs::symlink_metadata(root.join("f")).unwrap().is_file());
        assert_eq!(read(root.join("f")), "new");
        assert_eq!(walk(&outside), ["victim"]);
        assert_eq!(read(outside.join("victim")), "victim");

        // A hard link through a symlink resolves inside too (and finds nothing there); a
        // symlink loop is an error, not a hang.
        for (entry, t) in [
            ("hl", Tar::new().hardlink("hl", "out/victim").bytes()),
            ("loop/x", Tar::new().file("loop/x", b"").bytes()),
        ] {
            let dir2 = Scratch::new("symlinks2");
            let lower = Tar::new().symlink("out", abs).symlink("loop", "loop").bytes();
            let err = unpack_layers(&dir2.0, &[(TAR, lower), (TAR, t)]).0.unwrap_err();
            assert!(err.to_string().contains(&format!("{entry:?}")), "{err}");
        }
        assert_eq!(fs::metadata(outside.join("victim")).unwrap().nlink(), 1);
    }

    #[test]
    fn device_nodes_and_fifos() {
        require_root();
        let dir = Scratch::new("devices");
        let mut t = Tar::new();
        t.node(tar::EntryType::Char, "dev/null", 0o666, (1, 3));
        t.node(tar::EntryType::Block, "dev/loop0", 0o660, (7, 0));
        t.node(tar::EntryType::Fifo, "run/fifo", 0o600, (0, 0));
        let (res, root) = unpack_layers(&dir.0, &[(TAR, t.bytes())]);
        res.unwrap();
        let null = fs::symlink_metadata(root.join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!((null.rdev(), null.mode() & 0o7777), (makedev(1, 3), 0o666));
        let lo = fs::symlink_metadata(root.join("dev/loop0")).unwrap();
        assert!(lo.file_type().is_block_device());
        assert_eq!((lo.rdev(), lo.mode() & 0o7777), (makedev(7, 0), 0o660));
        let fifo = fs::symlink_metadata(root.join("run/fifo")).unwrap();
        assert!(fifo.file_type().is_fifo());
        assert_eq!(fifo.mode() & 0o7777, 0o600);
    }

    #[test]
    fn gzip_and_zstd_layers() {
        require_root();
        let dir = Scratch::new("compressed");
        // A skippable frame first, as seekable-zstd writers add.
        let mut zst = vec![0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3];
        zst.extend_from_slice(&ZSTD_LAYER);
        let tgz = gzip(
            Tar::new()
                .file("gz/hello.txt", b"hello from gzip\n")
                .bytes()
                .as_slice(),
        );
        let docker = gzip(Tar::new().file("docker.txt", b"docker").bytes().as_slice());
        let plain = Tar::new().file("zst/plain.txt", b"plain").bytes();
        let (res, root) = unpack_layers(
            &dir.0,
            &[(TGZ, tgz), (TZST, zst), (DOCKER_TGZ, docker), (TAR, plain)],
        );
        let stats = res.unwrap();
        assert_eq!(stats.layers, 4);
        assert_eq!(stats.entries, 5);
        assert_eq!(read(root.join("gz/hello.txt")), "hello from gzip\n");
        assert_eq!(read(root.join("zst/hello.txt")), "hello from zstd\n");
        assert_eq!(read(root.join("docker.txt")), "docker");
        assert_eq!(read(root.join("zst/plain.txt")), "plain");

        // A corrupt zstd layer (with a correct digest) fails naming the layer.
        let dir2 = Scratch::new("badzstd");
        let mut bad = ZSTD_LAYER.to_vec();
        bad[20] ^= 0xff;
        let err = unpack_layers(&dir2.0, &[(TZST, bad)]).0.unwrap_err();
        assert!(err.to_string().contains("layer sha256:"), "{err}");
        // So does a truncated one (an error, not a hang or a silently short layer).
        let dir3 = Scratch::new("shortzstd");
        let short = ZSTD_LAYER[..60].to_vec();
        let err = unpack_layers(&dir3.0, &[(TZST, short)]).0.unwrap_err();
        assert!(err.to_string().contains("layer sha256:"), "{err}");
    }
}
