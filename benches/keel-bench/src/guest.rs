//! The instrument inside the test images. Every result is one line starting with `BENCH `,
//! written in one piece to the console when it is bound into the container (keel echoes a
//! service's output too, but drops lines while the console is busy) or else to stdout.

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{boottime_ns, invalid, Result};

/// keel's control socket, bound into the probe's container.
const CTL: &str = "/run/keel/ctl.sock";
/// How long the probe waits for every service to be ready.
const READY_LIMIT: Duration = Duration::from_secs(900);

fn say(line: &str) {
    let line = format!("{line}\n");
    let written = OpenOptions::new()
        .write(true)
        .open("/dev/console")
        .and_then(|mut c| c.write_all(line.as_bytes()));
    if written.is_err() {
        let _ = std::io::stdout().write_all(line.as_bytes());
    }
}

/// `--name VALUE` options of the guest commands, as numbers.
fn number(args: &[String], name: &str, default: u64) -> Result<u64> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| invalid(format!("{name} needs a number"))),
    }
}

/// A timestamp on CLOCK_BOOTTIME, and the same line through /dev/kmsg (when there is one)
/// so that the kernel's own timestamp of it shows how far its clock is from ours.
fn stamp_now(label: &str) {
    let ns = boottime_ns();
    if let Ok(mut k) = OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = k.write_all(format!("BENCH-KMSG {label} {ns}\n").as_bytes());
    }
    say(&format!("BENCH stamp {label} {ns}"));
}

pub fn stamp(args: &[String]) -> Result<()> {
    stamp_now(args.first().ok_or_else(|| invalid("stamp: no label"))?);
    Ok(())
}

/// A service that runs `--run-ms` and exits 1, saying when it started and when it ends.
pub fn flap(args: &[String]) -> Result<()> {
    say(&format!("BENCH up {}", boottime_ns()));
    std::thread::sleep(Duration::from_millis(number(args, "--run-ms", 200)?));
    say(&format!("BENCH down {}", boottime_ns()));
    std::process::exit(1)
}

/// One request to keel's control socket; its decoded answer.
fn ctl(request: &str) -> Result<(Value, usize)> {
    let fail = |e: std::io::Error| invalid(format!("{CTL}: {e}"));
    let mut s = UnixStream::connect(CTL).map_err(fail)?;
    s.write_all(format!("{request}\n").as_bytes()).map_err(fail)?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).map_err(fail)?;
    let v: Value = serde_json::from_str(&line).map_err(|e| invalid(format!("{CTL}: answer: {e}")))?;
    if v["ok"] != json!(true) {
        return Err(invalid(format!("{CTL}: {}", v["error"])));
    }
    Ok((v, line.len()))
}

fn all_services_ready(list: &Value) -> bool {
    list.pointer("/data/services")
        .and_then(Value::as_array)
        .is_some_and(|units| {
            units
                .iter()
                .filter(|u| u["kind"] == "service")
                .all(|u| u["ready"] == json!(true))
        })
}

/// `Key:   123 kB` lines of a /proc file, as kB; `keys` that are missing are left out.
fn proc_kb(path: &str, keys: &[&str]) -> Value {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return json!({"error": format!("{path}: {e}")}),
    };
    let mut m = serde_json::Map::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        if keys.contains(&k) {
            if let Some(n) = v.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()) {
                m.insert(k.to_string(), json!(n));
            }
        }
    }
    Value::Object(m)
}

fn pid1_memory() -> Value {
    json!({
        "status": proc_kb("/proc/1/status", &["VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem", "VmSize"]),
        "smaps_rollup": proc_kb("/proc/1/smaps_rollup", &["Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem", "Private_Dirty"]),
    })
}

/// Once every service is ready (asked of keel's control socket when it is there, else
/// after `--settle-ms` alone): PID 1's memory and the machine's, then the latency of
/// `list` on the control socket and of the `keel ctl list` command.
pub fn probe(args: &[String]) -> Result<()> {
    let settle = Duration::from_millis(number(args, "--settle-ms", 1000)?);
    let ctl_rounds = number(args, "--ctl-rounds", 20)?;
    let spawn_rounds = number(args, "--spawn-rounds", 10)?;
    stamp_now("probe");
    let r = measure(settle, ctl_rounds, spawn_rounds);
    match r {
        Ok(v) => say(&format!("BENCH probe {v}")),
        Err(e) => say(&format!("BENCH error probe: {e}")),
    }
    say("BENCH done");
    // A service that ended would be restarted, and measured again: stay.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn measure(settle: Duration, ctl_rounds: u64, spawn_rounds: u64) -> Result<Value> {
    let keel = Path::new(CTL).exists();
    let mut r = json!({"keel": keel});
    if keel {
        let start = Instant::now();
        loop {
            match ctl(r#"{"cmd":"list"}"#) {
                Ok((v, _)) if all_services_ready(&v) => break,
                Ok(_) if start.elapsed() < READY_LIMIT => {}
                Ok((v, _)) => return Err(invalid(format!("services not ready: {v}"))),
                Err(e) => return Err(e),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    r["ready_seen_ns"] = json!(boottime_ns());
    std::thread::sleep(settle);
    r["pid1"] = pid1_memory();
    r["meminfo"] = proc_kb(
        "/proc/meminfo",
        &[
            "MemTotal",
            "MemFree",
            "MemAvailable",
            "Buffers",
            "Cached",
            "Shmem",
            "Slab",
        ],
    );
    if keel {
        let mut socket_us = Vec::new();
        let mut bytes = 0;
        for _ in 0..ctl_rounds {
            let t = Instant::now();
            bytes = ctl(r#"{"cmd":"list"}"#)?.1;
            socket_us.push(t.elapsed().as_micros() as u64);
        }
        let mut command_us = Vec::new();
        for _ in 0..spawn_rounds {
            let t = Instant::now();
            let st = Command::new("/bin/keel")
                .args(["ctl", "list"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()
                .map_err(|e| invalid(format!("/bin/keel ctl list: {e}")))?;
            if !st.success() {
                return Err(invalid(format!("/bin/keel ctl list: {st}")));
            }
            command_us.push(t.elapsed().as_micros() as u64);
        }
        r["ctl_socket_us"] = json!(socket_us);
        r["ctl_list_bytes"] = json!(bytes);
        r["ctl_command_us"] = json!(command_us);
        r["pid1_after_ctl"] = pid1_memory();
    }
    Ok(r)
}
