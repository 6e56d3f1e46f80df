//! The image's containers, as laid out in the initrd:
//! `<root>/onboot/NNN-name/`, `<root>/services/name/`, `<root>/onshutdown/NNN-name/`,
//! each an OCI bundle (config.json + rootfs). Onboot and onshutdown run in directory-name
//! order. Per-container settings come from config.json annotations:
//! `org.keel.timeout` (onboot/onshutdown run limit) and `org.keel.stop_timeout`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::duration;
use crate::init::cmdline::Options;
use crate::supervisor::{Kind, UnitSpec};

pub const TIMEOUT_ANNOTATION: &str = "org.keel.timeout";
pub const STOP_TIMEOUT_ANNOTATION: &str = "org.keel.stop_timeout";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    pub spec: UnitSpec,
    /// Container id: `<kind>.<directory name>`, unique in the image.
    pub id: String,
    pub path: PathBuf,
}

/// `000-format` -> `format`; names without an order prefix stay as they are.
pub fn display_name(dir: &str) -> &str {
    match dir.split_once('-') {
        Some((num, rest))
            if !num.is_empty() && !rest.is_empty() && num.bytes().all(|b| b.is_ascii_digit()) =>
        {
            rest
        }
        _ => dir,
    }
}

/// Find every bundle under `root`, in boot order. Problems are returned as warnings; a
/// bundle whose config.json is unreadable is still listed (it fails, by name, when started).
pub fn discover(root: &Path, opts: &Options) -> (Vec<Bundle>, Vec<String>) {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for (sub, kind) in [
        ("onboot", Kind::Onboot),
        ("services", Kind::Service),
        ("onshutdown", Kind::Onshutdown),
    ] {
        let dir = root.join(sub);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                warnings.push(format!("cannot list {}: {e}", dir.display()));
                continue;
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        for dir_name in names {
            let path = dir.join(&dir_name);
            let (timeout, stop_timeout) = timeouts(&path, kind, opts, &mut warnings);
            out.push(Bundle {
                spec: UnitSpec {
                    name: display_name(&dir_name).to_string(),
                    kind,
                    timeout,
                    stop_timeout,
                },
                id: format!("{sub}.{dir_name}"),
                path,
            });
        }
    }
    (out, warnings)
}

fn timeouts(bundle: &Path, kind: Kind, opts: &Options, warnings: &mut Vec<String>) -> (Duration, Duration) {
    let mut timeout = match kind {
        Kind::Onshutdown => opts.onshutdown_timeout,
        _ => opts.onboot_timeout,
    };
    let mut stop = opts.stop_timeout;
    let config = bundle.join("config.json");
    let annotations = fs::read(&config)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("annotations").cloned());
    if let Some(a) = annotations {
        for (key, slot) in [
            (TIMEOUT_ANNOTATION, &mut timeout),
            (STOP_TIMEOUT_ANNOTATION, &mut stop),
        ] {
            match a.get(key).map(|v| v.as_str().map(duration::parse)) {
                None => {}
                Some(Some(Ok(d))) => *slot = d,
                Some(Some(Err(e))) => warnings.push(format!("{}: annotation {key}: {e}", config.display())),
                Some(None) => {
                    warnings.push(format!("{}: annotation {key} must be a string", config.display()))
                }
            }
        }
    }
    (timeout, stop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(display_name("000-format"), "format");
        assert_eq!(display_name("10-dhcp-client"), "dhcp-client");
        assert_eq!(display_name("getty"), "getty");
        assert_eq!(display_name("ntp-a"), "ntp-a");
        assert_eq!(display_name("000-"), "000-");
    }

    #[test]
    fn discovers_in_order_with_annotations() {
        let root = std::env::temp_dir().join(format!("keel-disc-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for d in [
            "onboot/010-second",
            "onboot/000-first",
            "services/web",
            "services/.hidden",
            "onshutdown/000-bye",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(
            root.join("onboot/000-first/config.json"),
            r#"{"annotations":{"org.keel.timeout":"5s"}}"#,
        )
        .unwrap();
        fs::write(
            root.join("services/web/config.json"),
            r#"{"annotations":{"org.keel.stop_timeout":"soon","org.keel.timeout":3}}"#,
        )
        .unwrap();
        let opts = Options::default();
        let (b, warnings) = discover(&root, &opts);
        let ids: Vec<_> = b.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "onboot.000-first",
                "onboot.010-second",
                "services.web",
                "onshutdown.000-bye"
            ]
        );
        assert_eq!(b[0].spec.name, "first");
        assert_eq!(b[0].spec.timeout, Duration::from_secs(5));
        assert_eq!(b[1].spec.timeout, opts.onboot_timeout);
        assert_eq!(b[2].spec.stop_timeout, opts.stop_timeout);
        assert_eq!(b[3].spec.timeout, opts.onshutdown_timeout);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings.iter().all(|w| w.contains("services/web/config.json")),
            "{warnings:?}"
        );
        assert!(warnings
            .iter()
            .any(|w| w.contains("org.keel.stop_timeout") && w.contains("soon")));
        assert!(warnings
            .iter()
            .any(|w| w.contains("org.keel.timeout must be a string")));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn missing_root_is_an_empty_image() {
        let (b, w) = discover(Path::new("/nonexistent/keel"), &Options::default());
        assert!(b.is_empty() && w.is_empty());
    }
}
