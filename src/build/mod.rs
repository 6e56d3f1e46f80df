//! `keel build MANIFEST -o OUTDIR`: a manifest and local images -> a bootable kernel + initrd.
//!
//! Images come from OCI image layouts (`--store DIR`, repeatable, or `KEEL_STORES`, colon
//! separated) or, for development, a plain directory (`image: ./rootfs`). Each container
//! becomes a bundle under /containers/{onboot,services,onshutdown} with a generated
//! config.json. The initrd is a newc cpio with sorted entries, fixed times and owners,
//! gzip'd without a timestamp: the same inputs give the same bytes. `--format iso` adds a
//! hybrid BIOS ISO that boots them (see [`iso`]).

mod defaults;
mod iso;
mod progress;
mod share;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sha2::{Digest as _, Sha256};

use crate::image::{cpio, oci};
use crate::manifest::{self, Container, Manifest};
use crate::spec::{self, ImageDefaults, Section};
use progress::{bytes, Counting, Progress};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Manifest(#[from] manifest::ManifestError),
    #[error("{container}: image {image}: {source}")]
    Image {
        container: String,
        image: String,
        /// Boxed: an OCI error is large and this enum travels in every Result here.
        source: Box<oci::OciError>,
    },
    #[error("{0}")]
    Spec(#[from] spec::SpecError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("initrd: {0}")]
    Cpio(#[from] cpio::CpioError),
    #[error("iso: {0}")]
    Iso(#[from] iso::IsoError),
    #[error("{0}")]
    Invalid(String),
}

type Result<T> = std::result::Result<T, BuildError>;

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.to_path_buf();
    move |source| BuildError::Io { what, path, source }
}

pub const USAGE: &str =
    "usage: keel build MANIFEST -o OUTDIR [--format FORMAT] [--store DIR]... [--keel PATH] [--check]
  builds OUTDIR/kernel, OUTDIR/initrd.img and OUTDIR/cmdline from MANIFEST
  --format FORMAT  kernel+initrd (default), or iso: also OUTDIR/keel.iso, a hybrid BIOS
                image for QEMU's -cdrom, a CD or a USB stick (needs a kernel)
  --store DIR   an OCI image layout to take images from (also KEEL_STORES=DIR:DIR)
  --keel PATH   the static keel binary to boot as /init (default: KEEL_BIN, or this keel
                when it is statically linked)
  --check       validate the manifest and find its images; build nothing";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    KernelInitrd,
    Iso,
}

pub struct Options {
    pub manifest: PathBuf,
    pub format: Format,
    pub out: Option<PathBuf>,
    pub stores: Vec<PathBuf>,
    pub keel: Option<PathBuf>,
    pub check: bool,
}

pub fn parse_args(args: &[String]) -> std::result::Result<Options, String> {
    let mut o = Options {
        manifest: PathBuf::new(),
        format: Format::KernelInitrd,
        out: None,
        stores: Vec::new(),
        keel: None,
        check: false,
    };
    let mut manifest = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "-o" | "--output" => o.out = Some(PathBuf::from(value(a)?)),
            "--store" => o.stores.push(PathBuf::from(value(a)?)),
            "--keel" => o.keel = Some(PathBuf::from(value(a)?)),
            "--format" => {
                o.format = match value(a)?.as_str() {
                    "kernel+initrd" => Format::KernelInitrd,
                    "iso" => Format::Iso,
                    f => return Err(format!("unknown format {f:?} (kernel+initrd or iso)")),
                }
            }
            "--check" => o.check = true,
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            s if manifest.is_none() => manifest = Some(PathBuf::from(s)),
            s => return Err(format!("unexpected argument {s:?}")),
        }
    }
    o.manifest = manifest.ok_or("no manifest given")?;
    if o.out.is_none() && !o.check {
        return Err("-o OUTDIR is required (or --check)".into());
    }
    if let Some(list) = std::env::var_os("KEEL_STORES") {
        o.stores.extend(std::env::split_paths(&list));
    }
    Ok(o)
}

pub fn run(args: &[String]) -> ExitCode {
    let opts = match parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("keel build: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match build(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel build: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where a container's image comes from.
enum Source {
    Dir(PathBuf),
    Oci(Box<oci::Resolved>),
}

fn is_local(image: &str) -> bool {
    image.starts_with('/') || image.starts_with("./") || image.starts_with("../")
}

fn find_image(image: &str, base: &Path, stores: &[oci::Store], container: &str) -> Result<Source> {
    if is_local(image) {
        let dir = base.join(image);
        if !dir.is_dir() {
            return Err(BuildError::Invalid(format!(
                "{container}: image {image}: {} is not a directory",
                dir.display()
            )));
        }
        return Ok(Source::Dir(dir));
    }
    oci::resolve(stores, image)
        .map(|r| Source::Oci(Box::new(r)))
        .map_err(|source| BuildError::Image {
            container: container.into(),
            image: image.into(),
            source: Box::new(source),
        })
}

fn image_defaults(src: &Source) -> ImageDefaults {
    match src {
        Source::Dir(_) => ImageDefaults::default(),
        Source::Oci(r) => ImageDefaults {
            entrypoint: r.config.entrypoint.clone().unwrap_or_default(),
            cmd: r.config.cmd.clone().unwrap_or_default(),
            env: r.config.env.clone().unwrap_or_default(),
            working_dir: r.config.working_dir.clone(),
            user: r.config.user.clone(),
        },
    }
}

/// Copy a plain directory image: types, modes, owners, symlinks and device nodes kept.
fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(src).map_err(io("cannot read", src))?;
    let ft = meta.file_type();
    // Images copied over each other: what is at dst is replaced, a symlink never followed.
    if let Ok(existing) = fs::symlink_metadata(dst) {
        if !(existing.is_dir() && ft.is_dir()) {
            let gone = if existing.is_dir() {
                fs::remove_dir_all(dst)
            } else {
                fs::remove_file(dst)
            };
            gone.map_err(io("cannot replace", dst))?;
        }
    }
    if ft.is_symlink() {
        let target = fs::read_link(src).map_err(io("cannot read link", src))?;
        std::os::unix::fs::symlink(&target, dst).map_err(io("cannot create link", dst))?;
    } else if ft.is_dir() {
        fs::create_dir_all(dst).map_err(io("cannot create", dst))?;
        let mut names: Vec<_> = fs::read_dir(src)
            .map_err(io("cannot list", src))?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for n in names {
            copy_tree(&src.join(&n), &dst.join(&n))?;
        }
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(io("cannot chmod", dst))?;
    } else if ft.is_file() {
        fs::copy(src, dst).map_err(io("cannot copy", src))?;
    } else {
        let dev = meta.rdev() as libc::dev_t;
        nix::sys::stat::mknod(
            dst,
            nix::sys::stat::SFlag::from_bits_truncate(meta.mode() & libc::S_IFMT),
            nix::sys::stat::Mode::from_bits_truncate(meta.mode() & 0o7777),
            dev,
        )
        .map_err(|e| BuildError::Io {
            what: "cannot mknod",
            path: dst.into(),
            source: e.into(),
        })?;
    }
    let _ = nix::unistd::fchownat(
        None,
        dst,
        Some(nix::unistd::Uid::from_raw(meta.uid())),
        Some(nix::unistd::Gid::from_raw(meta.gid())),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    );
    Ok(())
}

/// The static keel binary to boot: given, from KEEL_BIN, or this one if it needs no loader.
fn keel_binary(opts: &Options) -> Result<PathBuf> {
    if let Some(k) = opts
        .keel
        .clone()
        .or_else(|| std::env::var_os("KEEL_BIN").map(PathBuf::from))
    {
        return Ok(k);
    }
    let me = fs::read_link("/proc/self/exe").map_err(io("cannot read", Path::new("/proc/self/exe")))?;
    let bytes = fs::read(&me).map_err(io("cannot read", &me))?;
    if has_interpreter(&bytes) {
        return Err(BuildError::Invalid(format!(
            "{} is dynamically linked and cannot be /init: give --keel PATH (the static device build)",
            me.display()
        )));
    }
    Ok(me)
}

/// Does this ELF64 file have a PT_INTERP program header (a dynamic loader)?
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if elf.get(..4) != Some(b"\x7fELF") {
        return true;
    }
    let (Some(phoff), Some(size), Some(num)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return true;
    };
    (0..num).any(|i| {
        let at = phoff as usize + i * size;
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            == Some(3)
    })
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).map_err(io("cannot read", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io("cannot read", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Warn about containers that give up part of the default sandbox (the image's declared
/// settings included).
fn posture_warnings(plan: &[Planned], p: &mut Progress<impl std::io::Write>) {
    for item in plan {
        let c = &item.container;
        let at = format!("{} {}", item.section, c.name);
        if c.capabilities
            .as_ref()
            .is_some_and(|l| l.iter().any(|x| x == "all"))
        {
            p.say(&format!("warning: {at} runs with all capabilities"));
        }
        if c.seccomp.as_deref() == Some("unconfined") {
            p.say(&format!("warning: {at} runs without a seccomp filter"));
        }
        if c.readonly == Some(false) {
            p.say(&format!("warning: {at} has a writable root filesystem"));
        }
    }
}

/// Every container with its section, in boot order.
fn all(m: &Manifest) -> Vec<(&'static str, &Container)> {
    let mut v: Vec<(&'static str, &Container)> = Vec::new();
    v.extend(m.onboot.iter().map(|c| ("onboot", c)));
    v.extend(m.services.iter().map(|c| ("services", c)));
    v.extend(m.onshutdown.iter().map(|c| ("onshutdown", c)));
    v
}

/// One container, ready to be laid out: the manifest entry completed by its image's
/// defaults, and its generated config.
struct Planned {
    section: &'static str,
    container: Container,
    source: Source,
    config: serde_json::Value,
}

/// Where the kernel comes from: a local file, or an image whose rootfs holds it.
enum KernelSource {
    File(PathBuf),
    Image(Box<oci::Resolved>, Option<String>),
}

/// Names a kernel image's file may have, in the order they are looked for.
const KERNEL_NAMES: [&str; 4] = ["kernel", "bzImage", "boot/kernel", "boot/bzImage"];

fn kernel_source(m: &Manifest, base: &Path, stores: &[oci::Store]) -> Result<Option<KernelSource>> {
    let Some(image) = m.kernel.as_ref().and_then(|k| k.image.as_deref()) else {
        return Ok(None);
    };
    let path = base.join(image);
    if is_local(image) || path.is_file() {
        if !path.is_file() {
            return Err(BuildError::Invalid(format!(
                "kernel: image {image}: {} is not a file",
                path.display()
            )));
        }
        return Ok(Some(KernelSource::File(path)));
    }
    let binary = m.kernel.as_ref().and_then(|k| k.binary.clone());
    match find_image(image, base, stores, "kernel")? {
        Source::Oci(r) => Ok(Some(KernelSource::Image(r, binary))),
        Source::Dir(_) => Err(BuildError::Invalid(format!(
            "kernel: image {image} must be a bzImage file or an OCI image"
        ))),
    }
}

/// The kernel file inside an unpacked kernel image: `binary` if the manifest names one, else
/// the first of [`KERNEL_NAMES`] that is a regular file (never a link out of the image).
fn kernel_in(rootfs: &Path, binary: Option<&str>) -> std::result::Result<PathBuf, String> {
    let names: Vec<&str> = match binary {
        Some(b) => vec![b.trim_start_matches('/')],
        None => KERNEL_NAMES.to_vec(),
    };
    for n in &names {
        if Path::new(n)
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(format!("kernel binary {n:?} must be a path inside the image"));
        }
        let p = rootfs.join(n);
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
            return Ok(p);
        }
    }
    Err(format!("the image has no {}", names.join(" or ")))
}

pub fn build(opts: &Options) -> Result<()> {
    let mut p = Progress::stderr();
    let m = manifest::load(&opts.manifest)?;
    let base = opts.manifest.parent().map(Path::to_path_buf).unwrap_or_default();
    let stores: Vec<oci::Store> = opts
        .stores
        .iter()
        .map(|d| {
            oci::Store::open(d).map_err(|source| BuildError::Image {
                container: "--store".into(),
                image: d.display().to_string(),
                source: Box::new(source),
            })
        })
        .collect::<Result<_>>()?;

    // Every image first: a missing one fails the build before anything is written.
    let mut plan = Vec::new();
    for (section, c) in all(&m) {
        let at = format!("{section} {}", c.name);
        let source = find_image(&c.image, &base, &stores, &at)?;
        let label = match &source {
            Source::Oci(r) => r.config.labels.get(defaults::LABEL).map(String::as_str),
            Source::Dir(_) => None,
        };
        let container = defaults::apply(c, label, &at).map_err(BuildError::Invalid)?;
        let sec = match section {
            "onboot" => Section::Onboot,
            "services" => Section::Service,
            _ => Section::Onshutdown,
        };
        // A seccomp profile path is relative to the manifest, like a directory image.
        let mut container = container;
        if let Some(p) = container
            .seccomp
            .as_mut()
            .filter(|p| !matches!(p.as_str(), "default" | "unconfined"))
        {
            *p = base.join(&*p).display().to_string();
        }
        let config = spec::generate(&container, sec, &image_defaults(&source))?;
        plan.push(Planned {
            section,
            container,
            source,
            config,
        });
    }
    let kernel = kernel_source(&m, &base, &stores)?;
    if opts.format == Format::Iso && kernel.is_none() {
        return Err(BuildError::Invalid(
            "--format iso needs a kernel: set kernel.image in the manifest".into(),
        ));
    }
    posture_warnings(&plan, &mut p);
    if opts.check {
        p.say(&format!(
            "{}: valid; {} containers, images found",
            opts.manifest.display(),
            plan.len()
        ));
        return Ok(());
    }
    let out = opts
        .out
        .clone()
        .ok_or_else(|| BuildError::Invalid("no output directory".into()))?;
    fs::create_dir_all(&out).map_err(io("cannot create", &out))?;
    let stage = out.join(".stage");
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(&stage).map_err(io("cannot create", &stage))?;
    let result = assemble(opts, &m, &base, &stores, plan, kernel, &stage, &out, &mut p);
    let _ = fs::remove_dir_all(&stage);
    p.clear();
    result
}

#[allow(clippy::too_many_arguments)]
fn assemble(
    opts: &Options,
    m: &Manifest,
    base: &Path,
    stores: &[oci::Store],
    plan: Vec<Planned>,
    kernel: Option<KernelSource>,
    stage: &Path,
    out: &Path,
    p: &mut Progress<impl std::io::Write>,
) -> Result<()> {
    // Artefacts of an earlier build into the same directory must not outlive this one.
    for stale in ["kernel", "cmdline", "keel.iso"] {
        let _ = fs::remove_file(out.join(stale));
    }
    // Images of files first; then what keel needs, never through a link they contain.
    for image in &m.init {
        let src = find_image(image, base, stores, "init")?;
        unpack_into(&src, stage, &format!("init {image}"), "", p)?;
    }
    let at = |rel: &str| inside(stage, rel).map_err(|why| BuildError::Invalid(format!("{rel}: {why}")));
    for dir in ["dev", "proc", "sys", "run", "tmp", "etc", "containers", "var/log"] {
        let path = at(dir)?;
        fs::create_dir_all(&path).map_err(io("cannot create", &path))?;
    }
    // A resolv.conf to bind: the DHCP client writes the lease's servers into it, and other
    // containers bind it read-only (a bind needs its source to exist).
    let resolv = at("etc/resolv.conf")?;
    if fs::symlink_metadata(&resolv).is_err() {
        fs::write(&resolv, "").map_err(io("cannot write", &resolv))?;
    }
    for (rel, mode, major, minor) in [("dev/console", 0o600, 5, 1), ("dev/null", 0o666, 1, 3)] {
        let path = at(rel)?;
        let _ = fs::remove_file(&path);
        nix::sys::stat::mknod(
            &path,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(mode),
            libc::makedev(major, minor),
        )
        .map_err(|e| BuildError::Io {
            what: "cannot mknod",
            path,
            source: e.into(),
        })?;
    }
    let keel = keel_binary(opts)?;
    let init = at("init")?;
    fs::copy(&keel, &init).map_err(io("cannot copy", &keel))?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755)).map_err(io("cannot chmod", &init))?;
    let mut counters = std::collections::HashMap::new();
    let mut readonly_roots = Vec::new();
    let total = plan.len();
    for (i, item) in plan.into_iter().enumerate() {
        let (section, c) = (item.section, &item.container);
        let n = counters.entry(section).or_insert(0usize);
        let dir_name = match section {
            "services" => c.name.clone(),
            _ => format!("{:03}-{}", *n, c.name),
        };
        *n += 1;
        let bundle = at(&format!("containers/{section}/{dir_name}"))?;
        let rootfs = bundle.join("rootfs");
        let what = format!("{section} {}", c.name);
        unpack_into(&item.source, &rootfs, &what, &format!("[{}/{total}] ", i + 1), p)?;
        let json = serde_json::to_vec_pretty(&item.config).map_err(|e| BuildError::Invalid(e.to_string()))?;
        fs::write(bundle.join("config.json"), json).map_err(io("cannot write", &bundle))?;
        if item.config.pointer("/root/readonly") == Some(&serde_json::Value::Bool(true)) {
            readonly_roots.push(rootfs);
        }
    }
    write_files(m, base, stage)?;
    p.status("storing identical files once", true);
    let containers = stage.join("containers");
    let shared = share::share(&readonly_roots).map_err(io("cannot share files in", &containers))?;

    // The initrd: sorted, fixed times and owners, gzip without a timestamp.
    let initrd = out.join("initrd.img");
    let file = fs::File::create(&initrd).map_err(io("cannot create", &initrd))?;
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(file, flate2::Compression::best());
    let counted = Counting {
        inner: gz,
        count: 0,
        report: |n| p.status(&format!("writing initrd.img: {} archived", bytes(n)), false),
    };
    let counted = cpio::Writer::from_tree(stage, counted, 0)?;
    counted.inner.finish().map_err(io("cannot write", &initrd))?;
    let size = fs::metadata(&initrd).map(|m| m.len()).unwrap_or(0);
    let note = match shared.files {
        0 => String::new(),
        n => format!("; {n} identical files stored once, {} saved", bytes(shared.bytes)),
    };
    p.say(&format!("wrote {} ({}{note})", initrd.display(), bytes(size)));

    let mut artefacts = vec![initrd.clone()];
    let kernel_out = out.join("kernel");
    match kernel {
        Some(KernelSource::File(path)) => {
            fs::copy(&path, &kernel_out).map_err(io("cannot copy", &path))?;
            artefacts.push(kernel_out.clone());
        }
        Some(KernelSource::Image(r, binary)) => {
            let dir = out.join(".kernel");
            let _ = fs::remove_dir_all(&dir);
            let found = unpack_into(&Source::Oci(r.clone()), &dir, "kernel", "", p)
                .and_then(|()| {
                    kernel_in(&dir, binary.as_deref())
                        .map_err(|why| BuildError::Invalid(format!("kernel: image {}: {why}", r.reference)))
                })
                .and_then(|k| fs::copy(&k, &kernel_out).map_err(io("cannot copy", &k)));
            let _ = fs::remove_dir_all(&dir);
            found?;
            artefacts.push(kernel_out.clone());
        }
        None => {}
    }
    // The manifest's kernel options plus keel's own (syslog).
    let cmdline_text = m.cmdline();
    if m.kernel.is_some() || m.syslog.is_some() {
        let cmdline = out.join("cmdline");
        fs::write(&cmdline, format!("{cmdline_text}\n")).map_err(io("cannot write", &cmdline))?;
        artefacts.push(cmdline);
    }
    if opts.format == Format::Iso {
        let image = out.join("keel.iso");
        p.status("writing keel.iso", true);
        iso::write(&kernel_out, &initrd, &cmdline_text, &out.join(".iso"), &image)?;
        let size = fs::metadata(&image).map(|m| m.len()).unwrap_or(0);
        p.say(&format!("wrote {} ({})", image.display(), bytes(size)));
        artefacts.push(image);
    }
    p.clear();
    for a in artefacts {
        println!("{}  {}", sha256_file(&a)?, a.display());
    }
    Ok(())
}

/// Unpack or copy an image into `dst`; `what` names it in errors, `step` prefixes progress.
fn unpack_into(
    src: &Source,
    dst: &Path,
    what: &str,
    step: &str,
    p: &mut Progress<impl std::io::Write>,
) -> Result<()> {
    match src {
        Source::Dir(d) => {
            p.status(&format!("{step}{what}: copying {}", d.display()), true);
            copy_tree(d, dst)
        }
        Source::Oci(r) => {
            let n = r.layers.len();
            p.status(&format!("{step}{what}: {} (0/{n} layers)", r.reference), true);
            oci::unpack_observed(r, dst, |s| {
                p.status(
                    &format!(
                        "{step}{what}: {} ({}/{n} layers, {} entries, {})",
                        r.reference,
                        s.layers,
                        s.entries,
                        bytes(s.bytes)
                    ),
                    true,
                )
            })
            .map_err(|source| BuildError::Image {
                container: what.into(),
                image: r.reference.clone(),
                source: Box::new(source),
            })
            .map(|stats| {
                if let Some((entry, names)) = &stats.first_xattr {
                    p.say(&format!(
                        "warning: {what}: image {}: extended attributes of {} entries are not kept \
                         (an initrd cannot carry them), {entry}: {names}; grant file capabilities \
                         to the container instead",
                        r.reference, stats.xattr_entries
                    ));
                }
            })
        }
    }
}

fn inside(stage: &Path, rel: &str) -> std::result::Result<PathBuf, String> {
    let mut at = stage.to_path_buf();
    let parts: Vec<_> = Path::new(rel).components().collect();
    for (i, c) in parts.iter().enumerate() {
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() && i + 1 < parts.len() => {
                return Err(format!(
                    "{} is a symlink in the image; files are not written through links",
                    at.display()
                ))
            }
            Ok(m) if m.file_type().is_symlink() => fs::remove_file(&at).map_err(|e| e.to_string())?,
            Ok(_) => {}
            Err(_) if i + 1 < parts.len() => {
                fs::create_dir(&at).map_err(|e| format!("cannot create {}: {e}", at.display()))?
            }
            Err(_) => {}
        }
    }
    Ok(at)
}

/// The manifest's `files`: contents, a source file, a directory or a symlink.
fn write_files(m: &Manifest, base: &Path, stage: &Path) -> Result<()> {
    for f in &m.files {
        let rel = f.path.trim_start_matches('/');
        if rel.is_empty()
            || Path::new(rel)
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(BuildError::Invalid(format!(
                "files: path {:?} must stay inside the image",
                f.path
            )));
        }
        let path =
            inside(stage, rel).map_err(|why| BuildError::Invalid(format!("files: {}: {why}", f.path)))?;
        let mode =
            match &f.mode {
                Some(m) => Some(u32::from_str_radix(m, 8).map_err(|_| {
                    BuildError::Invalid(format!("files: {}: mode {m:?} is not octal", f.path))
                })?),
                None => None,
            };
        if f.directory {
            fs::create_dir_all(&path).map_err(io("cannot create", &path))?;
        } else if let Some(target) = &f.symlink {
            let _ = fs::remove_file(&path);
            std::os::unix::fs::symlink(target, &path).map_err(io("cannot create link", &path))?;
            continue;
        } else if let Some(contents) = &f.contents {
            fs::write(&path, contents).map_err(io("cannot write", &path))?;
        } else if let Some(source) = &f.source {
            let src = base.join(source);
            match fs::copy(&src, &path) {
                Ok(_) => {}
                Err(_) if f.optional => continue,
                Err(e) => {
                    return Err(BuildError::Io {
                        what: "cannot copy",
                        path: src,
                        source: e,
                    })
                }
            }
        } else if f.metadata.is_some() {
            return Err(BuildError::Invalid(format!(
                "files: {}: metadata is not supported yet",
                f.path
            )));
        } else {
            return Err(BuildError::Invalid(format!(
                "files: {}: needs contents, source, directory or symlink",
                f.path
            )));
        }
        let perm = mode.unwrap_or(if f.directory { 0o755 } else { 0o644 });
        fs::set_permissions(&path, fs::Permissions::from_mode(perm)).map_err(io("cannot chmod", &path))?;
        let _ = nix::unistd::chown(
            &path,
            Some(nix::unistd::Uid::from_raw(f.uid.unwrap_or(0))),
            Some(nix::unistd::Gid::from_raw(f.gid.unwrap_or(0))),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn format_is_parsed_and_checked() {
        let o = parse_args(&args(&["m.yml", "-o", "out", "--format", "iso"])).unwrap();
        assert_eq!(o.format, Format::Iso);
        let o = parse_args(&args(&["m.yml", "-o", "out"])).unwrap();
        assert_eq!(o.format, Format::KernelInitrd);
        let e = parse_args(&args(&["m.yml", "-o", "out", "--format", "qcow2"]))
            .err()
            .unwrap();
        assert!(e.contains("unknown format \"qcow2\""), "{e}");
    }

    #[test]
    fn the_kernel_is_found_in_an_image_by_name_and_never_through_a_link() {
        let d = std::env::temp_dir().join(format!("keel-kernel-in-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("boot")).unwrap();
        assert!(kernel_in(&d, None).unwrap_err().contains("no kernel or bzImage"));
        fs::write(d.join("boot/bzImage"), b"k").unwrap();
        assert_eq!(kernel_in(&d, None).unwrap(), d.join("boot/bzImage"));
        fs::write(d.join("bzImage"), b"k").unwrap();
        assert_eq!(kernel_in(&d, None).unwrap(), d.join("bzImage"));
        // A link (here to a file outside the image) is not a kernel file.
        std::os::unix::fs::symlink("/etc/hostname", d.join("kernel")).unwrap();
        assert_eq!(kernel_in(&d, None).unwrap(), d.join("bzImage"));
        fs::write(d.join("vmlinuz-6.1"), b"k").unwrap();
        assert_eq!(
            kernel_in(&d, Some("/vmlinuz-6.1")).unwrap(),
            d.join("vmlinuz-6.1")
        );
        assert!(kernel_in(&d, Some("../etc/passwd"))
            .unwrap_err()
            .contains("inside the image"));
        assert!(kernel_in(&d, Some("nope")).is_err());
        let _ = fs::remove_dir_all(&d);
    }
}
