//! A manifest container + its image's defaults -> an OCI runtime spec (config.json).
//!
//! keel's default posture is strict; the manifest loosens it per container: no capabilities
//! unless listed, `noNewPrivileges`, a read-only root with private /tmp and /run, masked and
//! read-only kernel paths, new mount/pid/ipc/uts namespaces (the host's network unless
//! asked), a pids limit. keel's own fields travel as `org.keel.*` annotations, so the
//! bundle stays runnable by any OCI runtime as it is.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::manifest::{Container, Namespace, Readiness, Restart};

pub mod seccomp;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{container}: {field}: {msg}")]
pub struct SpecError {
    pub container: String,
    pub field: &'static str,
    pub msg: String,
}

/// What the image's config says, for the manifest to override.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Onboot,
    Service,
    Onshutdown,
}

/// The pids limit of a container that sets none: a fork bomb stays inside it.
pub const DEFAULT_PIDS_LIMIT: i64 = 1024;
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Every capability the kernel defines, for `capabilities: [all]`.
fn all_capabilities() -> Vec<String> {
    caps::all()
        .into_iter()
        .map(|c| c.to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn cap_name(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

fn base_mounts() -> Vec<Value> {
    vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}),
        json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=755"]}),
    ]
}

/// A mount that replaces any earlier one at the same destination.
fn add_mount(mounts: &mut Vec<Value>, m: Value) {
    let dest = m["destination"].clone();
    mounts.retain(|x| x["destination"] != dest);
    mounts.push(m);
}

/// `NAME=value` lists: later entries replace earlier ones with the same name.
fn merge_env(base: &[String], over: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in base.iter().chain(over) {
        let key = e.split('=').next().unwrap_or(e);
        out.retain(|x| x.split('=').next() != Some(key));
        out.push(e.clone());
    }
    if !out.iter().any(|e| e.starts_with("PATH=")) {
        out.insert(0, DEFAULT_PATH.into());
    }
    out
}

fn number(v: &serde_norway::Value) -> Option<u32> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .or_else(|| match v.as_str() {
            Some("root") => Some(0),
            Some(s) => s.parse().ok(),
            None => None,
        })
}

/// The OCI spec of container `c` (rootfs at `rootfs/` in its bundle), placed in the cgroup
/// `/keel/<section>.<name>` unless it names one.
pub fn generate(c: &Container, section: Section, image: &ImageDefaults) -> Result<Value, SpecError> {
    let err = |field: &'static str, msg: String| SpecError {
        container: c.name.clone(),
        field,
        msg,
    };

    let args = match &c.command {
        Some(cmd) if !cmd.is_empty() => cmd.clone(),
        Some(_) => return Err(err("command", "empty".into())),
        None => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
    };
    if args.is_empty() {
        return Err(err(
            "command",
            "none given, and the image has no Entrypoint or Cmd".into(),
        ));
    }
    let env = merge_env(&image.env, c.env.as_deref().unwrap_or(&[]));
    let cwd = c
        .cwd
        .clone()
        .or_else(|| image.working_dir.clone())
        .filter(|d| !d.is_empty())
        .unwrap_or("/".into());
    if !cwd.starts_with('/') {
        return Err(err("cwd", format!("{cwd:?} is not an absolute path")));
    }

    // User: the manifest's numbers, else the image's `uid[:gid]` (names are not resolved).
    let image_user = image.user.as_deref().filter(|u| !u.is_empty());
    let (img_uid, img_gid) = match image_user.map(|u| u.split_once(':').unwrap_or((u, ""))) {
        Some((u, g)) => {
            let uid = u.parse::<u32>().ok().or((u == "root").then_some(0));
            let uid = uid.ok_or_else(|| {
                err(
                    "user",
                    format!("image user {u:?}: only numeric users are supported"),
                )
            })?;
            (
                uid,
                g.parse::<u32>()
                    .ok()
                    .unwrap_or(if g.is_empty() { uid } else { 0 }),
            )
        }
        None => (0, 0),
    };
    let uid = match &c.uid {
        Some(v) => {
            number(v).ok_or_else(|| err("uid", format!("{v:?}: only numbers (or root) are supported")))?
        }
        None => img_uid,
    };
    let gid = match &c.gid {
        Some(v) => {
            number(v).ok_or_else(|| err("gid", format!("{v:?}: only numbers (or root) are supported")))?
        }
        None => img_gid,
    };
    let mut additional = Vec::new();
    for g in c.additional_gids.iter().flatten() {
        additional.push(
            number(g).ok_or_else(|| err("additionalGids", format!("{g:?}: only numbers are supported")))?,
        );
    }

    let caps: Vec<String> = match c.capabilities.as_deref() {
        None => Vec::new(),
        Some(list) if list.iter().any(|x| x == "all") => all_capabilities(),
        Some(list) => list
            .iter()
            .filter(|x| *x != "none")
            .map(|x| cap_name(x))
            .collect(),
    };
    let ambient: Vec<String> = c.ambient.iter().flatten().map(|x| cap_name(x)).collect();
    if let Some(a) = ambient.iter().find(|a| !caps.contains(a)) {
        return Err(err(
            "ambient",
            format!("{a} is not among the container's capabilities"),
        ));
    }

    let mut rlimits = vec![json!({"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024})];
    for r in c.rlimits.iter().flatten() {
        let parts: Vec<&str> = r.split(',').map(str::trim).collect();
        let [name, soft, hard] = parts[..] else {
            return Err(err("rlimits", format!("{r:?}: expected NAME,SOFT,HARD")));
        };
        let limit = |s: &str| match s {
            "unlimited" | "infinity" => Ok(u64::MAX),
            n => n
                .parse::<u64>()
                .map_err(|_| err("rlimits", format!("{r:?}: {n:?} is not a number"))),
        };
        let kind = format!(
            "RLIMIT_{}",
            name.trim_start_matches("RLIMIT_").to_ascii_uppercase()
        );
        let entry = json!({"type": kind, "soft": limit(soft)?, "hard": limit(hard)?});
        rlimits.retain(|x| x["type"] != entry["type"]);
        rlimits.push(entry);
    }

    let mut mounts = base_mounts();
    for b in c.binds.iter().flatten().chain(c.binds_add.iter().flatten()) {
        let mut parts = b.splitn(3, ':');
        let (Some(src), Some(dst)) = (parts.next(), parts.next()) else {
            return Err(err(
                "binds",
                format!("{b:?}: expected SOURCE:DESTINATION[:OPTIONS]"),
            ));
        };
        if !src.starts_with('/') || !dst.starts_with('/') {
            return Err(err("binds", format!("{b:?}: both paths must be absolute")));
        }
        let mut options = vec!["rbind".to_string()];
        options.extend(parts.next().unwrap_or("rw").split(',').map(String::from));
        add_mount(
            &mut mounts,
            json!({"destination": dst, "type": "bind", "source": src, "options": options}),
        );
    }
    for t in c.tmpfs.iter().flatten() {
        let (dst, opts) = t.split_once(':').unwrap_or((t, ""));
        if !dst.starts_with('/') {
            return Err(err("tmpfs", format!("{t:?}: the path must be absolute")));
        }
        let mut options = vec!["nosuid".to_string(), "nodev".to_string()];
        options.extend(opts.split(',').filter(|o| !o.is_empty()).map(String::from));
        add_mount(
            &mut mounts,
            json!({"destination": dst, "type": "tmpfs", "source": "tmpfs", "options": options}),
        );
    }
    for m in c.mounts.iter().flatten() {
        add_mount(
            &mut mounts,
            json!({"destination": m.destination, "type": m.typ, "source": m.source, "options": m.options}),
        );
    }

    let mut namespaces = vec![json!({"type": "mount"})];
    for (field, ns, oci, default_new) in [
        ("pid", &c.pid, "pid", true),
        ("ipc", &c.ipc, "ipc", true),
        ("uts", &c.uts, "uts", true),
        ("net", &c.net, "network", false),
    ] {
        match ns {
            None if default_new => namespaces.push(json!({"type": oci})),
            None | Some(Namespace::Host) => {}
            Some(Namespace::New) | Some(Namespace::None) => namespaces.push(json!({"type": oci})),
            Some(Namespace::Path(p)) => namespaces.push(json!({"type": oci, "path": p})),
        }
        if matches!(ns, Some(Namespace::None)) && oci != "network" {
            return Err(err(field, "none is for net only".into()));
        }
    }
    if c.userns.is_some() {
        return Err(err("userns", "user namespaces are not supported yet".into()));
    }

    let mut resources = match &c.resources {
        Some(v) => serde_json::to_value(v).map_err(|e| err("resources", e.to_string()))?,
        None => json!({}),
    };
    if !resources.is_object() {
        return Err(err("resources", "expected a map (memory, cpu, pids, ...)".into()));
    }
    if resources.pointer("/pids/limit").is_none() {
        resources["pids"] = json!({"limit": DEFAULT_PIDS_LIMIT});
    }
    if resources.get("devices").is_none() {
        resources["devices"] = json!([{"allow": false, "access": "rwm"}]);
    }

    let mut devices = Vec::new();
    for d in c.devices.iter().flatten() {
        let mode = match &d.mode {
            Some(m) => Some(
                u32::from_str_radix(m.trim_start_matches("0o"), 8)
                    .map_err(|_| err("devices", format!("{}: mode {m:?} is not octal", d.path)))?,
            ),
            None => None,
        };
        devices.push(
            json!({"path": d.path, "type": d.typ, "major": d.major, "minor": d.minor, "fileMode": mode}),
        );
    }

    // The same ids the runtime derives from the image layout (`<section>.<name>`).
    let section_dir = match section {
        Section::Onboot => "onboot",
        Section::Service => "services",
        Section::Onshutdown => "onshutdown",
    };
    let cgroups_path = c
        .cgroups_path
        .clone()
        .unwrap_or(format!("/keel/{section_dir}.{}", c.name));

    let mut linux = json!({
        "namespaces": namespaces,
        "maskedPaths": c.masked_paths.clone().unwrap_or_else(|| MASKED_PATHS.iter().map(|s| s.to_string()).collect()),
        "readonlyPaths": c.readonly_paths.clone().unwrap_or_else(|| READONLY_PATHS.iter().map(|s| s.to_string()).collect()),
        "resources": resources,
        "cgroupsPath": cgroups_path,
    });
    if !devices.is_empty() {
        linux["devices"] = json!(devices);
    }
    if let Some(s) = &c.sysctl {
        linux["sysctl"] = json!(s);
    }
    if let Some(p) = &c.rootfs_propagation {
        linux["rootfsPropagation"] = json!(p);
    }
    // The filter PID 1 installs, written out so any OCI runtime applies the same one.
    match c.seccomp.as_deref() {
        None | Some("default") => linux["seccomp"] = seccomp::default_section(&caps),
        Some("unconfined") => {}
        Some(path) => {
            linux["seccomp"] =
                seccomp::from_file(std::path::Path::new(path), &caps).map_err(|e| err("seccomp", e))?
        }
    }

    let mut process = json!({
        "terminal": false,
        "user": {"uid": uid, "gid": gid},
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": {
            "bounding": caps, "effective": caps, "permitted": caps,
            "inheritable": ambient, "ambient": ambient,
        },
        "rlimits": rlimits,
        "noNewPrivileges": c.no_new_privileges.unwrap_or(true),
    });
    if !additional.is_empty() {
        process["user"]["additionalGids"] = json!(additional);
    }
    if let Some(adj) = c.oom_score_adj {
        process["oomScoreAdj"] = json!(adj);
    }

    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": "rootfs", "readonly": c.readonly.unwrap_or(true)},
        "mounts": mounts,
        "linux": linux,
        "annotations": annotations(c),
    });
    // A hostname needs a UTS namespace other than the host's.
    let own_uts = !matches!(c.uts, Some(Namespace::Host));
    match (&c.hostname, own_uts) {
        (Some(_), false) => {
            return Err(err(
                "hostname",
                "needs a UTS namespace (uts: host shares the host's)".into(),
            ))
        }
        (h, true) => spec["hostname"] = json!(h.clone().unwrap_or_else(|| c.name.clone())),
        (None, false) => {}
    }
    // The result must be a spec the runtime (and oci-spec) accepts.
    serde_json::from_value::<oci_spec::runtime::Spec>(spec.clone())
        .map_err(|e| err("(generated spec)", e.to_string()))?;
    Ok(spec)
}

/// The manifest's annotations plus keel's fields as `org.keel.*`.
fn annotations(c: &Container) -> BTreeMap<String, String> {
    let mut a = c.annotations.clone().unwrap_or_default();
    let dur = |d: &crate::manifest::Duration| format!("{}ms", d.0.as_millis());
    let mut set = |k: &str, v: String| {
        a.insert(format!("org.keel.{k}"), v);
    };
    if let Some(r) = &c.restart {
        let word = match r {
            Restart::Always => "always",
            Restart::OnFailure => "on-failure",
            Restart::Never => "never",
        };
        set("restart", word.into());
    }
    if !c.depends_on.is_empty() {
        set("depends_on", c.depends_on.join(","));
    }
    if let Some(r) = &c.readiness {
        set(
            "readiness",
            match r {
                Readiness::Started => "started".into(),
                Readiness::Notify => "notify".into(),
                Readiness::Healthcheck => "healthcheck".into(),
                Readiness::File(p) => format!("file:{p}"),
            },
        );
    }
    if let Some(h) = &c.healthcheck {
        set(
            "healthcheck",
            serde_json::to_string(&h.command).unwrap_or_default(),
        );
        if let Some(d) = &h.interval {
            set("health_interval", dur(d));
        }
        if let Some(d) = &h.timeout {
            set("health_timeout", dur(d));
        }
        if let Some(n) = h.retries {
            set("health_retries", n.to_string());
        }
    }
    for (k, d) in [
        ("stop_timeout", &c.stop_timeout),
        ("timeout", &c.timeout),
        ("start_timeout", &c.start_timeout),
        ("watchdog", &c.watchdog),
    ] {
        if let Some(d) = d {
            set(k, dur(d));
        }
    }
    if let Some(s) = &c.stop_signal {
        set("stop_signal", s.clone());
    }
    if let Some(b) = c.console {
        set("console", b.to_string());
    }
    // A profile travels in linux.seccomp; only its absence needs saying.
    if c.seccomp.as_deref() == Some("unconfined") {
        set("seccomp", "unconfined".into());
    }
    a
}

#[cfg(test)]
mod tests;
