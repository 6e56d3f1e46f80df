//! The image's containers, as laid out in the initrd:
//! `<root>/onboot/NNN-name/`, `<root>/services/name/`, `<root>/onshutdown/NNN-name/`,
//! each an OCI bundle (config.json + rootfs). Onboot and onshutdown run in directory-name
//! order. Per-container settings come from config.json annotations `org.keel.*` (see
//! `settings`): the bundle stays a plain OCI bundle that any runtime can run.

use std::fs;
use std::path::{Path, PathBuf};

use crate::duration;
use crate::init::cmdline::Options;
use crate::supervisor::{Healthcheck, Kind, Readiness, Restart, ServicePolicy, UnitSpec};

const PREFIX: &str = "org.keel.";

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
            let spec = settings(&path, display_name(&dir_name), kind, opts, &mut warnings);
            out.push(Bundle {
                spec,
                id: format!("{sub}.{dir_name}"),
                path,
            });
        }
    }
    (out, warnings)
}

/// The unit's settings: defaults from the kernel command line, then the bundle's
/// `org.keel.*` annotations. A bad value is a warning naming the file and the key, and the
/// default stands.
fn settings(bundle: &Path, name: &str, kind: Kind, opts: &Options, warnings: &mut Vec<String>) -> UnitSpec {
    let config = bundle.join("config.json");
    let json = fs::read(&config).ok();
    settings_from(&config, json.as_deref(), name, kind, opts, warnings)
}

/// [`settings`] from the bytes of `config` (None: unreadable), without touching the disk.
pub fn settings_from(
    config: &Path,
    json: Option<&[u8]>,
    name: &str,
    kind: Kind,
    opts: &Options,
    warnings: &mut Vec<String>,
) -> UnitSpec {
    let mut spec = UnitSpec::new(name, kind);
    spec.timeout = match kind {
        Kind::Onshutdown => opts.onshutdown_timeout,
        _ => opts.onboot_timeout,
    };
    spec.stop_timeout = opts.stop_timeout;
    let annotations = json
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .and_then(|v| v.get("annotations").and_then(|a| a.as_object()).cloned());
    for (key, value) in annotations.into_iter().flatten() {
        let Some(short) = key.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(text) = value.as_str() else {
            warnings.push(format!("{}: annotation {key} must be a string", config.display()));
            continue;
        };
        if let Err(e) = apply(&mut spec, short, text) {
            warnings.push(format!("{}: annotation {key}={text:?}: {e}", config.display()));
        }
    }
    let svc = &mut spec.service;
    if svc.healthcheck.as_ref().is_some_and(|h| h.command.is_empty()) {
        warnings.push(format!(
            "{}: org.keel.health_* without org.keel.healthcheck; no health check",
            config.display()
        ));
        svc.healthcheck = None;
    }
    if svc.readiness == Readiness::Healthcheck && svc.healthcheck.is_none() {
        warnings.push(format!(
            "{}: org.keel.readiness=healthcheck without org.keel.healthcheck; ready when started",
            config.display()
        ));
        svc.readiness = Readiness::Started;
    }
    spec
}

/// `SIGTERM`, `TERM` or `15`; SIGKILL and SIGSTOP make no sense as a polite request.
/// Public so that `keel build` refuses what PID 1 would not take.
pub fn signal_number(text: &str) -> Result<i32, String> {
    use std::str::FromStr;
    let t = text.trim();
    let sig = match t.parse::<i32>() {
        Ok(n) => nix::sys::signal::Signal::try_from(n).ok(),
        Err(_) => {
            let name = if t.starts_with("SIG") {
                t.to_string()
            } else {
                format!("SIG{t}")
            };
            nix::sys::signal::Signal::from_str(&name.to_ascii_uppercase()).ok()
        }
    };
    match sig {
        Some(nix::sys::signal::Signal::SIGKILL | nix::sys::signal::Signal::SIGSTOP) => {
            Err("SIGKILL and SIGSTOP cannot be stop signals".into())
        }
        Some(s) => Ok(s as i32),
        None => Err("expected a signal name such as SIGINT, or its number".into()),
    }
}

/// A health check command: a JSON array of arguments, or words split on whitespace.
fn health_command(text: &str) -> Result<Vec<String>, String> {
    let args: Vec<String> = if text.trim_start().starts_with('[') {
        serde_json::from_str(text).map_err(|e| format!("not a JSON array of strings: {e}"))?
    } else {
        text.split_whitespace().map(String::from).collect()
    };
    if args.is_empty() {
        return Err("empty command".into());
    }
    Ok(args)
}

/// The health check being configured; its command may come after its settings (keys are
/// read in sorted order), `settings` checks one was given.
fn health(svc: &mut ServicePolicy) -> Result<&mut Healthcheck, String> {
    Ok(svc
        .healthcheck
        .get_or_insert_with(|| Healthcheck::new(Vec::new())))
}

fn positive(d: std::time::Duration) -> Result<std::time::Duration, String> {
    match d.is_zero() {
        true => Err("must be above zero".into()),
        false => Ok(d),
    }
}

fn apply(spec: &mut UnitSpec, key: &str, text: &str) -> Result<(), String> {
    let dur = || duration::parse(text).map_err(|e| e.to_string());
    let svc = &mut spec.service;
    match key {
        "timeout" => spec.timeout = dur()?,
        "stop_timeout" => spec.stop_timeout = dur()?,
        "stop_signal" => spec.stop_signal = signal_number(text)?,
        "restart" => {
            svc.restart = match text {
                "always" => Restart::Always,
                "on-failure" => Restart::OnFailure,
                "never" => Restart::Never,
                _ => return Err("expected always, on-failure or never".into()),
            }
        }
        "restart_delay" => svc.backoff.initial = dur()?,
        "restart_delay_max" => svc.backoff.max = dur()?,
        "restart_reset" => svc.backoff.reset_after = dur()?,
        "restart_factor" => {
            svc.backoff.factor = text
                .parse()
                .ok()
                .filter(|&f| (1..=100).contains(&f))
                .ok_or("expected a whole number from 1 to 100")?
        }
        "start_limit" => {
            let (n, t) = text
                .split_once('/')
                .ok_or("expected STARTS/DURATION, such as 10/60s")?;
            svc.start_limit.burst = n
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .ok_or("STARTS must be a positive number")?;
            svc.start_limit.interval = duration::parse(t).map_err(|e| e.to_string())?;
        }
        "depends_on" => {
            svc.depends_on = text
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        }
        "readiness" => {
            svc.readiness = match text {
                "started" => Readiness::Started,
                "notify" => Readiness::Notify,
                "healthcheck" => Readiness::Healthcheck,
                f => match f.strip_prefix("file:") {
                    Some(path) if path.starts_with('/') => Readiness::File(path.into()),
                    _ => return Err("expected started, notify, healthcheck or file:/ABSOLUTE/PATH".into()),
                },
            }
        }
        "start_timeout" => svc.start_timeout = dur()?,
        "healthcheck" => {
            let command = health_command(text)?;
            match svc.healthcheck.as_mut() {
                Some(h) => h.command = command,
                None => svc.healthcheck = Some(Healthcheck::new(command)),
            }
        }
        // Zero would exec a check into the container on every turn of PID 1's loop.
        "health_interval" => health(svc)?.interval = positive(dur()?)?,
        "health_timeout" => health(svc)?.timeout = positive(dur()?)?,
        "health_retries" => {
            health(svc)?.retries = text
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .ok_or("expected a positive number")?
        }
        "watchdog" => {
            let t = dur()?;
            if t.is_zero() {
                return Err("expected a duration above zero".into());
            }
            svc.watchdog = Some(t)
        }
        "console" => {
            spec.console = match text {
                "true" | "on" => true,
                "false" | "off" => false,
                _ => return Err("expected true or false".into()),
            }
        }
        // Read by the runtime when it creates the container (a bad value fails the start).
        "seccomp" => match text {
            "default" | "unconfined" => {}
            _ => return Err("expected default or unconfined".into()),
        },
        _ => return Err("unknown keel annotation".into()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn zero_health_intervals_keep_the_default() {
        let json =
            br#"{"annotations": {"org.keel.healthcheck": "/bin/true", "org.keel.health_interval": "0"}}"#;
        let mut warnings = Vec::new();
        let spec = settings_from(
            Path::new("b/config.json"),
            Some(json),
            "a",
            Kind::Service,
            &Options::default(),
            &mut warnings,
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("health_interval") && w.contains("above zero")),
            "{warnings:?}"
        );
        let h = spec.service.healthcheck.unwrap();
        assert!(!h.interval.is_zero());
    }

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
            r#"{"annotations":{"org.keel.stop_timeout":"soon","org.keel.timeout":3,"other.key":"x"}}"#,
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

#[cfg(test)]
mod annotation_tests {
    use super::*;
    use crate::supervisor::{Readiness, Restart};
    use std::time::Duration;

    fn spec_with(pairs: &[(&str, &str)]) -> Result<UnitSpec, String> {
        let mut s = UnitSpec::new("web", Kind::Service);
        for (k, v) in pairs {
            apply(&mut s, k, v)?;
        }
        Ok(s)
    }

    #[test]
    fn every_service_setting() {
        let s = spec_with(&[
            ("restart", "on-failure"),
            ("restart_delay", "250ms"),
            ("restart_delay_max", "5s"),
            ("restart_factor", "3"),
            ("restart_reset", "1m"),
            ("start_limit", "4/30s"),
            ("depends_on", "db, cache,"),
            ("readiness", "file:/run/ready"),
            ("start_timeout", "20s"),
            ("stop_timeout", "2s"),
            ("console", "off"),
            ("stop_signal", "SIGINT"),
            ("watchdog", "30s"),
        ])
        .unwrap();
        let p = &s.service;
        assert_eq!(p.restart, Restart::OnFailure);
        assert_eq!(p.backoff.initial, Duration::from_millis(250));
        assert_eq!(p.backoff.max, Duration::from_secs(5));
        assert_eq!(p.backoff.factor, 3);
        assert_eq!(p.backoff.reset_after, Duration::from_secs(60));
        assert_eq!(
            (p.start_limit.burst, p.start_limit.interval),
            (4, Duration::from_secs(30))
        );
        assert_eq!(p.depends_on, ["db", "cache"]);
        assert_eq!(p.readiness, Readiness::File("/run/ready".into()));
        assert_eq!(p.start_timeout, Duration::from_secs(20));
        assert_eq!(s.stop_timeout, Duration::from_secs(2));
        assert!(!s.console);
        assert_eq!(s.stop_signal, libc::SIGINT);
        assert_eq!(p.watchdog, Some(Duration::from_secs(30)));
        assert_eq!(
            spec_with(&[("stop_signal", "hup")]).unwrap().stop_signal,
            libc::SIGHUP
        );
        assert_eq!(
            spec_with(&[("stop_signal", "10")]).unwrap().stop_signal,
            libc::SIGUSR1
        );
        assert_eq!(
            spec_with(&[("readiness", "notify")]).unwrap().service.readiness,
            Readiness::Notify
        );
        assert_eq!(
            spec_with(&[("restart", "never")]).unwrap().service.restart,
            Restart::Never
        );
    }

    #[test]
    fn bad_values_are_refused_with_a_reason() {
        for (k, v) in [
            ("restart", "sometimes"),
            ("restart_factor", "0"),
            ("restart_factor", "x"),
            ("start_limit", "10"),
            ("start_limit", "0/10s"),
            ("start_limit", "5/soon"),
            ("readiness", "file:relative"),
            ("readiness", "eventually"),
            ("start_timeout", "forever"),
            ("colour", "blue"),
            ("console", "maybe"),
            ("stop_signal", "SIGKILL"),
            ("stop_signal", "SIGNOPE"),
            ("stop_signal", "99"),
            ("healthcheck", "[1, 2]"),
            ("healthcheck", "  "),
            ("health_retries", "0"),
            ("watchdog", "0"),
            ("watchdog", "often"),
        ] {
            let e = spec_with(&[(k, v)]).unwrap_err();
            assert!(!e.is_empty(), "{k}={v}");
        }
    }
}
