use super::*;

const LINUXKIT: &str = r#"
kernel:
  image: linuxkit/kernel:6.6.13
  cmdline: "console=tty0 console=ttyS0 console=ttyAMA0"
init:
  - linuxkit/init:8f1e6a0747acbbb4d7e24dc98f97faa8d1c6cec7
  - linuxkit/runc:6062483d748609d505f2bcde4e52ee64a3329f5f
onboot:
  - name: sysctl
    image: linuxkit/sysctl:bdc99eeedc224439ff237990ee06e5b992c8c1ae
  - name: dhcpcd
    image: linuxkit/dhcpcd:daa0d7a91a9df3a94fdb4f3cb6cd4e7e3fdba7b2
    command: ["/sbin/dhcpcd", "--nobackground", "-f", "/dhcpcd.conf", "-1"]
onshutdown:
  - name: shutdown
    image: busybox:latest
    command: ["/bin/echo", "so long and thanks for all the fish"]
services:
  - name: getty
    image: linuxkit/getty:76951a596aa5e0867a38e28f0b94d620e948e3e8
    env:
     - INSECURE=true
  - name: rngd
    image: linuxkit/rngd:4f85d8de3f6f45973a8c88dc8fba9ec596e5495a
  - name: nginx
    image: nginx:1.19.5-alpine
    capabilities:
     - CAP_NET_BIND_SERVICE
     - CAP_CHOWN
     - CAP_SETUID
     - CAP_SETGID
     - CAP_DAC_OVERRIDE
    binds:
     - /etc/resolv.conf:/etc/resolv.conf
    runtime:
      mkdir:
        - /var/cache/nginx
files:
  - path: etc/linuxkit-config
    metadata: yaml
  - path: etc/getty.shadow
    contents: 'root:$6$...:17322:0:::::'
    mode: "0600"
trust:
  org:
    - linuxkit
"#;

fn err(text: &str) -> String {
    match parse(text, "test.yml") {
        Ok(m) => panic!("accepted: {m:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_linuxkit_file_parses_unchanged() {
    let m = parse(LINUXKIT, "linuxkit.yml").unwrap();
    assert_eq!(
        m.kernel.as_ref().and_then(|k| k.image.as_deref()),
        Some("linuxkit/kernel:6.6.13")
    );
    assert_eq!(m.init.len(), 2);
    assert_eq!(
        m.onboot.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["sysctl", "dhcpcd"]
    );
    assert_eq!(m.onboot[1].command.as_ref().map(Vec::len), Some(5));
    assert_eq!(
        m.services[0].env.as_deref(),
        Some(&["INSECURE=true".to_string()][..])
    );
    assert_eq!(m.services[2].capabilities.as_ref().map(Vec::len), Some(5));
    assert_eq!(
        m.services[2].runtime.as_ref().map(|r| r.mkdir.clone()),
        Some(vec!["/var/cache/nginx".into()])
    );
    assert_eq!(m.files[1].mode.as_deref(), Some("0600"));
    assert_eq!(m.onshutdown[0].image, "busybox:latest");
}

#[test]
fn every_container_field() {
    let m = parse(
        r#"
services:
  - name: db
    image: ./images/db
    command: [/bin/db]
    env: [A=1]
    cwd: /srv
    capabilities: [NET_ADMIN, CAP_SYS_TIME]
    ambient: [CAP_NET_ADMIN]
    binds: ["/var/db:/data:rw"]
    binds.add: ["/etc/x:/etc/x"]
    mounts: [{destination: /m, type: tmpfs, source: tmpfs, options: [nosuid]}]
    tmpfs: ["/run:size=1m"]
    devices: [{path: /dev/fuse, type: c, major: 10, minor: 229, mode: "0666"}]
    net: none
    pid: host
    ipc: new
    uts: /proc/1/ns/uts
    hostname: db1
    readonly: true
    maskedPaths: [/proc/kcore]
    readonlyPaths: [/proc/sys]
    uid: 100
    gid: db
    additionalGids: [5, audio]
    noNewPrivileges: true
    oomScoreAdj: -500
    rootfsPropagation: shared
    cgroupsPath: /keel/db
    resources: {memory: {limit: 67108864}, pids: {limit: 64}}
    sysctl: {net.ipv4.ip_forward: "1"}
    rlimits: ["nofile,1024,4096"]
    annotations: {x.y: z}
    runtime: {mkdir: [/var/db], cgroups: [db], namespace: db}
    restart: on-failure
    readiness: notify
    healthcheck: {command: [/bin/db, ping], interval: 5s, timeout: 500ms, retries: 2}
    seccomp: unconfined
    stop_timeout: 20
    stop_signal: SIGINT
    start_timeout: 1m
    watchdog: 30s
    console: false
  - name: web
    image: web
    depends_on: [db]
    readiness: {file: /run/ready}
"#,
        "all.yml",
    )
    .unwrap();
    let db = &m.services[0];
    assert_eq!(db.net, Some(Namespace::None));
    assert_eq!(db.pid, Some(Namespace::Host));
    assert_eq!(db.ipc, Some(Namespace::New));
    assert_eq!(db.uts, Some(Namespace::Path("/proc/1/ns/uts".into())));
    assert_eq!(db.restart, Some(Restart::OnFailure));
    assert_eq!(db.readiness, Some(Readiness::Notify));
    assert_eq!(
        db.stop_timeout,
        Some(Duration(std::time::Duration::from_secs(20)))
    );
    assert_eq!(
        db.start_timeout,
        Some(Duration(std::time::Duration::from_secs(60)))
    );
    assert_eq!(db.watchdog, Some(Duration(std::time::Duration::from_secs(30))));
    let h = db.healthcheck.as_ref().unwrap();
    assert_eq!(h.interval, Some(Duration(std::time::Duration::from_secs(5))));
    assert_eq!(h.timeout, Some(Duration(std::time::Duration::from_millis(500))));
    assert_eq!(db.oom_score_adj, Some(-500));
    assert_eq!(db.sysctl.as_ref().unwrap()["net.ipv4.ip_forward"], "1");
    assert_eq!(
        m.services[1].readiness,
        Some(Readiness::File("/run/ready".into()))
    );
    assert_eq!(m.services[1].depends_on, ["db"]);
}

#[test]
fn unknown_fields_name_the_file_the_container_and_the_field() {
    let e = err(
        "services:\n  - name: getty\n    image: x\n  - name: web\n    image: y\n    capabilites: [all]\n",
    );
    assert!(
        e.starts_with("test.yml: services[1] (web): unknown field `capabilites`"),
        "{e}"
    );
    assert!(e.contains("line 6"), "{e}");
    let e = err("kernal:\n  image: x\n");
    assert!(
        e.starts_with("test.yml: top level") && e.contains("unknown field `kernal`"),
        "{e}"
    );
    let e = err("services:\n  - name: a\n    image: x\n    runtime: {mkdirs: [/x]}\n");
    assert!(
        e.starts_with("test.yml: services[0] (a).runtime: unknown field `mkdirs`"),
        "{e}"
    );
}

#[test]
fn wrong_types_name_the_field() {
    let e = err("services:\n  - name: a\n    image: x\n    capabilities: CAP_NET_ADMIN\n");
    assert!(
        e.contains("services[0] (a).capabilities") && e.contains("line 4"),
        "{e}"
    );
    let e = err("onboot:\n  - name: a\n    image: x\n    readonly: maybe\n");
    assert!(e.contains("onboot[0] (a).readonly"), "{e}");
    let e = err("services:\n  - name: a\n    image: x\n    net: sideways\n");
    assert!(
        e.contains("services[0] (a).net") && e.contains("expected host, new, none"),
        "{e}"
    );
    let e = err("services:\n  - name: a\n    image: x\n    stop_timeout: soon\n");
    assert!(
        e.starts_with("test.yml: services[0] (a).stop_timeout: invalid duration \"soon\""),
        "{e}"
    );
    let e = err("services:\n  - name: a\n    image: x\n    restart: sometimes\n");
    assert!(e.contains("services[0] (a).restart"), "{e}");
    let e = err("services:\n  - image: x\n");
    assert!(
        e.contains("services[0]") && e.contains("missing field `name`"),
        "{e}"
    );
    let e = err("services: [\n");
    assert!(e.starts_with("test.yml: "), "{e}");
}

#[test]
fn meaning_checks() {
    let e = err("services:\n  - {name: a, image: x}\n  - {name: a, image: y}\n");
    assert!(
        e.contains("services[1] (a).name: services[0] has the same name"),
        "{e}"
    );
    let e = err("services:\n  - {name: a, image: x, capabilities: [CAP_FLY]}\n");
    assert!(e.contains("unknown capability \"CAP_FLY\""), "{e}");
    let e = err("onboot:\n  - {name: a, image: x, restart: always}\n");
    assert!(e.contains("onboot[0] (a).restart: only services have it"), "{e}");
    let e = err("onshutdown:\n  - {name: a, image: x, watchdog: 5s}\n");
    assert!(
        e.contains("onshutdown[0] (a).watchdog: only services have it"),
        "{e}"
    );
    let e = err("services:\n  - {name: a, image: x, watchdog: 0}\n");
    assert!(e.contains("services[0] (a).watchdog: must be above zero"), "{e}");
    let e = err("services:\n  - {name: a, image: x, readiness: healthcheck}\n");
    assert!(e.contains("healthcheck needs a healthcheck"), "{e}");
    let e = err("services:\n  - {name: a, image: x, readiness: {file: run/x}}\n");
    assert!(e.contains("not an absolute path"), "{e}");
    let e = err("services:\n  - {name: 'a b', image: x}\n");
    assert!(e.contains("services[0] (a b).name"), "{e}");
    assert!(parse("services:\n  - {name: a, image: x, capabilities: [all]}\n", "t").is_ok());
}

#[test]
fn dependencies_must_exist_and_form_no_cycle() {
    let e = err("services:\n  - {name: a, image: x, depends_on: [nope]}\n");
    assert!(
        e.contains("services[0] (a).depends_on: no service named \"nope\""),
        "{e}"
    );
    let e = err(
        "services:\n  - {name: a, image: x, depends_on: [b]}\n  - {name: b, image: x, depends_on: [c]}\n  - {name: c, image: x, depends_on: [a]}\n",
    );
    assert!(e.contains("dependency cycle: a -> b -> c -> a"), "{e}");
    let e = err("services:\n  - {name: a, image: x, depends_on: [a]}\n");
    assert!(e.contains("dependency cycle: a -> a"), "{e}");
    assert!(parse(
        "services:\n  - {name: a, image: x, depends_on: [b, c]}\n  - {name: b, image: x, depends_on: [c]}\n  - {name: c, image: x}\n",
        "t"
    )
    .is_ok());
}

#[test]
fn empty_manifest_is_an_image_with_nothing() {
    let m = parse("{}\n", "t").unwrap();
    assert_eq!(m, Manifest::default());
}

#[test]
fn syslog_becomes_kernel_options() {
    let m = parse(
        "kernel: {image: k, cmdline: \"console=ttyS0\"}\nsyslog: udp://10.0.2.2:514\n",
        "t.yml",
    )
    .unwrap();
    assert_eq!(m.cmdline(), "console=ttyS0 keel.syslog=udp://10.0.2.2:514");
    let m = parse(
        "syslog: {destination: \"tcp://[fd00::1]:601\", facility: local0, format: rfc3164}\n",
        "t.yml",
    )
    .unwrap();
    assert_eq!(
        m.cmdline(),
        "keel.syslog=tcp://[fd00::1]:601 keel.syslog_facility=local0 keel.syslog_format=rfc3164"
    );
    assert_eq!(parse("kernel: {image: k}\n", "t.yml").unwrap().cmdline(), "");
    for (yaml, want) in [
        (
            "syslog: udp://logs.example:514\n",
            "syslog: syslog destination \"udp://logs.example:514\": the host must be an IP address",
        ),
        (
            "syslog: {destination: unix:/dev/log, facility: mars}\n",
            "syslog: syslog facility \"mars\"",
        ),
        (
            "syslog: {destination: unix:/dev/log, format: json}\n",
            "syslog: syslog format \"json\"",
        ),
        (
            "syslog: {destination: unix:/dev/log, level: 3}\n",
            "expected a destination or {destination, facility, format}",
        ),
    ] {
        let e = err(yaml);
        assert!(e.contains(want), "{yaml}: {e}");
    }
}

/// Found by fuzzing: a stop_signal PID 1 cannot use was accepted by the build, and the
/// device then warned at every boot and fell back to SIGTERM.
#[test]
fn stop_signals_the_device_refuses_are_refused() {
    let e = err("services:\n  - {name: a, image: x, stop_signal: SIGINX}\n");
    assert!(e.contains("services[0] (a).stop_signal: \"SIGINX\""), "{e}");
    let e = err("onboot:\n  - {name: a, image: x, stop_signal: KILL}\n");
    assert!(e.contains("onboot[0] (a).stop_signal"), "{e}");
    let ok =
        "services:\n  - {name: a, image: x, stop_signal: hup}\n  - {name: b, image: x, stop_signal: '10'}\n";
    assert!(parse(ok, "t").is_ok());
}

/// The build accepted `retries: 0`, which PID 1 refuses (keeping 3): the manifest target's
/// property, on a hand-written input.
#[test]
fn zero_health_retries_are_refused() {
    let e = err("services:\n  - {name: a, image: x, healthcheck: {command: [x], retries: 0}}\n");
    assert!(
        e.contains("services[0] (a).healthcheck.retries: at least 1"),
        "{e}"
    );
}

/// A number of seconds over u64 milliseconds passed the build and was then refused by PID 1,
/// which fell back to the default: the manifest target's property, on a hand-written input.
#[test]
fn durations_the_device_cannot_hold_are_refused() {
    let e = err("services:\n  - {name: a, image: x, stop_timeout: 18446744073709552}\n");
    assert!(
        e.contains("services[0] (a).stop_timeout: 18446744073709552 seconds is too long"),
        "{e}"
    );
    let ok = "services:\n  - {name: a, image: x, stop_timeout: 18446744073709551}\n";
    assert!(parse(ok, "t").is_ok());
}

/// `org.keel.*` annotations written directly in the manifest passed the build whatever their
/// value; PID 1 then warned and kept its default (the manifest fuzz target's property, on a
/// hand-written input).
#[test]
fn keel_annotations_are_checked_as_pid1_reads_them() {
    let e = err("services:\n  - {name: a, image: x, annotations: {org.keel.restart: sometimes}}\n");
    assert!(
        e.contains("services[0] (a).annotations: annotation org.keel.restart=\"sometimes\""),
        "{e}"
    );
    let ok = "services:\n  - {name: a, image: x, annotations: {org.keel.restart_delay: 1s, org.keel.seccomp: default, other: x}}\n";
    assert!(parse(ok, "t").is_ok());
}

#[test]
fn zero_health_intervals_are_refused() {
    let e = err("services:\n  - {name: a, image: x, healthcheck: {command: [x], interval: 0s}}\n");
    assert!(
        e.contains("services[0] (a).healthcheck.interval: must be above zero"),
        "{e}"
    );
    let e = err("services:\n  - {name: a, image: x, healthcheck: {command: [x], timeout: 0}}\n");
    assert!(e.contains("healthcheck.timeout: must be above zero"), "{e}");
}
