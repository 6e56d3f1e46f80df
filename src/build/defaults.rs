//! Container defaults an image declares. Following LinuxKit's convention, an image's config
//! may carry the label `org.mobyproject.config`: a JSON object with the manifest's container
//! fields (capabilities, binds, namespaces, devices...). The manifest's own fields win; a
//! field the manifest leaves out is taken from the label; `binds.add` adds to the binds
//! whichever side they come from. keel's standard services declare the least they need
//! this way, so a manifest entry can be as short as a name and an image.

use crate::manifest::Container;

pub const LABEL: &str = "org.mobyproject.config";

/// `c` completed by the defaults in `label` (the label's text); `at` names the container for
/// errors.
pub fn apply(c: &Container, label: Option<&str>, at: &str) -> Result<Container, String> {
    let Some(label) = label else {
        return Ok(c.clone());
    };
    let mut v: serde_json::Value =
        serde_json::from_str(label).map_err(|e| format!("{at}: image label {LABEL}: {e}"))?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| format!("{at}: image label {LABEL}: not a JSON object"))?;
    obj.insert("name".into(), c.name.clone().into());
    obj.insert("image".into(), c.image.clone().into());
    let d: Container = serde_path_to_error::deserialize(v)
        .map_err(|e| format!("{at}: image label {LABEL}: {}: {}", e.path(), e.inner()))?;
    for (what, list) in [("capabilities", &d.capabilities), ("ambient", &d.ambient)] {
        for cap in list.iter().flatten() {
            let special = what == "capabilities" && (cap == "all" || cap == "none");
            if !special && !crate::manifest::valid_capability(cap) {
                return Err(format!(
                    "{at}: image label {LABEL}: {what}: unknown capability {cap:?}"
                ));
            }
        }
    }
    Ok(merge(c.clone(), d))
}

/// Fields set in `c` stay; the others come from `d`.
fn merge(mut c: Container, d: Container) -> Container {
    macro_rules! fill {
        ($($field:ident),* $(,)?) => {
            $( if c.$field.is_none() { c.$field = d.$field; } )*
        };
    }
    fill!(
        command,
        env,
        cwd,
        capabilities,
        ambient,
        binds,
        mounts,
        tmpfs,
        devices,
        net,
        pid,
        ipc,
        uts,
        userns,
        hostname,
        readonly,
        masked_paths,
        readonly_paths,
        uid,
        gid,
        additional_gids,
        no_new_privileges,
        oom_score_adj,
        rootfs_propagation,
        cgroups_path,
        resources,
        sysctl,
        rlimits,
        annotations,
        runtime,
        restart,
        readiness,
        healthcheck,
        seccomp,
        stop_timeout,
        stop_signal,
        timeout,
        start_timeout,
        console,
    );
    if let Some(add) = d.binds_add {
        let mut all = add;
        all.extend(c.binds_add.take().unwrap_or_default());
        c.binds_add = Some(all);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Namespace, Readiness};

    fn container(yaml: &str) -> Container {
        let m = crate::manifest::parse(&format!("services:\n  - {yaml}\n"), "t.yml").unwrap();
        m.services.into_iter().next().unwrap()
    }

    #[test]
    fn the_manifest_wins_and_the_label_fills_the_rest() {
        let c =
            container("{name: dhcp, image: keel/dhcp, capabilities: [CAP_NET_ADMIN], binds.add: [/a:/a]}");
        let label = r#"{"capabilities": ["CAP_NET_ADMIN", "CAP_NET_RAW"], "net": "host",
                        "binds": ["/etc/resolv.conf:/etc/resolv.conf"],
                        "readiness": {"file": "/run/dhcp/bound"}}"#;
        let got = apply(&c, Some(label), "services dhcp").unwrap();
        assert_eq!(got.capabilities.unwrap(), ["CAP_NET_ADMIN"]);
        assert_eq!(got.net, Some(Namespace::Host));
        assert_eq!(got.binds.unwrap(), ["/etc/resolv.conf:/etc/resolv.conf"]);
        assert_eq!(got.binds_add.unwrap(), ["/a:/a"]);
        assert_eq!(got.readiness, Some(Readiness::File("/run/dhcp/bound".into())));
        assert_eq!(got.name, "dhcp");
    }

    #[test]
    fn no_label_changes_nothing() {
        let c = container("{name: a, image: b}");
        assert_eq!(apply(&c, None, "x").unwrap(), c);
    }

    #[test]
    fn bad_labels_are_errors_that_name_the_container_and_field() {
        let c = container("{name: a, image: b}");
        let e = apply(&c, Some("[1]"), "services a").unwrap_err();
        assert!(
            e.contains("services a: image label org.mobyproject.config: not a JSON object"),
            "{e}"
        );
        let e = apply(&c, Some(r#"{"capabilites": []}"#), "services a").unwrap_err();
        assert!(e.contains("unknown field `capabilites`"), "{e}");
        let e = apply(&c, Some(r#"{"net": 3}"#), "services a").unwrap_err();
        assert!(e.contains("net"), "{e}");
        let e = apply(&c, Some(r#"{"capabilities": ["CAP_FLY"]}"#), "services a").unwrap_err();
        assert!(e.contains("unknown capability \"CAP_FLY\""), "{e}");
        let e = apply(&c, Some("{"), "services a").unwrap_err();
        assert!(e.contains("services a: image label"), "{e}");
    }
}
