//! The test images. keel's are built by `keel build` from generated manifests, unpacked, and
//! packed again with identical files stored once (hard links): keel build gives every
//! container its own copy of its image, which for 200 services of one busybox would be a
//! 400 MB initrd. The LinuxKit-style baseline is made from the very same bundles: busybox
//! init, a shell rc that runs them with runc, and runc with its shared libraries.

use std::collections::HashMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::{invalid, io_err, output, Result};

/// What building images needs.
pub struct Tools {
    /// keel with the image builder (`keel build`).
    pub host_keel: PathBuf,
    /// The static device binary: /init of keel's images.
    pub keel: PathBuf,
    /// This program, static: the probe inside the images.
    pub me: PathBuf,
    /// Scratch space.
    pub work: PathBuf,
}

/// The name of the instrument service: it sorts after every other, so keel starts it last.
pub const PROBE: &str = "zz-probe";
/// What the probe needs from keel's machine: the control socket, the console (results
/// written straight to it are never dropped) and the kernel log (for the clock check).
const PROBE_BINDS: [&str; 3] = ["/run/keel/ctl.sock", "/dev/console", "/dev/kmsg"];

fn sh(script: &str, dir: &Path) -> Result<String> {
    output(Command::new("sh").arg("-c").arg(script).current_dir(dir))
}

fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

pub fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) -> Result<()> {
    let text = fs::read(path).map_err(io_err("cannot read", path))?;
    let mut v: Value =
        serde_json::from_slice(&text).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    edit(&mut v);
    let text = serde_json::to_vec_pretty(&v).map_err(|e| invalid(e.to_string()))?;
    fs::write(path, text).map_err(io_err("cannot write", path))
}

/// A plain-directory image with a static busybox and the few applets the containers use.
pub fn busybox_image(work: &Path) -> Result<PathBuf> {
    let dir = work.join("img/busybox");
    let bin = dir.join("bin");
    if !bin.join("busybox").exists() {
        fs::create_dir_all(&bin).map_err(io_err("cannot create", &bin))?;
        fs::copy("/bin/busybox", bin.join("busybox")).map_err(io_err(
            "cannot copy (install busybox-static)",
            Path::new("/bin/busybox"),
        ))?;
        for a in ["sh", "true", "sleep", "echo", "cat"] {
            std::os::unix::fs::symlink("busybox", bin.join(a))
                .map_err(io_err("cannot link", &bin.join(a)))?;
        }
    }
    Ok(dir)
}

/// The instrument's image: this program and keel (for `keel ctl list`).
pub fn probe_image(tools: &Tools) -> Result<PathBuf> {
    let dir = tools.work.join("img/probe");
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).map_err(io_err("cannot create", &bin))?;
    for (src, dst) in [
        (&tools.me, dir.join("keel-bench")),
        (&tools.keel, bin.join("keel")),
    ] {
        fs::copy(src, &dst).map_err(io_err("cannot copy", src))?;
        fs::set_permissions(&dst, fs::Permissions::from_mode(0o755)).map_err(io_err("cannot chmod", &dst))?;
    }
    Ok(dir)
}

/// The containers of a test image, as manifest text.
#[derive(Clone, Default)]
pub struct Contents {
    /// `/bin/true` onboot containers.
    pub onboot: usize,
    /// `sleep` services, by name.
    pub services: Vec<String>,
    /// The probe service, with its arguments.
    pub probe: Option<Vec<String>>,
    /// A service that runs this many ms and exits, restarted without delay.
    pub flap_ms: Option<u64>,
}

impl Contents {
    fn manifest(&self, busybox: &Path, probe: &Path) -> String {
        let mut m = String::from("onboot:\n");
        for i in 1..=self.onboot {
            m += &format!(
                "  - name: ob{i}\n    image: {}\n    command: [\"/bin/true\"]\n",
                busybox.display()
            );
        }
        if self.onboot == 0 {
            m = String::new();
        }
        m += "services:\n";
        for s in &self.services {
            m += &format!(
                "  - name: {s}\n    image: {}\n    command: [\"/bin/sleep\", \"1000000\"]\n",
                busybox.display()
            );
        }
        if let Some(args) = &self.probe {
            // Started once every other service is ready, so that keel's "started service"
            // lines of those do not wait for the probe's container.
            let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
            m += &format!(
                "  - name: {PROBE}\n    image: {}\n    command: [\"/keel-bench\", \"probe\", {}]\n    pid: host\n    capabilities: [CAP_SYS_PTRACE, CAP_SYS_BOOT]\n    binds: [{}]\n    depends_on: [{}]\n",
                probe.display(),
                args.join(", "),
                PROBE_BINDS.iter().map(|b| format!("\"{b}:{b}\"")).collect::<Vec<_>>().join(", "),
                self.services.join(", ")
            );
        }
        if let Some(ms) = self.flap_ms {
            m += &format!(
                "  - name: flap\n    image: {}\n    command: [\"/keel-bench\", \"flap\", \"--run-ms\", \"{ms}\"]\n    binds: [\"/dev/console:/dev/console\"]\n    annotations:\n      org.keel.restart_delay: \"0\"\n      org.keel.start_limit: \"1000000/60s\"\n",
                probe.display()
            );
        }
        m
    }
}

/// `keel build` of `manifest`, unpacked into a fresh directory (returned).
pub fn build_unpacked(tools: &Tools, name: &str, manifest: &str) -> Result<PathBuf> {
    let dir = tools.work.join("img");
    fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
    let yml = dir.join(format!("{name}.yml"));
    fs::write(&yml, manifest).map_err(io_err("cannot write", &yml))?;
    let out = dir.join(format!("{name}.out"));
    output(
        Command::new(&tools.host_keel)
            .arg("build")
            .arg(&yml)
            .arg("-o")
            .arg(&out)
            .arg("--keel")
            .arg(&tools.keel),
    )?;
    let root = dir.join(format!("{name}.root"));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).map_err(io_err("cannot create", &root))?;
    sh(
        &format!("zcat {} | cpio -idm --quiet", quote(&out.join("initrd.img"))),
        &root,
    )?;
    Ok(root)
}

/// Copies of the service `template` under other names, as keel build would write them
/// (only the hostname and the cgroup path differ); the rootfs is shared through hard links.
fn replicate(root: &Path, template: &str, names: &[String]) -> Result<()> {
    let services = root.join("containers/services");
    let src = services.join(template);
    for n in names.iter().filter(|n| *n != template) {
        let dst = services.join(n);
        let _ = fs::remove_dir_all(&dst);
        output(Command::new("cp").arg("-al").arg(&src).arg(&dst))?;
        let cfg = dst.join("config.json");
        fs::remove_file(&cfg).map_err(io_err("cannot remove", &cfg))?;
        fs::copy(src.join("config.json"), &cfg).map_err(io_err("cannot copy", &cfg))?;
        edit_json(&cfg, |c| {
            c["hostname"] = json!(n);
            c["linux"]["cgroupsPath"] = json!(format!("/keel/services.{n}"));
        })?;
    }
    Ok(())
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir).map_err(io_err("cannot list", dir))? {
        let e = e.map_err(io_err("cannot list", dir))?;
        let ft = e.file_type().map_err(io_err("cannot stat", &e.path()))?;
        if ft.is_dir() {
            walk(&e.path(), files)?;
        } else if ft.is_file() {
            files.push(e.path());
        }
    }
    Ok(())
}

/// Hard-link regular files with the same contents and mode.
fn dedupe(root: &Path) -> Result<()> {
    let mut files = Vec::new();
    walk(root, &mut files)?;
    files.sort();
    // Inode -> the file its links are to become links of (None: it is the one kept).
    let mut canon: HashMap<u64, Option<PathBuf>> = HashMap::new();
    let mut seen: HashMap<(u64, u32, u64), Vec<PathBuf>> = HashMap::new();
    for f in files {
        let meta = fs::metadata(&f).map_err(io_err("cannot stat", &f))?;
        let target = match canon.get(&meta.ino()) {
            Some(t) => t.clone(),
            None => {
                let data = fs::read(&f).map_err(io_err("cannot read", &f))?;
                let mut h = std::collections::hash_map::DefaultHasher::new();
                data.hash(&mut h);
                let group = seen.entry((meta.len(), meta.mode(), h.finish())).or_default();
                let same = group
                    .iter()
                    .find(|g| fs::read(g).is_ok_and(|d| d == data))
                    .cloned();
                if same.is_none() {
                    group.push(f.clone());
                }
                canon.insert(meta.ino(), same.clone());
                same
            }
        };
        if let Some(t) = target {
            fs::remove_file(&f).map_err(io_err("cannot remove", &f))?;
            fs::hard_link(&t, &f).map_err(io_err("cannot link", &f))?;
        }
    }
    Ok(())
}

/// A gzip'd newc initrd of `root`, as scripts/build-image.sh makes them; its size.
fn pack(root: &Path, out: &Path) -> Result<u64> {
    sh(
        &format!(
            "find . -mindepth 1 -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --reproducible --quiet | gzip -9n > {}",
            quote(out)
        ),
        root,
    )?;
    Ok(fs::metadata(out).map_err(io_err("cannot stat", out))?.len())
}

/// A keel image and, when asked, the baseline made from the same bundles.
pub struct Built {
    pub keel: PathBuf,
    pub keel_bytes: u64,
    /// The initrd exactly as keel build wrote it (every container with its own files).
    pub keel_build_bytes: u64,
    pub baseline: Option<PathBuf>,
    pub baseline_bytes: u64,
}

pub fn build(tools: &Tools, name: &str, c: &Contents, baseline: bool) -> Result<Built> {
    let busybox = busybox_image(&tools.work)?;
    let probe = probe_image(tools)?;
    // Many identical services: build one, copy it (what keel build would write for each).
    let many = c.services.len() > 3;
    let mut small = c.clone();
    if many {
        small.services.truncate(1);
    }
    let root = build_unpacked(tools, name, &small.manifest(&busybox, &probe))?;
    if many {
        replicate(&root, &c.services[0], &c.services)?;
        let probe = root.join("containers/services").join(PROBE).join("config.json");
        if probe.exists() {
            edit_json(&probe, |v| {
                v["annotations"]["org.keel.depends_on"] = json!(c.services.join(","))
            })?;
        }
    }
    let keel_build_bytes = fs::metadata(tools.work.join(format!("img/{name}.out/initrd.img")))
        .map_err(io_err("cannot stat", &tools.work.join(format!("img/{name}.out"))))?
        .len();
    dedupe(&root)?;
    let keel = tools.work.join(format!("img/{name}.img"));
    let keel_bytes = pack(&root, &keel)?;
    let mut built = Built {
        keel,
        keel_bytes,
        keel_build_bytes,
        baseline: None,
        baseline_bytes: 0,
    };
    if baseline {
        let broot = tools.work.join(format!("img/{name}.baseline.root"));
        let _ = fs::remove_dir_all(&broot);
        output(Command::new("cp").arg("-a").arg(&root).arg(&broot))?;
        make_baseline(tools, &broot)?;
        let img = tools.work.join(format!("img/{name}.baseline.img"));
        built.baseline_bytes = pack(&broot, &img)?;
        built.baseline = Some(img);
    }
    Ok(built)
}

/// `rc` of the baseline: what LinuxKit's init and rc.init do before containers, as busybox
/// commands, then the containers.
const RC: &str = r#"#!/bin/sh
# A LinuxKit-style boot: busybox init runs this rc, which mounts the base filesystems and
# runs every onboot container in order with runc, then every service detached.
/bench/keel-bench stamp rc-start
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
mkdir -p /dev/pts /dev/shm /dev/mqueue
mount -t devpts -o nosuid,noexec,newinstance,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o nosuid,nodev shm /dev/shm
mount -t mqueue -o nosuid,nodev,noexec mqueue /dev/mqueue
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control; done
hostname keel
ip link set lo up
# runc pivot_roots into each container, which the initramfs root does not allow: make the
# root a mount of its own first (what keel does too).
mkdir -p /.root
mount --rbind / /.root
cd /.root
mount --move . /
exec chroot . /bin/sh /etc/rc.containers
"#;

const RC_CONTAINERS: &str = r#"#!/bin/sh
for b in /containers/onboot/*; do
  [ -d "$b" ] || continue
  /usr/sbin/runc run --bundle "$b" "onboot.${b##*/}" </dev/null || echo "rc: onboot ${b##*/} failed: $?"
done
for b in /containers/services/*; do
  n=${b##*/}
  [ "$n" = zz-probe ] && continue
  /usr/sbin/runc run -d --bundle "$b" "services.$n" </dev/null || echo "rc: service $n failed: $?"
done
/bench/keel-bench stamp ready
if [ -d /containers/services/zz-probe ]; then
  /usr/sbin/runc run -d --bundle /containers/services/zz-probe probe </dev/null
fi
"#;

/// Turn an unpacked keel image into the baseline: busybox init instead of keel, the rc, runc
/// and its libraries; the probe loses keel's control socket and the console bind (runc
/// hands it the console as stdout already).
fn make_baseline(tools: &Tools, root: &Path) -> Result<()> {
    let at = |rel: &str| root.join(rel);
    fs::remove_file(at("init")).map_err(io_err("cannot remove", &at("init")))?;
    let bin = at("bin");
    fs::create_dir_all(&bin).map_err(io_err("cannot create", &bin))?;
    fs::copy("/bin/busybox", bin.join("busybox"))
        .map_err(io_err("cannot copy", Path::new("/bin/busybox")))?;
    for applet in output(Command::new("/bin/busybox").arg("--list"))?.split_whitespace() {
        let l = bin.join(applet);
        if applet != "busybox" && !l.exists() {
            std::os::unix::fs::symlink("busybox", &l).map_err(io_err("cannot link", &l))?;
        }
    }
    std::os::unix::fs::symlink("bin/busybox", at("init")).map_err(io_err("cannot link", &at("init")))?;
    fs::write(at("etc/inittab"), "::sysinit:/etc/rc\n")
        .map_err(io_err("cannot write", &at("etc/inittab")))?;
    for (name, text) in [("etc/rc", RC), ("etc/rc.containers", RC_CONTAINERS)] {
        fs::write(at(name), text).map_err(io_err("cannot write", &at(name)))?;
        fs::set_permissions(at(name), fs::Permissions::from_mode(0o755))
            .map_err(io_err("cannot chmod", &at(name)))?;
    }
    let bench = at("bench");
    fs::create_dir_all(&bench).map_err(io_err("cannot create", &bench))?;
    fs::copy(&tools.me, bench.join("keel-bench")).map_err(io_err("cannot copy", &tools.me))?;
    // runc where the rc expects it, and every library the loader will ask for.
    let runc = output(Command::new("sh").args(["-c", "command -v runc"]))?;
    let runc = PathBuf::from(runc.trim());
    let mut files = vec![(runc.clone(), at("usr/sbin/runc"))];
    for line in output(Command::new("ldd").arg(&runc))?.lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            files.push((PathBuf::from(p), root.join(p.trim_start_matches('/'))));
        }
    }
    for (src, dst) in files {
        if let Some(d) = dst.parent() {
            fs::create_dir_all(d).map_err(io_err("cannot create", d))?;
        }
        fs::copy(&src, &dst).map_err(io_err("cannot copy", &src))?;
    }
    let probe = at("containers/services").join(PROBE).join("config.json");
    if probe.exists() {
        edit_json(&probe, |c| {
            if let Some(m) = c["mounts"].as_array_mut() {
                m.retain(|m| {
                    !m["destination"]
                        .as_str()
                        .is_some_and(|d| PROBE_BINDS.contains(&d))
                });
            }
        })?;
    }
    Ok(())
}

/// Bytes of a file (0 when it is missing).
pub fn size(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// The smallest bootable image: keel alone, as tests/size.rs builds it.
pub fn minimal(tools: &Tools, repo: &Path) -> Result<u64> {
    let src = tools.work.join("img/minimal-src");
    fs::create_dir_all(&src).map_err(io_err("cannot create", &src))?;
    let img = tools.work.join("img/minimal.img");
    output(
        Command::new(repo.join("scripts/build-image.sh"))
            .arg(&src)
            .arg(&img)
            .arg(&tools.keel),
    )?;
    Ok(size(&img))
}
