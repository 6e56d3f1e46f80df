//! The `linux.seccomp` section of a generated spec: keel's default profile for the
//! container's capabilities, or a profile file (OCI `linux.seccomp` or the Docker profile
//! format with its per-capability `includes`/`excludes`) resolved for the container. The
//! result is checked by compiling it exactly as PID 1 will.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::seccomp::{self, Action, Op, Profile};

fn action_name(a: Action) -> (&'static str, Option<u32>) {
    match a {
        Action::Allow => ("SCMP_ACT_ALLOW", None),
        Action::Errno(e) => ("SCMP_ACT_ERRNO", Some(e)),
        Action::KillThread => ("SCMP_ACT_KILL_THREAD", None),
        Action::KillProcess => ("SCMP_ACT_KILL_PROCESS", None),
        Action::Trap => ("SCMP_ACT_TRAP", None),
        Action::Log => ("SCMP_ACT_LOG", None),
        Action::Trace(v) => ("SCMP_ACT_TRACE", Some(v)),
    }
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Ne => "SCMP_CMP_NE",
        Op::Lt => "SCMP_CMP_LT",
        Op::Le => "SCMP_CMP_LE",
        Op::Eq => "SCMP_CMP_EQ",
        Op::Ge => "SCMP_CMP_GE",
        Op::Gt => "SCMP_CMP_GT",
        Op::MaskedEq => "SCMP_CMP_MASKED_EQ",
    }
}

/// A profile as an OCI `linux.seccomp` object.
pub fn to_oci(p: &Profile) -> Value {
    let (default, errno) = action_name(p.default);
    let mut out = json!({"defaultAction": default});
    if let Some(e) = errno {
        out["defaultErrnoRet"] = json!(e);
    }
    let syscalls: Vec<Value> = p
        .rules
        .iter()
        .map(|r| {
            let (action, errno) = action_name(r.action);
            let mut v = json!({"names": r.names, "action": action});
            if let Some(e) = errno {
                v["errnoRet"] = json!(e);
            }
            if !r.conds.is_empty() {
                let args: Vec<Value> = r
                    .conds
                    .iter()
                    .map(|c| {
                        let mut a = json!({"index": c.index, "value": c.value, "op": op_name(c.op)});
                        if c.op == Op::MaskedEq {
                            a["valueTwo"] = json!(c.value_two);
                        }
                        a
                    })
                    .collect();
                v["args"] = json!(args);
            }
            v
        })
        .collect();
    out["syscalls"] = json!(syscalls);
    out
}

/// keel's default profile for a container with these capabilities.
pub fn default_section(caps: &[String]) -> Value {
    to_oci(&seccomp::default_profile(caps))
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

const NATIVE_ARCHES: &[&str] = &["amd64", "x86_64", "SCMP_ARCH_X86_64"];

/// Does a Docker-format rule apply to a container with `caps`? `includes` lists what must
/// all be there, `excludes` what must not.
fn applies(rule: &Map<String, Value>, caps: &[String]) -> bool {
    let has = |c: &String| caps.contains(c);
    let native = |a: &String| NATIVE_ARCHES.contains(&a.as_str());
    let inc = rule.get("includes");
    let exc = rule.get("excludes");
    let inc_caps = strings(inc.and_then(|i| i.get("caps")));
    let inc_arches = strings(inc.and_then(|i| i.get("arches")));
    let exc_caps = strings(exc.and_then(|e| e.get("caps")));
    let exc_arches = strings(exc.and_then(|e| e.get("arches")));
    inc_caps.iter().all(has)
        && (inc_arches.is_empty() || inc_arches.iter().any(native))
        && !exc_caps.iter().any(has)
        && !exc_arches.iter().any(native)
}

/// A profile file resolved for a container holding `caps`, as an OCI `linux.seccomp`.
/// Errors say what is wrong with the file.
pub fn from_file(path: &Path, caps: &[String]) -> Result<Value, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let v: Value = serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{}: expected a JSON object", path.display()))?;
    if !obj.contains_key("defaultAction") {
        return Err(format!("{}: no defaultAction", path.display()));
    }
    let mut out = Map::new();
    for key in ["defaultAction", "defaultErrnoRet", "flags"] {
        if let Some(x) = obj.get(key) {
            out.insert(key.into(), x.clone());
        }
    }
    let mut syscalls = Vec::new();
    for (i, rule) in obj
        .get("syscalls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let r = rule
            .as_object()
            .ok_or_else(|| format!("{}: syscalls[{i}] is not an object", path.display()))?;
        if !applies(r, caps) {
            continue;
        }
        let mut names = strings(r.get("names"));
        if let Some(n) = r.get("name").and_then(Value::as_str) {
            names.push(n.into());
        }
        let mut entry = Map::new();
        entry.insert("names".into(), json!(names));
        for key in ["action", "errnoRet", "args"] {
            if let Some(x) = r.get(key) {
                entry.insert(key.into(), x.clone());
            }
        }
        syscalls.push(Value::Object(entry));
    }
    out.insert("syscalls".into(), Value::Array(syscalls));
    let section = Value::Object(out);
    check(&section).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(section)
}

/// Compile the section as PID 1 will, so a bad profile fails the build.
pub fn check(section: &Value) -> Result<(), String> {
    let s: oci_spec::runtime::LinuxSeccomp =
        serde_json::from_value(section.clone()).map_err(|e| e.to_string())?;
    let (p, flags) = Profile::from_oci(&s).map_err(|e| e.to_string())?;
    p.compile(flags).map(|_| ()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_section_round_trips_through_oci() {
        let caps = vec!["CAP_SYS_TIME".to_string()];
        let v = default_section(&caps);
        let s: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(v).unwrap();
        let (back, _) = Profile::from_oci(&s).unwrap();
        assert_eq!(back, seccomp::default_profile(&caps));
    }

    #[test]
    fn docker_profiles_resolve_for_the_containers_capabilities() {
        let dir = std::env::temp_dir().join(format!("keel-seccomp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("profile.json");
        std::fs::write(
            &p,
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
                "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
                "syscalls": [
                  {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                  {"names": ["settimeofday"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_TIME"]}},
                  {"names": ["unshare"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_ADMIN"]},
                   "args": [{"index": 0, "value": 268435456, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
                  {"names": ["iopl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["s390x"]}}
                ]}"#,
        )
        .unwrap();
        let names = |v: &Value| -> Vec<String> {
            v["syscalls"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| strings(r.get("names")))
                .collect()
        };
        let v = from_file(&p, &[]).unwrap();
        assert_eq!(names(&v), ["read", "write", "unshare"]);
        assert!(v.get("archMap").is_none());
        let v = from_file(&p, &["CAP_SYS_TIME".into(), "CAP_SYS_ADMIN".into()]).unwrap();
        assert_eq!(names(&v), ["read", "write", "settimeofday"]);

        std::fs::write(&p, r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#).unwrap();
        let e = from_file(&p, &[]).unwrap_err();
        assert!(e.contains("profile.json") && e.contains("SCMP_ACT_NOTIFY"), "{e}");
        std::fs::write(&p, r#"{"syscalls": []}"#).unwrap();
        assert!(from_file(&p, &[]).unwrap_err().contains("no defaultAction"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
