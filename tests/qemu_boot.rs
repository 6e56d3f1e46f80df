//! Boot tests: build the test image, boot it in QEMU (TCG) with keel as PID 1, and read the
//! serial console. Each test fails with the whole console log when an expected line is
//! missing or out of order, or when the VM does not power itself off.
//!
//! Inputs (scripts/test.sh sets them): KEEL_BIN, the static keel binary; KEEL_KERNEL, the
//! kernel built from kernel-config/; KEEL_STOCK_KERNEL, Debian's stock kernel.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const BOOT_LIMIT: Duration = Duration::from_secs(300);

fn build_image(src: &str) -> PathBuf {
    let out = scratch("image").join("initrd.img");
    build_image_with(src, &out, &keel_bin());
    out
}

struct Boot {
    console: String,
    /// The VM ended by itself (or reached `until`), rather than being killed at the limit.
    exited: bool,
}

fn boot(kernel: &Path, initrd: &Path, cmdline: &str) -> Boot {
    boot_until(kernel, initrd, cmdline, None, "", Duration::ZERO).0
}

/// Boot and wait for QEMU to exit, or (for a halt, after which QEMU stays up) for `until`
/// to appear on the console; then wait `hold` and stop QEMU. Also returns whether QEMU was
/// still running at the end of `hold`.
fn boot_until(
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    until: Option<&str>,
    qemu_args: &str,
    hold: Duration,
) -> (Boot, bool) {
    let mut held = false;
    let (mut child, console, reader) = spawn_qemu(kernel, initrd, cmdline, qemu_args);
    let start = Instant::now();
    let seen = |pat: &str| String::from_utf8_lossy(&console.lock().unwrap()).contains(pat);
    let exited = loop {
        if let Ok(Some(_)) = child.try_wait() {
            break true;
        }
        if until.is_some_and(seen) {
            std::thread::sleep(hold.max(Duration::from_millis(200)));
            held = matches!(child.try_wait(), Ok(None));
            let _ = child.kill();
            let _ = child.wait();
            break true;
        }
        if start.elapsed() > BOOT_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = reader.join();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let console = clean_console(&console.lock().unwrap()) + &err;
    (Boot { console, exited }, held)
}

/// Every pattern must appear, in this order, each on a line after the previous one's.
fn assert_in_order(b: &Boot, what: &str, expected: &[&str], forbidden: &[&str]) {
    let mut problems = console_problems(&b.console, expected, forbidden);
    if !b.exited {
        problems.push(format!(
            "QEMU did not exit within {BOOT_LIMIT:?}: the boot or shutdown hung"
        ));
    }
    if !problems.is_empty() {
        panic!(
            "{what}:\n  {}\n----- console -----\n{}\n----- end of console -----",
            problems.join("\n  "),
            b.console
        );
    }
}

const NEVER: &[&str] = &[
    "Kernel panic",
    "Attempted to kill init",
    "keel: internal error",
    "KEEL-CHECK: FAIL",
    "TIMEOUT waiting for",
];

fn full_boot(kernel: &Path, what: &str) {
    require_root();
    let initrd = build_image("tests/images/boot");
    let b = boot(kernel, &initrd, "keel.debug");
    assert_in_order(
        &b,
        what,
        &[
            "keel: keel ",
            "keel: [  OK  ] mounted /proc /sys /dev /dev/pts /dev/shm /dev/mqueue /run /tmp /sys/fs/cgroup",
            "keel: hostname keel-test",
            "keel: 4 onboot, 2 services, 1 onshutdown containers in /containers",
            "keel: running onboot hello",
            "hello: onboot container ran (pid 1)",
            "keel: [  OK  ] onboot hello finished: exit code 0",
            "keel: running onboot fail",
            "keel: [FAILED] onboot fail failed: exit code 3",
            "keel: running onboot hang",
            "keel: [FAILED] onboot hang timed out after 2s; killing it",
            "keel: [FAILED] onboot hang failed: timed out (signal SIGKILL)",
            "keel: running onboot orphans",
            "orphans: leaving 20 children behind",
            "keel: reaped orphan",
            "keel: [  OK  ] onboot orphans finished: exit code 0",
            "keel: [  OK  ] started service svc",
            "KEEL-CHECK: PASS",
            "keel: poweroff requested through /run/keel/initctl",
            "svc: got SIGTERM",
            "keel: stopped service svc: exit code 0",
            "keel: running onshutdown bye",
            "bye: onshutdown container ran",
            "keel: [  OK  ] onshutdown bye finished: exit code 0",
            "keel: poweroff now",
            "reboot: Power down",
        ],
        NEVER,
    );
}

#[test]
fn boots_on_the_keel_kernel() {
    full_boot(&env_path("KEEL_KERNEL"), "boot on the keel kernel");
}

#[test]
fn boots_on_the_debian_stock_kernel() {
    full_boot(&env_path("KEEL_STOCK_KERNEL"), "boot on Debian's stock kernel");
}

#[test]
fn onboot_failure_policy_poweroff_stops_the_boot() {
    require_root();
    let initrd = build_image("tests/images/boot");
    let b = boot(&env_path("KEEL_KERNEL"), &initrd, "keel.onboot_failure=poweroff");
    assert_in_order(
        &b,
        "keel.onboot_failure=poweroff",
        &[
            "keel: [  OK  ] onboot hello finished: exit code 0",
            "keel: [FAILED] onboot fail failed: exit code 3",
            "keel: [FAILED] boot stopped: onboot fail failed and keel.onboot_failure=poweroff; no services will start",
            "keel: running onshutdown bye",
            "bye: onshutdown container ran",
            "keel: poweroff now",
            "reboot: Power down",
        ],
        &[NEVER, &["running onboot hang", "started service", "svc: running"]].concat(),
    );
}

#[test]
fn signals_to_pid1_follow_busybox_conventions() {
    require_root();
    let kernel = env_path("KEEL_KERNEL");
    let initrd = build_image("tests/images/boot");
    let b = boot(&kernel, &initrd, "keel_test.shutdown=sigint");
    assert_in_order(
        &b,
        "SIGINT reboots",
        &[
            "KEEL-CHECK: PASS",
            "keel: reboot requested by SIGINT",
            "svc: got SIGTERM",
            "bye: onshutdown container ran",
            "keel: reboot now",
            "reboot: Restarting system",
        ],
        NEVER,
    );
    let (b, _) = boot_until(
        &kernel,
        &initrd,
        "keel_test.shutdown=sigusr1",
        Some("reboot: System halted"),
        "",
        Duration::ZERO,
    );
    assert_in_order(
        &b,
        "SIGUSR1 halts",
        &[
            "KEEL-CHECK: PASS",
            "keel: halt requested by SIGUSR1",
            "svc: got SIGTERM",
            "bye: onshutdown container ran",
            "keel: halt now",
            "reboot: System halted",
        ],
        NEVER,
    );
}

#[test]
fn services_are_supervised_restarted_and_ordered() {
    require_root();
    let initrd = build_image("tests/images/supervise");
    let b = boot(&env_path("KEEL_KERNEL"), &initrd, "");
    let order = |what: &str, lines: &[&str]| assert_in_order(&b, what, lines, NEVER);
    order(
        "crash loop: growing delays, then the start limit",
        &[
            "keel: [  OK  ] started service crash",
            "keel: [ WARN ] service crash exited: exit code 1",
            "keel: restarting service crash in 50ms",
            "keel: restarting service crash in 100ms",
            "keel: restarting service crash in 200ms",
            "keel: [FAILED] service crash failed: start limit reached: 4 starts within 1m; not restarting it",
            "keel: poweroff now",
        ],
    );
    order(
        "readiness through sd_notify gates the dependent service",
        &[
            "keel: [  OK  ] started service db (waiting for READY=1)",
            "db: ready",
            "keel: [  OK  ] service db is ready",
            "keel: [  OK  ] started service web",
            "web: started",
        ],
    );
    order(
        "readiness through a ready file",
        &[
            "keel: [  OK  ] started service rf (waiting for /tmp/ready)",
            "keel: [  OK  ] service rf is ready",
        ],
    );
    order(
        "shutdown stops the dependent first, each with SIGTERM",
        &[
            "keel: poweroff requested through /run/keel/ctl.sock",
            "web: got SIGTERM",
            "keel: stopped service web: exit code 0",
            "db: got SIGINT",
            "keel: stopped service db: exit code 0",
            "reboot: Power down",
        ],
    );
    order(
        "a health check gates readiness, and failing checks restart the service",
        &[
            "keel: [  OK  ] started service flaky (waiting for its health check)",
            "keel: [  OK  ] service flaky is ready (health check passed)",
            "flaky | flaky: going unhealthy",
            "keel: [ WARN ] health check of service flaky failed (1/2)",
            "keel: [ WARN ] health check of service flaky failed (2/2)",
            "keel: [FAILED] service flaky is unhealthy after 2 failed checks; restarting it",
            "flaky | flaky: got SIGTERM",
            "keel: restarting service flaky in 100ms",
            "keel: [  OK  ] started service flaky (waiting for its health check)",
            "keel: [  OK  ] service flaky is ready (health check passed)",
        ],
    );
    order(
        "keel ctl from a container that binds the socket",
        &[
            "driver | == list",
            "driver | NAME",
            "driver | == status crash",
            "driver | reason:    start limit reached: 4 starts within 1m",
            "keel: stopping service web on request",
            "web | web: got SIGTERM",
            "keel: stopped service web on request: exit code 0",
            "driver | state:     stopped",
            "keel: starting service web on request",
            "driver | state:     running",
            "keel: restarting service db on request",
            "keel: service db stopped for restart: exit code 0",
            "keel: [  OK  ] service db is ready",
            "driver | restarts:  1",
            "driver | status:    serving",
            "driver | memory:",
            "driver | pids:",
            "driver | == logs db",
            "out db: ready",
            "driver | == boot",
            "phase    kernel",
            "service  db",
            "driver | {\"ok\":true,\"data\":{\"services\":[",
            "driver | == own",
            "out keel 0.1.0 starting as PID 1",
            "driver | == kernel",
            "out Run /init as init process",
            "driver | keel ctl: no such unit: nosuch",
            "driver | rc=1",
            "keel: poweroff requested through /run/keel/ctl.sock",
            "reboot: Power down",
        ],
    );
    // `keel ctl list --json` is one parseable JSON object describing every unit.
    let json = b
        .console
        .lines()
        .find_map(|l| l.strip_prefix("driver | {\"ok\":true"))
        .map(|rest| format!("{{\"ok\":true{rest}"));
    let parsed: serde_json::Value = match json.as_deref().map(serde_json::from_str) {
        Some(Ok(v)) => v,
        other => panic!("keel ctl list --json did not parse: {other:?}\n{}", b.console),
    };
    let services = parsed["data"]["services"].as_array().cloned().unwrap_or_default();
    let db = services.iter().find(|s| s["name"] == "db");
    assert!(
        db.is_some_and(|d| d["state"] == "running" && d["ready"] == true && d["pid"].is_i64()),
        "db in --json: {db:?}"
    );
    let crash = services.iter().find(|s| s["name"] == "crash");
    assert!(
        crash.is_some_and(|c| c["state"] == "failed" && c["restarts"] == 3),
        "crash in --json: {crash:?}"
    );
    let restarts = b.console.matches("keel: [  OK  ] started service crash").count();
    assert_eq!(restarts, 4, "crash must start exactly 4 times\n{}", b.console);
}

/// `watcher: KEY VALUE` from the logs image, as a number.
fn watcher_value(console: &str, key: &str) -> Option<u64> {
    let prefix = format!("watcher | watcher: {key} ");
    console
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

#[test]
fn output_is_captured_rotated_and_bounded_and_oom_kills_are_recorded() {
    require_root();
    let initrd = build_image("tests/images/logs");
    let mut b = boot(&env_path("KEEL_KERNEL"), &initrd, "");
    b.console = b.console.replace('\0', "");
    assert_in_order(
        &b,
        "memory hog",
        &[
            "hog | hog: eating memory",
            "Memory cgroup out of memory: Killed process",
            "keel: [ WARN ] service hog was killed by the out-of-memory killer (its memory limit)",
            "keel: [ WARN ] service hog exited: signal SIGKILL",
            "watcher | watcher: hog last exit: signal SIGKILL (out of memory)",
            "keel: poweroff now",
        ],
        NEVER,
    );
    assert_in_order(
        &b,
        "log flood",
        &[
            "watcher | watcher: rss-before",
            "watcher | watcher: rss-after",
            "watcher | watcher: file chatty.log ",
            "watcher | watcher: file chatty.log.1 ",
            "watcher | watcher: file chatty.log.2 ",
            "watcher | [",
            "out chatty: done",
            "reboot: Power down",
        ],
        &[NEVER, &["chatty.log.3", "chatty | chatty"]].concat(),
    );
    let fail = |why: String| -> ! { panic!("{why}\n----- console -----\n{}", b.console) };
    let (before, after) = match (
        watcher_value(&b.console, "rss-before"),
        watcher_value(&b.console, "rss-after"),
    ) {
        (Some(x), Some(y)) => (x, y),
        _ => fail("no RSS figures from the watcher".into()),
    };
    if after > before + 512 {
        fail(format!(
            "PID 1 grew from {before} kB to {after} kB while a service flooded its output"
        ));
    }
    for f in ["chatty.log.1", "chatty.log.2"] {
        match watcher_value(&b.console, &format!("file {f}")) {
            Some(n) if n > 0 && n <= 1024 * 1024 => {}
            other => fail(format!(
                "{f}: size {other:?}, expected a rotated file of at most 1 MiB"
            )),
        }
    }
    // One line a second from `quiet`, none lost to the flood.
    let ticks = b.console.matches("quiet | quiet tick ").count() as u64;
    match watcher_value(&b.console, "quiet-lines") {
        Some(n) if n >= 3 && n + 4 >= ticks.min(100) => {}
        other => fail(format!(
            "quiet's lines in its ring: {other:?}, console shows {ticks}"
        )),
    }
}

#[test]
fn the_watchdog_is_petted_and_a_halted_machine_stays_halted() {
    require_root();
    let kernel = env_path("KEEL_KERNEL");
    let initrd = build_image("tests/images/boot");
    // If the watchdog fires, QEMU powers the VM off: without petting the boot ends early
    // (verified by disabling the keepalive). After the halt the VM must stay halted; keel
    // disarms with the magic close, though this driver also stops itself on halt, so the
    // hold does not tell the two apart.
    let (b, held) = boot_until(
        &kernel,
        &initrd,
        "keel.watchdog=2s keel_test.shutdown=sigusr1",
        Some("reboot: System halted"),
        "-device i6300esb -action watchdog=poweroff",
        Duration::from_secs(8),
    );
    assert_in_order(
        &b,
        "watchdog",
        &[
            "keel: watchdog /dev/watchdog armed: timeout 2s",
            "keel: [FAILED] onboot hang timed out after 2s",
            "KEEL-CHECK: PASS",
            "keel: halt requested by SIGUSR1",
            "keel: halt now",
            "reboot: System halted",
        ],
        NEVER,
    );
    assert!(
        held,
        "the halted VM went away: the watchdog was not disarmed\n{}",
        b.console
    );
}

/// One boot for three things: log files on a persistent disk that an onboot container mounts
/// over /var/log, every line forwarded to a syslog receiver on the host (UDP through QEMU's
/// user network), and a service restarted by its sd_notify watchdog.
#[test]
fn logs_reach_the_persistent_disk_and_syslog_and_the_watchdog_restarts_a_silent_service() {
    require_root();
    let kernel = env_path("KEEL_KERNEL");
    let initrd = build_image("tests/images/persist");
    let dir = scratch("persist");
    // The disk: ext4 made on the host, with a log line from an earlier boot already there.
    let disk = dir.join("disk.img");
    let run = |cmd: &mut Command| {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e} (install e2fsprogs)"));
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    std::fs::File::create(&disk).unwrap().set_len(16 << 20).unwrap();
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&disk));
    let earlier = dir.join("earlier");
    std::fs::write(&earlier, "0.500000 out talker: from the previous boot\n").unwrap();
    run(Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg(format!("write {} talker.log", earlier.display()))
        .arg(&disk));

    // The syslog receiver: the guest reaches the host's loopback as 10.0.2.2.
    let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = receiver.local_addr().unwrap().port();
    receiver
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    let collector = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(n) = receiver.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        got
    });
    let (b, _) = boot_until(
        &kernel,
        &initrd,
        &format!("keel.syslog=udp://10.0.2.2:{port}"),
        None,
        &format!(
            "-drive file={},format=raw,if=virtio -netdev user,id=n0 -device virtio-net-pci,netdev=n0",
            disk.display()
        ),
        Duration::ZERO,
    );
    std::thread::sleep(Duration::from_millis(300));
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let messages = collector.join().unwrap();
    let forbidden = [NEVER, &["could not unmount", "earlier log files left"]].concat();
    assert_in_order(
        &b,
        "the disk an onboot container mounts over /var/log gets the log files",
        &[
            "net: eth0 10.0.2.15/24 up",
            "disk: mounting /dev/vda on /var/log",
            "disk: mounted /dev/vda on /var/log",
            "keel: [  OK  ] /var/log is on another filesystem now: log files reopened there; earlier log files appended there: onboot-net.log (",
            "keel: [  OK  ] onboot disk finished: exit code 0",
            "keel: [  OK  ] started service talker",
            "reboot: Power down",
        ],
        &forbidden,
    );
    assert_in_order(
        &b,
        "the sd_notify watchdog",
        &[
            "wd: WATCHDOG_USEC=2000000",
            "wd: going silent",
            "keel: [FAILED] service wd missed its watchdog: no WATCHDOG=1 within 2s; sending SIGABRT",
            "wd: got SIGABRT",
            "keel: restarting service wd in 100ms",
            "keel: [  OK  ] started service wd",
            "driver: restarts:  1",
            "driver: last exit: exit code 3 (watchdog timeout: no WATCHDOG=1 within 2s)",
            "keel: poweroff requested through /run/keel/ctl.sock",
            "reboot: Power down",
        ],
        &forbidden,
    );

    // Syslog: the service's lines under its own name, stderr as a warning (facility daemon:
    // <30> info, <28> warning), the onboot lines queued until the network was up, and
    // PID 1's own messages as `keel`.
    // RFC 5424: <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID(stream) - TEXT
    for (pri, app, tail) in [
        ("<30>", "talker", "1 - talker: hello on stdout"),
        ("<28>", "talker", "2 - talker: trouble on stderr"),
        ("<30>", "onboot-net", "1 - net: eth0 10.0.2.15/24 up"),
        ("<30>", "onboot-disk", "1 - disk: mounted /dev/vda on /var/log"),
        ("<29>", "keel", "1 - started service talker"),
        (
            "<27>",
            "keel",
            "2 - service wd missed its watchdog: no WATCHDOG=1 within 2s; sending SIGABRT",
        ),
    ] {
        let head = format!("{pri}1 ");
        let from = format!(" keel-persist {app} ");
        assert!(
            messages
                .iter()
                .any(|m| m.starts_with(&head) && m.contains(&from) && m.ends_with(&format!(" {tail}"))),
            "no syslog message {head}...{from}...{tail}; received:\n{}\n----- console -----\n{}",
            messages.join("\n"),
            b.console
        );
    }

    // After poweroff the disk holds the logs: the earlier boot's line, then this boot's.
    let cat = |name: &str| {
        run(Command::new("debugfs")
            .arg("-R")
            .arg(format!("cat {name}"))
            .arg(&disk))
    };
    let talker = cat("talker.log");
    let lines: Vec<&str> = talker.lines().collect();
    assert!(
        lines.first() == Some(&"0.500000 out talker: from the previous boot")
            && lines.iter().any(|l| l.ends_with(" out talker: hello on stdout"))
            && lines
                .iter()
                .any(|l| l.ends_with(" err talker: trouble on stderr")),
        "talker.log on the disk:\n{talker}\n----- console -----\n{}",
        b.console
    );
    for (file, line) in [
        ("onboot-disk.log", " out disk: mounting /dev/vda on /var/log"),
        ("onboot-disk.log", " out disk: mounted /dev/vda on /var/log"),
        ("onboot-net.log", " out net: eth0 10.0.2.15/24 up"),
        ("wd.log", " out wd: got SIGABRT"),
    ] {
        let text = cat(file);
        assert!(text.contains(line), "{file} on the disk:\n{text}");
    }
    // Unmounted cleanly at poweroff (nothing held it busy): no journal left to replay, and
    // nothing to repair.
    let header = run(Command::new("dumpe2fs").arg("-h").arg(&disk));
    assert!(
        header.contains("Filesystem state:         clean") && !header.contains("needs_recovery"),
        "the disk was not unmounted cleanly:\n{header}\n----- console -----\n{}",
        b.console
    );
    run(Command::new("e2fsck").args(["-f", "-n"]).arg(&disk));
}
