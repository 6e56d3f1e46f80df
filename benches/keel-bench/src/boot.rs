//! Boots in QEMU and what their consoles say: boot to all services ready against the
//! LinuxKit-style baseline, PID 1's memory, scale, and restart latency.
//!
//! Times come from the guest: the kernel's printk timestamp of "Run /init as init process",
//! keel's console timestamps (CLOCK_BOOTTIME) of its "started service" lines, and the
//! baseline's `keel-bench stamp` lines (CLOCK_BOOTTIME too, also written to /dev/kmsg so the
//! kernel's timestamp of the same moment shows the two clocks agree).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::images::{self, Contents, Tools};
use crate::stats::{fit, json_of, summary};
use crate::{invalid, Result};

pub struct Vm<'a> {
    pub repo: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub mem_mib: u32,
}

/// The console as text: no carriage returns, no colours.
fn clean(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw).replace('\r', "");
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Boot until `done` finds what is needed on the console, then stop the VM. The console is
/// saved to `log` whatever happens.
pub fn boot(vm: &Vm, done: &dyn Fn(&str) -> bool, limit: Duration, log: &Path) -> Result<String> {
    let mut child = Command::new(vm.repo.join("scripts/run-qemu.sh"))
        .env("KEEL_QEMU_MEM", vm.mem_mib.to_string())
        .arg(vm.kernel)
        .arg(vm.initrd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| invalid(format!("scripts/run-qemu.sh: {e}")))?;
    let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(invalid("run-qemu.sh: no pipes"));
    };
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let mut raw = Vec::new();
    let mut checked = Instant::now();
    let outcome = loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(chunk) => raw.extend(chunk),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break Some("QEMU ended"),
        }
        if checked.elapsed() >= Duration::from_millis(100) {
            checked = Instant::now();
            if done(&clean(&raw)) {
                break None;
            }
        }
        if start.elapsed() > limit {
            break Some("time limit reached");
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    drop(rx);
    let _ = reader.join();
    let stderr = errors.join().unwrap_or_default();
    let text = clean(&raw);
    let _ = fs::write(log, format!("{text}{stderr}"));
    match outcome {
        // QEMU may end right after printing the last line that was needed.
        Some(_) if done(&text) => Ok(text),
        Some(why) => {
            let tail: Vec<&str> = text
                .lines()
                .rev()
                .take(8)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            Err(invalid(format!(
                "{} on {}: {why} before the boot finished (console: {}): ...{}",
                vm.initrd.display(),
                vm.kernel.display(),
                log.display(),
                tail.join(" / ")
            )))
        }
        None => Ok(text),
    }
}

/// `[    1.234567] text` -> (1.234567, "text").
fn stamped(line: &str) -> Option<(f64, &str)> {
    let (ts, text) = line.strip_prefix('[')?.split_once(']')?;
    Some((
        ts.trim().parse().ok()?,
        text.strip_prefix(' ').unwrap_or(text).trim_end(),
    ))
}

fn first_ts(text: &str, what: impl Fn(&str) -> bool) -> Option<f64> {
    text.lines()
        .filter_map(stamped)
        .find(|(_, t)| what(t))
        .map(|(ts, _)| ts)
}

fn all_ts(text: &str, what: impl Fn(&str) -> bool) -> Vec<f64> {
    text.lines()
        .filter_map(stamped)
        .filter(|(_, t)| what(t))
        .map(|(ts, _)| ts)
        .collect()
}

/// The numbers of `BENCH <word> N` lines, in order.
fn bench_numbers(text: &str, word: &str) -> Vec<f64> {
    let prefix = format!("BENCH {word} ");
    text.lines()
        .filter_map(|l| l.find(&prefix).map(|i| &l[i + prefix.len()..]))
        .filter_map(|rest| rest.split_whitespace().last()?.parse().ok())
        .collect()
}

fn run_init(text: &str) -> Result<f64> {
    first_ts(text, |t| t.starts_with("Run /init as init process"))
        .ok_or_else(|| invalid("no \"Run /init as init process\" on the console"))
}

fn probe_result(text: &str) -> Result<Value> {
    if let Some(l) = text.lines().find(|l| l.contains("BENCH error")) {
        return Err(invalid(l.trim().to_string()));
    }
    let line = text
        .lines()
        .find_map(|l| l.find("BENCH probe ").map(|i| &l[i + "BENCH probe ".len()..]))
        .ok_or_else(|| invalid("no BENCH probe line on the console"))?;
    serde_json::from_str(line).map_err(|e| invalid(format!("BENCH probe line: {e}")))
}

/// How far the kernel's printk clock is from CLOCK_BOOTTIME (seconds): the kernel's
/// timestamp of a `BENCH-KMSG LABEL NS` record minus the NS it carries. Under TCG the two
/// differ by tens of milliseconds (the TSC is calibrated against emulated timers), so
/// "Run /init" is moved onto CLOCK_BOOTTIME with it.
fn clock_offset(text: &str, label: &str) -> Option<f64> {
    let prefix = format!("BENCH-KMSG {label} ");
    text.lines()
        .filter_map(stamped)
        .find_map(|(ts, t)| Some(ts - t.strip_prefix(&prefix)?.trim().parse::<f64>().ok()? / 1e9))
}

/// The common part: /init on CLOCK_BOOTTIME, and the spans to `ready` (CLOCK_BOOTTIME).
fn spans(text: &str, ready: f64, offset: Option<f64>) -> Result<Value> {
    let init = run_init(text)? - offset.unwrap_or(0.0);
    Ok(json!({
        "init_to_ready_ms": (ready - init) * 1e3,
        "kernel_to_ready_ms": (ready + offset.unwrap_or(0.0)) * 1e3,
        "clock_offset_ms": offset.map(|o| o * 1e3),
        "run_init_s": init,
        "ready_s": ready,
    }))
}

/// A keel boot: when the last of `services` was started, and PID 1's first line.
fn keel_times(text: &str, services: &[String]) -> Result<Value> {
    let mut ready = 0f64;
    for s in services {
        let line = format!("keel: [  OK  ] started service {s}");
        let ts =
            first_ts(text, |t| t == line).ok_or_else(|| invalid(format!("no \"{line}\" on the console")))?;
        ready = ready.max(ts);
    }
    let mut v = spans(text, ready, clock_offset(text, "probe"))?;
    let pid1 = first_ts(text, |t| {
        t.starts_with("keel: keel ") && t.ends_with("starting as PID 1")
    });
    if let (Some(p), Some(init)) = (pid1, v["run_init_s"].as_f64()) {
        v["init_to_pid1_ms"] = json!((p - init) * 1e3);
    }
    Ok(v)
}

/// A baseline boot: the stamp after the last `runc run -d`, and the rc's first stamp.
fn baseline_times(text: &str) -> Result<Value> {
    if let Some(l) = text.lines().find(|l| l.starts_with("rc: ")) {
        return Err(invalid(l.to_string()));
    }
    let stamp = |label: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("BENCH stamp {label} ")))
            .and_then(|n| n.trim().parse::<f64>().ok())
            .map(|ns| ns / 1e9)
    };
    let ready = stamp("ready").ok_or_else(|| invalid("no BENCH stamp ready on the console"))?;
    let mut v = spans(text, ready, clock_offset(text, "ready"))?;
    if let (Some(rc), Some(init)) = (stamp("rc-start"), v["run_init_s"].as_f64()) {
        v["init_to_rc_ms"] = json!((rc - init) * 1e3);
    }
    Ok(v)
}

fn kb(v: &Value, ptr: &str) -> Option<f64> {
    v.pointer(ptr).and_then(Value::as_f64)
}

/// PID 1 and machine memory from a probe result, in KiB.
fn memory(probe: &Value) -> Value {
    let used = match (kb(probe, "/meminfo/MemTotal"), kb(probe, "/meminfo/MemAvailable")) {
        (Some(t), Some(a)) => Some(t - a),
        _ => None,
    };
    json!({
        "pid1_rss_kib": kb(probe, "/pid1/status/VmRSS"),
        "pid1_pss_kib": kb(probe, "/pid1/smaps_rollup/Pss"),
        "pid1_hwm_kib": kb(probe, "/pid1/status/VmHWM"),
        "machine_used_kib": used,
    })
}

/// Samples of one measurement across boots, keyed by name.
#[derive(Default)]
struct Samples {
    by_key: std::collections::BTreeMap<String, Vec<f64>>,
    errors: Vec<String>,
    boots: usize,
}

impl Samples {
    fn add(&mut self, key: &str, v: Option<f64>) {
        if let Some(v) = v {
            self.by_key.entry(key.to_string()).or_default().push(v);
        }
    }

    fn add_all(&mut self, fields: &Value) {
        if let Some(m) = fields.as_object() {
            for (k, v) in m {
                self.add(k, v.as_f64());
            }
        }
    }

    fn json(&self) -> Value {
        let mut m = serde_json::Map::new();
        for (k, v) in &self.by_key {
            m.insert(k.clone(), json_of(v));
        }
        json!({"boots": self.boots, "errors": self.errors, "ms_kib": m})
    }

    fn median(&self, key: &str) -> Option<f64> {
        summary(self.by_key.get(key)?).map(|s| s.median)
    }
}

/// The probe's arguments: how long PID 1 is left idle before its memory is read, and how
/// many `list` requests and `keel ctl list` commands are timed.
pub fn probe_args(settle_ms: u64, ctl_rounds: u64, spawn_rounds: u64) -> Vec<String> {
    [
        "--settle-ms".to_string(),
        settle_ms.to_string(),
        "--ctl-rounds".into(),
        ctl_rounds.to_string(),
        "--spawn-rounds".into(),
        spawn_rounds.to_string(),
    ]
    .into()
}

pub struct Params<'a> {
    pub repo: &'a Path,
    pub keel_kernel: &'a Path,
    pub stock_kernel: Option<&'a Path>,
    pub boots: usize,
    pub scale: Vec<usize>,
    pub scale_boots: usize,
    pub restarts: usize,
    pub logs: PathBuf,
    /// See probe_args.
    pub probe: Vec<String>,
}

const LIMIT: Duration = Duration::from_secs(600);
const MEM_MIB: u32 = 512;
const SCALE_MEM_MIB: u32 = 1024;

/// Boot to all services ready: keel's reference image against the baseline made of the
/// same bundles, on the same (Debian) kernel, interleaved; keel's image on keel's kernel too.
pub fn reference(tools: &Tools, p: &Params) -> Result<Value> {
    let services: Vec<String> = (1..=5).map(|i| format!("svc{i}")).collect();
    let contents = Contents {
        onboot: 5,
        services: services.clone(),
        probe: Some(p.probe.clone()),
        flap_ms: None,
    };
    let built = images::build(tools, "reference", &contents, true)?;
    let baseline = built
        .baseline
        .clone()
        .ok_or_else(|| invalid("no baseline image"))?;
    // (label, kernel name, kernel, initrd, is the baseline)
    let mut configs: Vec<(&str, &str, &Path, &Path, bool)> = Vec::new();
    if let Some(stock) = p.stock_kernel {
        configs.push(("keel", "debian", stock, &built.keel, false));
        configs.push(("baseline", "debian", stock, &baseline, true));
    }
    configs.push(("keel", "keel", p.keel_kernel, &built.keel, false));
    let mut samples: Vec<Samples> = configs.iter().map(|_| Samples::default()).collect();
    let done = |t: &str| t.contains("BENCH done");
    for round in 0..p.boots {
        for k in 0..configs.len() {
            let i = (round + k) % configs.len();
            let (label, kname, kernel, initrd, is_baseline) = configs[i];
            let log = p.logs.join(format!("reference-{label}-{kname}-{round}.log"));
            let vm = Vm {
                repo: p.repo,
                kernel,
                initrd,
                mem_mib: MEM_MIB,
            };
            let s = &mut samples[i];
            s.boots += 1;
            let r = boot(&vm, &done, LIMIT, &log).and_then(|text| {
                let times = if is_baseline {
                    baseline_times(&text)?
                } else {
                    keel_times(&text, &services)?
                };
                Ok((times, probe_result(&text)?))
            });
            match r {
                Ok((times, probe)) => {
                    s.add_all(&times);
                    s.add_all(&memory(&probe));
                }
                Err(e) => s.errors.push(e.to_string()),
            }
        }
    }
    let mut out = json!({
        "image": "5 onboot containers (/bin/true), 5 services (sleep), keel's default sandbox; plus the probe service, started after them",
        "baseline": "busybox init + a shell rc: base mounts, then runc run for each onboot container in order and runc run -d for each service (runc and its libraries in the initrd)",
        "vm": format!("QEMU TCG, 1 vCPU, {MEM_MIB} MiB"),
        "sizes": {
            "keel_initrd": built.keel_bytes,
            "keel_build_initrd": built.keel_build_bytes,
            "baseline_initrd": built.baseline_bytes,
        },
    });
    let mut medians = std::collections::HashMap::new();
    for ((label, kname, kernel, _, _), s) in configs.iter().zip(&samples) {
        let key = format!("{label}@{kname}");
        out["runs"][&key] = s.json();
        out["runs"][&key]["kernel"] = json!(kernel.display().to_string());
        medians.insert(key, s.median("init_to_ready_ms"));
    }
    if let (Some(Some(k)), Some(Some(b))) = (medians.get("keel@debian"), medians.get("baseline@debian")) {
        out["ratio_init_to_ready"] = json!((k / b * 1000.0).round() / 1000.0);
    }
    if samples.iter().any(|s| s.errors.len() == s.boots) {
        out["failed"] = json!(true);
    }
    Ok(out)
}

/// Images of 10, 50, 200 trivial services on keel's kernel: boot to ready, PID 1's memory,
/// the control socket's latency.
pub fn scale(tools: &Tools, p: &Params) -> Result<Value> {
    let mut images = Vec::new();
    for &n in &p.scale {
        let names: Vec<String> = (1..=n).map(|i| format!("s{i:03}")).collect();
        let contents = Contents {
            onboot: 0,
            services: names.clone(),
            probe: Some(p.probe.clone()),
            flap_ms: None,
        };
        let built = images::build(tools, &format!("scale-{n}"), &contents, false)?;
        images.push((n, names, built));
    }
    let mut samples: Vec<Samples> = images.iter().map(|_| Samples::default()).collect();
    let done = |t: &str| t.contains("BENCH done");
    for round in 0..p.scale_boots {
        for k in 0..images.len() {
            let i = (round + k) % images.len();
            let (n, names, built) = &images[i];
            let log = p.logs.join(format!("scale-{n}-{round}.log"));
            let vm = Vm {
                repo: p.repo,
                kernel: p.keel_kernel,
                initrd: &built.keel,
                mem_mib: SCALE_MEM_MIB,
            };
            let s = &mut samples[i];
            s.boots += 1;
            let r = boot(&vm, &done, LIMIT, &log)
                .and_then(|text| Ok((keel_times(&text, names)?, probe_result(&text)?)));
            match r {
                Ok((times, probe)) => {
                    s.add_all(&times);
                    s.add_all(&memory(&probe));
                    for (key, field) in [
                        ("ctl_socket_ms", "ctl_socket_us"),
                        ("ctl_command_ms", "ctl_command_us"),
                    ] {
                        for us in probe[field].as_array().into_iter().flatten() {
                            s.add(key, us.as_f64().map(|us| us / 1e3));
                        }
                    }
                }
                Err(e) => s.errors.push(e.to_string()),
            }
        }
    }
    let mut out = json!({
        "image": format!("N services (sleep), keel's default sandbox, no onboot; plus the probe; keel's kernel, QEMU TCG, 1 vCPU, {SCALE_MEM_MIB} MiB"),
    });
    let mut points: std::collections::HashMap<&str, Vec<(f64, f64)>> = Default::default();
    for ((n, _, built), s) in images.iter().zip(&samples) {
        out["services"][n.to_string()] = s.json();
        out["services"][n.to_string()]["initrd_bytes"] = json!(built.keel_bytes);
        for key in ["pid1_rss_kib", "pid1_pss_kib", "init_to_ready_ms"] {
            if let Some(m) = s.median(key) {
                points.entry(key).or_default().push((*n as f64, m));
            }
        }
    }
    for (key, per) in [
        ("pid1_rss_kib", "rss_kib_per_service"),
        ("pid1_pss_kib", "pss_kib_per_service"),
        ("init_to_ready_ms", "ready_ms_per_service"),
    ] {
        if let Some((slope, _)) = points.get(key).and_then(|p| fit(p)) {
            out["growth"][per] = json!((slope * 1000.0).round() / 1000.0);
        }
    }
    if samples.iter().any(|s| s.errors.len() == s.boots) {
        out["failed"] = json!(true);
    }
    Ok(out)
}

/// A service that exits after 200 ms, restarted with no delay: from its exit to its
/// replacement's first instruction, and keel's own view (its "exited" line to its
/// "started" line).
pub fn restart(tools: &Tools, p: &Params) -> Result<Value> {
    let contents = Contents {
        flap_ms: Some(200),
        ..Contents::default()
    };
    let built = images::build(tools, "restart", &contents, false)?;
    let want = p.restarts + 1;
    let done = move |t: &str| t.matches("BENCH up ").count() > want;
    let vm = Vm {
        repo: p.repo,
        kernel: p.keel_kernel,
        initrd: &built.keel,
        mem_mib: MEM_MIB,
    };
    let text = boot(&vm, &done, LIMIT, &p.logs.join("restart.log"))?;
    let (ups, downs) = (bench_numbers(&text, "up"), bench_numbers(&text, "down"));
    // The first run pays for things done once (page cache, first cgroup): left out.
    let latency: Vec<f64> = (1..downs.len().min(ups.len().saturating_sub(1)))
        .map(|i| (ups[i + 1] - downs[i]) / 1e6)
        .collect();
    let exited = all_ts(&text, |t| t.ends_with("service flap exited: exit code 1"));
    let started = all_ts(&text, |t| t == "keel: [  OK  ] started service flap");
    let keel_view: Vec<f64> = (1..exited.len().min(started.len().saturating_sub(1)))
        .map(|i| (started[i + 1] - exited[i]) * 1e3)
        .collect();
    if latency.is_empty() {
        return Err(invalid(format!(
            "no restarts seen (console: {})",
            p.logs.join("restart.log").display()
        )));
    }
    Ok(json!({
        "service": "runs 200 ms, exits 1; org.keel.restart_delay=0; keel's kernel",
        "exit_to_exec_ms": json_of(&latency),
        "keel_exited_to_started_ms": json_of(&keel_view),
    }))
}
