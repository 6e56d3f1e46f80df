//! `--format iso`: a hybrid BIOS image (El Torito for CD/DVD and QEMU's -cdrom, an MBR for
//! USB sticks and disks) that boots the kernel and initrd with a small bootloader from
//! Debian's isolinux and syslinux-common packages, assembled by xorriso. File dates and
//! volume ids come from a fixed epoch, so the same inputs give the same image.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian's packages put the bootloader; KEEL_ISOLINUX_DIR / KEEL_SYSLINUX_DIR
/// override.
const ISOLINUX_DIR: &str = "/usr/lib/ISOLINUX";
const SYSLINUX_DIR: &str = "/usr/lib/syslinux/modules/bios";

/// The epoch every date in the image is set to (SOURCE_DATE_EPOCH when given).
const EPOCH: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is missing: install {1} (scripts/setup.sh does)")]
    Missing(PathBuf, &'static str),
    #[error("the kernel command line {0:?} has a newline, which the bootloader cannot pass")]
    Cmdline(String),
    #[error("xorriso failed ({status}): {output}")]
    Xorriso { status: String, output: String },
}

/// The bootloader's configuration: no prompt, the serial port and the screen both.
pub fn isolinux_cfg(cmdline: &str) -> Result<String, IsoError> {
    if cmdline.contains(['\n', '\r']) {
        return Err(IsoError::Cmdline(cmdline.into()));
    }
    Ok(format!(
        "SERIAL 0 115200\nDEFAULT keel\nPROMPT 0\nTIMEOUT 0\nLABEL keel\n  KERNEL /boot/kernel\n  INITRD /boot/initrd.img\n  APPEND {}\n",
        cmdline.trim()
    ))
}

fn dir(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from)
}

/// Write `iso` from `kernel` and `initrd`, staging in `stage` (created, then removed).
pub fn write(kernel: &Path, initrd: &Path, cmdline: &str, stage: &Path, iso: &Path) -> Result<(), IsoError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| IsoError::Io { what, path, source }
    };
    let isolinux = dir("KEEL_ISOLINUX_DIR", ISOLINUX_DIR);
    let syslinux = dir("KEEL_SYSLINUX_DIR", SYSLINUX_DIR);
    let need = [
        (isolinux.join("isolinux.bin"), "isolinux"),
        (isolinux.join("isohdpfx.bin"), "isolinux"),
        (syslinux.join("ldlinux.c32"), "syslinux-common"),
    ];
    for (p, pkg) in &need {
        if !p.is_file() {
            return Err(IsoError::Missing(p.clone(), pkg));
        }
    }
    let _ = fs::remove_dir_all(stage);
    for d in ["isolinux", "boot"] {
        fs::create_dir_all(stage.join(d)).map_err(io("cannot create", &stage.join(d)))?;
    }
    let copies = [
        (isolinux.join("isolinux.bin"), stage.join("isolinux/isolinux.bin")),
        (syslinux.join("ldlinux.c32"), stage.join("isolinux/ldlinux.c32")),
        (kernel.to_path_buf(), stage.join("boot/kernel")),
        (initrd.to_path_buf(), stage.join("boot/initrd.img")),
    ];
    for (from, to) in &copies {
        fs::copy(from, to).map_err(io("cannot copy", from))?;
    }
    let cfg = stage.join("isolinux/isolinux.cfg");
    fs::write(&cfg, isolinux_cfg(cmdline)?).map_err(io("cannot write", &cfg))?;

    let epoch = std::env::var("SOURCE_DATE_EPOCH").unwrap_or_else(|_| EPOCH.into());
    // The image records each file's and directory's time: all of them get the epoch.
    let secs: i64 = epoch.parse().unwrap_or(1);
    let when = nix::sys::time::TimeSpec::new(secs, 0);
    let mut paths = vec![stage.to_path_buf()];
    for d in ["isolinux", "boot"] {
        paths.push(stage.join(d));
    }
    paths.extend(copies.iter().map(|(_, to)| to.clone()));
    paths.push(cfg.clone());
    for p in &paths {
        nix::sys::stat::utimensat(
            None,
            p.as_path(),
            &when,
            &when,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| IsoError::Io {
            what: "cannot set the time of",
            path: p.clone(),
            source: e.into(),
        })?;
    }
    let tmp = iso.with_extension("iso.tmp");
    let _ = fs::remove_file(&tmp);
    let out = Command::new("xorriso")
        .env("SOURCE_DATE_EPOCH", &epoch)
        .args(["-as", "mkisofs", "-quiet", "-o"])
        .arg(&tmp)
        .args(["-V", "KEEL", "-R", "-isohybrid-mbr"])
        .arg(isolinux.join("isohdpfx.bin"))
        .args([
            "-c",
            "isolinux/boot.cat",
            "-b",
            "isolinux/isolinux.bin",
            "-no-emul-boot",
            "-boot-load-size",
            "4",
            "-boot-info-table",
        ])
        .arg(stage)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => IsoError::Missing("xorriso".into(), "xorriso"),
            _ => IsoError::Io {
                what: "cannot run",
                path: "xorriso".into(),
                source: e,
            },
        })?;
    let _ = fs::remove_dir_all(stage);
    if !out.status.success() {
        let _ = fs::remove_file(&tmp);
        return Err(IsoError::Xorriso {
            status: out.status.to_string(),
            output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    fs::rename(&tmp, iso).map_err(io("cannot write", iso))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bootloader_boots_the_kernel_with_the_manifest_cmdline_at_once() {
        let cfg = isolinux_cfg(" console=ttyS0 quiet ").unwrap();
        assert!(
            cfg.starts_with("SERIAL 0 115200\n"),
            "SERIAL must be the first line: {cfg}"
        );
        assert!(cfg.contains("TIMEOUT 0\n") && cfg.contains("PROMPT 0\n"));
        assert!(
            cfg.contains("KERNEL /boot/kernel\n  INITRD /boot/initrd.img\n  APPEND console=ttyS0 quiet\n")
        );
        assert!(isolinux_cfg("a\nb").is_err());
    }
}
