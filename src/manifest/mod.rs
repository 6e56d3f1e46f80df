//! The image manifest: a superset of LinuxKit's `linuxkit.yml`, so a LinuxKit user's file
//! builds unchanged, plus keel's own per-container fields (restart, depends_on, readiness,
//! healthcheck, seccomp, stop_timeout...). Parsing is strict: an unknown field or a wrong
//! type is an error naming the file, the container and the field, with line and column.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::duration;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// `at`: the field's path (`services[2] (getty).capabilities`), `msg` the parser's
    /// message with its line and column.
    #[error("{file}: {at}: {msg}")]
    Field { file: String, at: String, msg: String },
    #[error("{file}: {msg}")]
    Invalid { file: String, msg: String },
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub kernel: Option<Kernel>,
    /// Images unpacked into the root, in order (LinuxKit's init, runc, containerd... keel
    /// needs none of them, but an image of files can be useful).
    #[serde(default)]
    pub init: Vec<String>,
    #[serde(default)]
    pub onboot: Vec<Container>,
    #[serde(default)]
    pub onshutdown: Vec<Container>,
    #[serde(default)]
    pub services: Vec<Container>,
    #[serde(default)]
    pub files: Vec<File>,
    /// LinuxKit's image signature checks; accepted for compatibility, not used.
    #[serde(default)]
    pub trust: Option<serde_norway::Value>,
    /// LinuxKit's shared volumes; accepted for compatibility, not used yet.
    #[serde(default)]
    pub volumes: Option<serde_norway::Value>,
    /// keel: forward every log line to a syslog destination (`keel.syslog=` on the cmdline).
    #[serde(default)]
    pub syslog: Option<Syslog>,
}

/// `syslog: udp://10.0.2.2:514`, or `{destination: ..., facility: local0, format: rfc3164}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Syslog {
    pub destination: String,
    pub facility: Option<String>,
    pub format: Option<String>,
}

impl<'de> Deserialize<'de> for Syslog {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            destination: String,
            #[serde(default)]
            facility: Option<String>,
            #[serde(default)]
            format: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Destination(String),
            Full(Full),
        }
        let bad = || serde::de::Error::custom("expected a destination or {destination, facility, format}");
        Ok(match Raw::deserialize(d).map_err(|_: D::Error| bad())? {
            Raw::Destination(destination) => Syslog {
                destination,
                ..Syslog::default()
            },
            Raw::Full(f) => Syslog {
                destination: f.destination,
                facility: f.facility,
                format: f.format,
            },
        })
    }
}

impl Manifest {
    /// The kernel command line `keel build` writes: the manifest's own, plus keel's options
    /// for what the manifest says at the top level.
    pub fn cmdline(&self) -> String {
        let mut words: Vec<String> = self
            .kernel
            .as_ref()
            .and_then(|k| k.cmdline.clone())
            .into_iter()
            .filter(|c| !c.trim().is_empty())
            .collect();
        if let Some(s) = &self.syslog {
            words.push(format!("keel.syslog={}", s.destination));
            words.extend(s.facility.as_ref().map(|f| format!("keel.syslog_facility={f}")));
            words.extend(s.format.as_ref().map(|f| format!("keel.syslog_format={f}")));
        }
        words.join(" ")
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// An image holding the kernel, or (keel) a local bzImage path.
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub cmdline: Option<String>,
    /// LinuxKit: the kernel's file name inside the image.
    #[serde(default)]
    pub binary: Option<String>,
    /// LinuxKit: unpack the kernel's tar of modules.
    #[serde(default)]
    pub tar: Option<String>,
    #[serde(default)]
    pub ucode: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub path: String,
    #[serde(default)]
    pub contents: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub directory: bool,
    #[serde(default)]
    pub symlink: Option<String>,
    /// Octal, as a string ("0600") as LinuxKit writes it.
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
    /// A missing `source` is not an error.
    #[serde(default)]
    pub optional: bool,
    /// LinuxKit: write the manifest itself here as yaml or json.
    #[serde(default)]
    pub metadata: Option<String>,
}

/// `net`, `pid`, `ipc`, `uts`: the host's namespace, a new one, or one at a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Namespace {
    Host,
    New,
    Path(String),
    /// keel: `net: none`, a new network namespace with only loopback.
    None,
}

impl<'de> Deserialize<'de> for Namespace {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "host" => Namespace::Host,
            "new" => Namespace::New,
            "none" => Namespace::None,
            p if p.starts_with('/') => Namespace::Path(p.to_string()),
            other => {
                return Err(serde::de::Error::custom(format!(
                    "expected host, new, none or an absolute path, not {other:?}"
                )))
            }
        })
    }
}

/// A duration field: `10s`, `250ms`, `2m` or a number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Duration(pub std::time::Duration);

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            // PID 1 reads durations as u64 milliseconds; no longer one may pass the build.
            Raw::Secs(n) if n.checked_mul(1000).is_some() => Ok(Duration(std::time::Duration::from_secs(n))),
            Raw::Secs(n) => Err(serde::de::Error::custom(format!(
                "{n} seconds is too long (at most {})",
                u64::MAX / 1000
            ))),
            Raw::Text(t) => duration::parse(&t)
                .map(Duration)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum Restart {
    #[default]
    Always,
    OnFailure,
    Never,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Healthcheck {
    pub command: Vec<String>,
    #[serde(default)]
    pub interval: Option<Duration>,
    #[serde(default)]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub retries: Option<u32>,
}

/// `readiness: started | notify | healthcheck | {file: /path}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Readiness {
    #[default]
    Started,
    Notify,
    Healthcheck,
    File(String),
}

impl<'de> Deserialize<'de> for Readiness {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct FileForm {
            file: String,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            File(FileForm),
        }
        let bad = || serde::de::Error::custom("expected started, notify, healthcheck or {file: /path}");
        match Raw::deserialize(d).map_err(|_: D::Error| bad())? {
            Raw::Word(w) => match w.as_str() {
                "started" => Ok(Readiness::Started),
                "notify" => Ok(Readiness::Notify),
                "healthcheck" => Ok(Readiness::Healthcheck),
                _ => Err(bad()),
            },
            Raw::File(f) => Ok(Readiness::File(f.file)),
        }
    }
}

/// LinuxKit's `runtime:` block, applied by the runtime around the container.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    #[serde(default)]
    pub mkdir: Vec<String>,
    #[serde(default)]
    pub cgroups: Vec<String>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub interfaces: Vec<serde_norway::Value>,
    #[serde(default, rename = "bindNS")]
    pub bind_ns: Option<serde_norway::Value>,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    pub destination: String,
    #[serde(default, rename = "type")]
    pub typ: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Device {
    pub path: String,
    #[serde(rename = "type")]
    pub typ: String,
    #[serde(default)]
    pub major: Option<i64>,
    #[serde(default)]
    pub minor: Option<i64>,
    #[serde(default)]
    pub mode: Option<String>,
}

/// A container of `onboot`, `services` or `onshutdown`: LinuxKit's fields and keel's.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Container {
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// Capability names (`CAP_NET_ADMIN` or `NET_ADMIN`), or `all` / `none`.
    #[serde(default)]
    pub capabilities: Option<Vec<String>>,
    #[serde(default)]
    pub ambient: Option<Vec<String>>,
    #[serde(default)]
    pub binds: Option<Vec<String>>,
    #[serde(default, rename = "binds.add")]
    pub binds_add: Option<Vec<String>>,
    #[serde(default)]
    pub mounts: Option<Vec<Mount>>,
    #[serde(default)]
    pub tmpfs: Option<Vec<String>>,
    #[serde(default)]
    pub devices: Option<Vec<Device>>,
    #[serde(default)]
    pub net: Option<Namespace>,
    #[serde(default)]
    pub pid: Option<Namespace>,
    #[serde(default)]
    pub ipc: Option<Namespace>,
    #[serde(default)]
    pub uts: Option<Namespace>,
    #[serde(default)]
    pub userns: Option<Namespace>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub readonly: Option<bool>,
    #[serde(default, rename = "maskedPaths")]
    pub masked_paths: Option<Vec<String>>,
    #[serde(default, rename = "readonlyPaths")]
    pub readonly_paths: Option<Vec<String>>,
    #[serde(default)]
    pub uid: Option<serde_norway::Value>,
    #[serde(default)]
    pub gid: Option<serde_norway::Value>,
    #[serde(default, rename = "additionalGids")]
    pub additional_gids: Option<Vec<serde_norway::Value>>,
    #[serde(default, rename = "noNewPrivileges")]
    pub no_new_privileges: Option<bool>,
    #[serde(default, rename = "oomScoreAdj")]
    pub oom_score_adj: Option<i32>,
    #[serde(default, rename = "rootfsPropagation")]
    pub rootfs_propagation: Option<String>,
    #[serde(default, rename = "cgroupsPath")]
    pub cgroups_path: Option<String>,
    /// The OCI `linux.resources` object, as LinuxKit takes it (memory, cpu, pids, ...).
    #[serde(default)]
    pub resources: Option<serde_norway::Value>,
    #[serde(default)]
    pub sysctl: Option<BTreeMap<String, String>>,
    /// LinuxKit form: `nofile,1024,4096` (name, soft, hard).
    #[serde(default)]
    pub rlimits: Option<Vec<String>>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub runtime: Option<Runtime>,

    // keel's own fields.
    #[serde(default)]
    pub restart: Option<Restart>,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub readiness: Option<Readiness>,
    #[serde(default)]
    pub healthcheck: Option<Healthcheck>,
    /// `default`, `unconfined`, or the path of an OCI/Docker seccomp profile.
    #[serde(default)]
    pub seccomp: Option<String>,
    #[serde(default)]
    pub stop_timeout: Option<Duration>,
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// Run limit of an onboot/onshutdown container.
    #[serde(default)]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub start_timeout: Option<Duration>,
    /// sd_notify watchdog: no `WATCHDOG=1` for this long and the service is restarted.
    #[serde(default)]
    pub watchdog: Option<Duration>,
    /// Echo the container's output on the console.
    #[serde(default)]
    pub console: Option<bool>,
}

const SECTIONS: [&str; 3] = ["onboot", "services", "onshutdown"];

/// `services[2].capabilities` -> `services[2] (getty).capabilities`, so the message names
/// the container as the user wrote it.
fn describe_path(path: &str, raw: &serde_norway::Value) -> String {
    for section in SECTIONS {
        let Some(rest) = path.strip_prefix(section).and_then(|r| r.strip_prefix('[')) else {
            continue;
        };
        let Some((index, tail)) = rest.split_once(']') else {
            continue;
        };
        let name = index
            .parse::<usize>()
            .ok()
            .and_then(|i| raw.get(section)?.get(i)?.get("name")?.as_str().map(String::from));
        return match name {
            Some(n) => format!("{section}[{index}] ({n}){tail}"),
            None => path.to_string(),
        };
    }
    path.to_string()
}

/// Parse and check a manifest; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Manifest, ManifestError> {
    let field = |at: String, msg: String| ManifestError::Field {
        file: file.into(),
        at,
        msg,
    };
    let de = serde_norway::Deserializer::from_str(text);
    let manifest: Manifest = match serde_path_to_error::deserialize(de) {
        Ok(m) => m,
        Err(e) => {
            let raw: serde_norway::Value = serde_norway::from_str(text).unwrap_or(serde_norway::Value::Null);
            let mut path = e.path().to_string();
            // The YAML error may repeat (part of) the path in front of its message.
            let mut msg = e.inner().to_string();
            if let Some((head, rest)) = msg.split_once(": ") {
                if path.starts_with(head) {
                    msg = rest.to_string();
                }
            }
            // An unknown field is reported at its own key: name where it was found instead.
            if msg.starts_with("unknown field") {
                path = match path.rsplit_once('.') {
                    Some((parent, _)) => parent.to_string(),
                    None => ".".into(),
                };
            }
            let at = if path == "." {
                "top level".into()
            } else {
                describe_path(&path, &raw)
            };
            return Err(field(at, msg));
        }
    };
    check(&manifest, file)?;
    Ok(manifest)
}

pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.into(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

pub(crate) fn valid_capability(name: &str) -> bool {
    use std::str::FromStr;
    let full = if name.starts_with("CAP_") {
        name.to_string()
    } else {
        format!("CAP_{name}")
    };
    caps::Capability::from_str(&full.to_ascii_uppercase()).is_ok()
}

/// What serde cannot say: unique names, known capabilities, dependencies that exist and
/// form no cycle, fields that only make sense for services.
fn check(m: &Manifest, file: &str) -> Result<(), ManifestError> {
    let invalid = |msg: String| ManifestError::Invalid {
        file: file.into(),
        msg,
    };
    let sections: [(&str, &Vec<Container>); 3] = [
        ("onboot", &m.onboot),
        ("services", &m.services),
        ("onshutdown", &m.onshutdown),
    ];
    for (section, list) in sections {
        let mut seen = HashMap::new();
        for (i, c) in list.iter().enumerate() {
            let at = format!("{section}[{i}] ({})", c.name);
            let ok_name = !c.name.is_empty()
                && c.name.len() <= 64
                && c.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && !c.name.starts_with('.');
            if !ok_name {
                return Err(invalid(format!(
                    "{at}.name: use letters, digits, '-', '_' or '.' (at most 64)"
                )));
            }
            if let Some(j) = seen.insert(c.name.as_str(), i) {
                return Err(invalid(format!("{at}.name: {section}[{j}] has the same name")));
            }
            for (what, list) in [("capabilities", &c.capabilities), ("ambient", &c.ambient)] {
                for cap in list.iter().flatten() {
                    let special = what == "capabilities" && (cap == "all" || cap == "none");
                    if !special && !valid_capability(cap) {
                        return Err(invalid(format!("{at}.{what}: unknown capability {cap:?}")));
                    }
                }
            }
            if section != "services" {
                let service_only = [
                    ("restart", c.restart.is_some()),
                    ("depends_on", !c.depends_on.is_empty()),
                    ("readiness", c.readiness.is_some()),
                    ("healthcheck", c.healthcheck.is_some()),
                    ("start_timeout", c.start_timeout.is_some()),
                    ("watchdog", c.watchdog.is_some()),
                ];
                if let Some((f, _)) = service_only.iter().find(|(_, set)| *set) {
                    return Err(invalid(format!("{at}.{f}: only services have it")));
                }
            }
            if c.readiness == Some(Readiness::Healthcheck) && c.healthcheck.is_none() {
                return Err(invalid(format!(
                    "{at}.readiness: healthcheck needs a healthcheck"
                )));
            }
            if let Some(Readiness::File(p)) = &c.readiness {
                if !p.starts_with('/') {
                    return Err(invalid(format!(
                        "{at}.readiness.file: {p:?} is not an absolute path"
                    )));
                }
            }
            if c.watchdog.is_some_and(|d| d.0.is_zero()) {
                return Err(invalid(format!("{at}.watchdog: must be above zero")));
            }
            for (field, d) in c
                .healthcheck
                .iter()
                .flat_map(|h| [("interval", h.interval), ("timeout", h.timeout)])
            {
                if d.is_some_and(|d| d.0.is_zero()) {
                    return Err(invalid(format!("{at}.healthcheck.{field}: must be above zero")));
                }
            }
            if let Some(s) = &c.stop_signal {
                crate::init::containers::signal_number(s)
                    .map_err(|e| invalid(format!("{at}.stop_signal: {s:?}: {e}")))?;
            }
            // Such annotations reach PID 1 as written: refuse what it would not take.
            let keel: serde_json::Map<String, serde_json::Value> = (c.annotations.iter().flatten())
                .filter(|(k, _)| k.starts_with("org.keel.") && *k != "org.keel.seccomp")
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect();
            if !keel.is_empty() {
                let json = serde_json::json!({ "annotations": keel }).to_string();
                let (mut warnings, opts) = (Vec::new(), crate::init::cmdline::Options::default());
                let kind = crate::supervisor::Kind::Service;
                crate::init::containers::settings_from(
                    Path::new(""),
                    Some(json.as_bytes()),
                    &c.name,
                    kind,
                    &opts,
                    &mut warnings,
                );
                if let Some(w) = warnings.iter().find_map(|w| w.strip_prefix(": annotation ")) {
                    return Err(invalid(format!("{at}.annotations: annotation {w}")));
                }
            }
            if c.healthcheck.as_ref().is_some_and(|h| h.command.is_empty()) {
                return Err(invalid(format!("{at}.healthcheck.command: empty")));
            }
            if c.healthcheck.as_ref().is_some_and(|h| h.retries == Some(0)) {
                return Err(invalid(format!("{at}.healthcheck.retries: at least 1")));
            }
        }
    }
    if let Some(s) = &m.syslog {
        use crate::logging::syslog::{Destination, FacilityCode, Format};
        let problem = (s.destination.parse::<Destination>().err())
            .or_else(|| s.facility.as_ref()?.parse::<FacilityCode>().err())
            .or_else(|| s.format.as_ref()?.parse::<Format>().err());
        if let Some(e) = problem {
            return Err(invalid(format!("syslog: {e}")));
        }
    }
    check_dependencies(&m.services).map_err(invalid)
}

/// Every `depends_on` names a service, and there is no cycle (the message shows one).
fn check_dependencies(services: &[Container]) -> Result<(), String> {
    let index: HashMap<&str, usize> = services
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    for (i, c) in services.iter().enumerate() {
        for d in &c.depends_on {
            if !index.contains_key(d.as_str()) {
                return Err(format!(
                    "services[{i}] ({}).depends_on: no service named {d:?}",
                    c.name
                ));
            }
        }
    }
    // Depth-first search with colours: 0 unvisited, 1 on the stack, 2 done.
    fn visit(
        i: usize,
        s: &[Container],
        idx: &HashMap<&str, usize>,
        colour: &mut [u8],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        colour[i] = 1;
        stack.push(i);
        for d in &s[i].depends_on {
            let Some(&j) = idx.get(d.as_str()) else { continue };
            if colour[j] == 1 {
                let from = stack.iter().position(|&x| x == j).unwrap_or(0);
                let mut cycle = stack[from..].to_vec();
                cycle.push(j);
                return Some(cycle);
            }
            if colour[j] == 0 {
                if let Some(c) = visit(j, s, idx, colour, stack) {
                    return Some(c);
                }
            }
        }
        stack.pop();
        colour[i] = 2;
        None
    }
    let mut colour = vec![0u8; services.len()];
    for i in 0..services.len() {
        if colour[i] == 0 {
            if let Some(cycle) = visit(i, services, &index, &mut colour, &mut Vec::new()) {
                let names: Vec<_> = cycle.iter().map(|&j| services[j].name.as_str()).collect();
                return Err(format!("services: dependency cycle: {}", names.join(" -> ")));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
