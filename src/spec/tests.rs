use super::*;
use crate::manifest::parse;

fn container(yaml: &str) -> Container {
    let m = parse(&format!("services:\n  - {yaml}\n"), "t.yml").unwrap();
    m.services.into_iter().next().unwrap()
}

fn image() -> ImageDefaults {
    ImageDefaults {
        entrypoint: vec!["/bin/server".into()],
        cmd: vec!["--port".into(), "80".into()],
        env: vec!["PATH=/bin".into(), "MODE=prod".into()],
        working_dir: Some("/srv".into()),
        user: Some("100:200".into()),
    }
}

#[test]
fn the_default_posture_is_strict() {
    let s = generate(&container("{name: web, image: x}"), Section::Service, &image()).unwrap();
    let p = &s["process"];
    assert_eq!(p["args"], json!(["/bin/server", "--port", "80"]));
    assert_eq!(p["cwd"], "/srv");
    assert_eq!(p["user"], json!({"uid": 100, "gid": 200}));
    assert_eq!(p["noNewPrivileges"], true);
    for set in ["bounding", "effective", "permitted", "inheritable", "ambient"] {
        assert_eq!(p["capabilities"][set], json!([]), "{set}");
    }
    assert_eq!(s["root"], json!({"path": "rootfs", "readonly": true}));
    let ns: Vec<&str> = s["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        ns,
        ["mount", "pid", "ipc", "uts"],
        "host network by default, the rest new"
    );
    assert_eq!(s["linux"]["resources"]["pids"]["limit"], DEFAULT_PIDS_LIMIT);
    assert_eq!(
        s["linux"]["resources"]["devices"],
        json!([{"allow": false, "access": "rwm"}])
    );
    assert_eq!(
        s["linux"]["maskedPaths"].as_array().unwrap().len(),
        MASKED_PATHS.len()
    );
    assert!(s["linux"]["maskedPaths"]
        .as_array()
        .unwrap()
        .contains(&json!("/proc/kcore")));
    assert!(s["linux"]["readonlyPaths"]
        .as_array()
        .unwrap()
        .contains(&json!("/proc/sys")));
    assert_eq!(s["linux"]["cgroupsPath"], "/keel/services.web");
    assert_eq!(s["hostname"], "web");
    let dests: Vec<&str> = s["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["destination"].as_str().unwrap())
        .collect();
    for d in [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/tmp",
        "/run",
    ] {
        assert!(dests.contains(&d), "{d}");
    }
}

#[test]
fn the_manifest_loosens_and_overrides() {
    let c = container(
        "{name: ntp, image: x, command: [/bin/ntpd, -n], env: [MODE=dev, TZ=UTC], cwd: /, \
         capabilities: [SYS_TIME, CAP_NET_BIND_SERVICE], ambient: [CAP_SYS_TIME], readonly: false, \
         noNewPrivileges: false, net: new, pid: host, uts: /proc/1/ns/uts, uid: 0, gid: 0, \
         additionalGids: [5], oomScoreAdj: -100, binds: ['/var/ntp:/var/lib/ntp', '/etc/x:/etc/x:ro'], \
         tmpfs: ['/tmp:size=1m'], resources: {memory: {limit: 1048576}, pids: {limit: 10}}, \
         rlimits: ['nofile,10,20', 'core,0,unlimited'], sysctl: {net.ipv4.ip_forward: '1'}, \
         hostname: clock, cgroupsPath: /custom, maskedPaths: [/proc/kcore], \
         devices: [{path: /dev/rtc0, type: c, major: 252, minor: 0, mode: '0660'}]}",
    );
    let s = generate(&c, Section::Service, &image()).unwrap();
    let p = &s["process"];
    assert_eq!(p["args"], json!(["/bin/ntpd", "-n"]));
    assert_eq!(p["env"], json!(["PATH=/bin", "MODE=dev", "TZ=UTC"]));
    assert_eq!(p["user"], json!({"uid": 0, "gid": 0, "additionalGids": [5]}));
    assert_eq!(
        p["capabilities"]["bounding"],
        json!(["CAP_SYS_TIME", "CAP_NET_BIND_SERVICE"])
    );
    assert_eq!(p["capabilities"]["ambient"], json!(["CAP_SYS_TIME"]));
    assert_eq!(p["capabilities"]["inheritable"], json!(["CAP_SYS_TIME"]));
    assert_eq!(p["noNewPrivileges"], false);
    assert_eq!(p["oomScoreAdj"], -100);
    assert_eq!(
        p["rlimits"],
        json!([
            {"type": "RLIMIT_NOFILE", "soft": 10, "hard": 20},
            {"type": "RLIMIT_CORE", "soft": 0, "hard": u64::MAX},
        ])
    );
    assert_eq!(s["root"]["readonly"], false);
    let ns: Vec<Value> = s["linux"]["namespaces"].as_array().unwrap().clone();
    assert_eq!(
        ns,
        [
            json!({"type": "mount"}),
            json!({"type": "ipc"}),
            json!({"type": "uts", "path": "/proc/1/ns/uts"}),
            json!({"type": "network"})
        ]
    );
    assert_eq!(s["linux"]["resources"]["memory"]["limit"], 1048576);
    assert_eq!(s["linux"]["resources"]["pids"]["limit"], 10);
    assert_eq!(s["linux"]["sysctl"]["net.ipv4.ip_forward"], "1");
    assert_eq!(s["linux"]["cgroupsPath"], "/custom");
    assert_eq!(s["linux"]["maskedPaths"], json!(["/proc/kcore"]));
    assert_eq!(s["linux"]["devices"][0]["fileMode"], 0o660);
    assert_eq!(s["hostname"], "clock");
    let mounts = s["mounts"].as_array().unwrap();
    let find = |d: &str| mounts.iter().find(|m| m["destination"] == d).cloned().unwrap();
    assert_eq!(find("/var/lib/ntp")["options"], json!(["rbind", "rw"]));
    assert_eq!(find("/etc/x")["options"], json!(["rbind", "ro"]));
    assert_eq!(
        find("/tmp")["options"],
        json!(["nosuid", "nodev", "size=1m"]),
        "replaces the default /tmp"
    );
    assert_eq!(mounts.iter().filter(|m| m["destination"] == "/tmp").count(), 1);
}

#[test]
fn all_capabilities_and_net_none() {
    let s = generate(
        &container("{name: a, image: x, capabilities: [all], net: none}"),
        Section::Onboot,
        &image(),
    )
    .unwrap();
    let caps = s["process"]["capabilities"]["bounding"].as_array().unwrap();
    assert!(
        caps.len() >= 38 && caps.contains(&json!("CAP_SYS_ADMIN")),
        "{caps:?}"
    );
    assert!(s["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .contains(&json!({"type": "network"})));
    assert_eq!(s["linux"]["cgroupsPath"], "/keel/onboot.a");
}

#[test]
fn keel_fields_become_annotations() {
    let m = parse(
        "services:\n  - {name: a, image: x}\n  - {name: b, image: x}\n  - {name: db, image: x, restart: on-failure, \
         depends_on: [a, b], readiness: {file: /run/ok}, healthcheck: {command: [/bin/ok, -q], interval: 2s, \
         timeout: 1s, retries: 4}, stop_timeout: 5s, stop_signal: SIGINT, start_timeout: 1m, console: false, \
         seccomp: unconfined, annotations: {mine: yes}}\n",
        "t.yml",
    )
    .unwrap();
    let c = m.services[2].clone();
    let s = generate(&c, Section::Service, &image()).unwrap();
    let a = &s["annotations"];
    assert_eq!(a["mine"], "yes");
    assert_eq!(a["org.keel.restart"], "on-failure");
    assert_eq!(a["org.keel.depends_on"], "a,b");
    assert_eq!(a["org.keel.readiness"], "file:/run/ok");
    assert_eq!(a["org.keel.healthcheck"], "[\"/bin/ok\",\"-q\"]");
    assert_eq!(a["org.keel.health_interval"], "2000ms");
    assert_eq!(a["org.keel.health_timeout"], "1000ms");
    assert_eq!(a["org.keel.health_retries"], "4");
    assert_eq!(a["org.keel.stop_timeout"], "5000ms");
    assert_eq!(a["org.keel.stop_signal"], "SIGINT");
    assert_eq!(a["org.keel.start_timeout"], "60000ms");
    assert_eq!(a["org.keel.console"], "false");
    assert_eq!(a["org.keel.seccomp"], "unconfined");
    // And PID 1 reads them back as the same settings.
    let dir = std::env::temp_dir().join(format!("keel-spec-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("services/db")).unwrap();
    std::fs::write(
        dir.join("services/db/config.json"),
        serde_json::to_vec(&s).unwrap(),
    )
    .unwrap();
    let (b, warnings) = crate::init::containers::discover(&dir, &crate::init::cmdline::Options::default());
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let svc = &b[0].spec.service;
    assert_eq!(svc.restart, crate::supervisor::Restart::OnFailure);
    assert_eq!(svc.depends_on, ["a", "b"]);
    assert_eq!(
        svc.readiness,
        crate::supervisor::Readiness::File("/run/ok".into())
    );
    assert_eq!(svc.healthcheck.as_ref().map(|h| h.retries), Some(4));
    assert_eq!(b[0].spec.stop_signal, libc::SIGINT);
    assert!(!b[0].spec.console);
}

#[test]
fn errors_name_the_container_and_the_field() {
    let no_cmd = ImageDefaults::default();
    let e = generate(&container("{name: a, image: x}"), Section::Service, &no_cmd).unwrap_err();
    assert_eq!(
        e.to_string(),
        "a: command: none given, and the image has no Entrypoint or Cmd"
    );
    let bad = [
        ("{name: a, image: x, command: []}", "a: command: empty"),
        (
            "{name: a, image: x, cwd: srv}",
            "a: cwd: \"srv\" is not an absolute path",
        ),
        ("{name: a, image: x, uid: daemon}", "a: uid:"),
        (
            "{name: a, image: x, ambient: [CAP_SYS_TIME]}",
            "a: ambient: CAP_SYS_TIME is not among",
        ),
        (
            "{name: a, image: x, rlimits: [nofile]}",
            "a: rlimits: \"nofile\": expected NAME,SOFT,HARD",
        ),
        ("{name: a, image: x, rlimits: ['nofile,a,1']}", "is not a number"),
        (
            "{name: a, image: x, binds: [/x]}",
            "a: binds: \"/x\": expected SOURCE:DESTINATION",
        ),
        (
            "{name: a, image: x, binds: ['x:/y']}",
            "both paths must be absolute",
        ),
        ("{name: a, image: x, tmpfs: [run]}", "a: tmpfs:"),
        ("{name: a, image: x, pid: none}", "a: pid: none is for net only"),
        (
            "{name: a, image: x, userns: new}",
            "a: userns: user namespaces are not supported yet",
        ),
        (
            "{name: a, image: x, resources: 5}",
            "a: resources: expected a map",
        ),
        (
            "{name: a, image: x, devices: [{path: /dev/x, type: c, mode: '9'}]}",
            "mode \"9\" is not octal",
        ),
    ];
    for (yaml, want) in bad {
        let e = generate(&container(yaml), Section::Service, &image())
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{yaml}: {e}");
    }
}

#[test]
fn hostname_only_with_a_uts_namespace_of_its_own() {
    let m = parse(
        "services:\n  - {name: a, image: x, uts: host}\n  - {name: b, image: x, uts: host, hostname: h}\n  - {name: c, image: x}\n",
        "t.yml",
    )
    .unwrap();
    let s = generate(&m.services[0], Section::Service, &image()).unwrap();
    assert!(s.get("hostname").is_none());
    let e = generate(&m.services[1], Section::Service, &image()).unwrap_err();
    assert_eq!(e.field, "hostname");
    let s = generate(&m.services[2], Section::Service, &image()).unwrap();
    assert_eq!(s["hostname"], "c");
}

#[test]
fn the_watchdog_becomes_an_annotation_pid1_reads_back() {
    let c = container("{name: wd, image: x, watchdog: 10s}");
    let s = generate(&c, Section::Service, &image()).unwrap();
    assert_eq!(s["annotations"]["org.keel.watchdog"], "10000ms");
    let dir = std::env::temp_dir().join(format!("keel-spec-wd-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("services/wd")).unwrap();
    std::fs::write(
        dir.join("services/wd/config.json"),
        serde_json::to_vec(&s).unwrap(),
    )
    .unwrap();
    let (b, warnings) = crate::init::containers::discover(&dir, &crate::init::cmdline::Options::default());
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        b[0].spec.service.watchdog,
        Some(std::time::Duration::from_secs(10))
    );
}
