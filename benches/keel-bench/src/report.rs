//! `keel-bench run`: every part in turn, then results.json and results.md.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::images::{self, Tools};
use crate::{boot, invalid, io_err, lifecycle, output, Result};

const PARTS: [&str; 5] = ["lifecycle", "boot", "scale", "restart", "footprint"];

struct Opts {
    out: PathBuf,
    quick: bool,
    parts: Vec<String>,
    repo: PathBuf,
    rounds: Option<usize>,
    boots: Option<usize>,
    scale: Option<Vec<usize>>,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        out: PathBuf::new(),
        quick: false,
        parts: PARTS.iter().map(|s| s.to_string()).collect(),
        repo: std::env::current_dir().map_err(io_err("cannot read", Path::new(".")))?,
        rounds: None,
        boots: None,
        scale: None,
    };
    let mut out = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| invalid(format!("{a} needs a value")))
        };
        match a.as_str() {
            "--out" => out = Some(PathBuf::from(value()?)),
            "--repo" => o.repo = PathBuf::from(value()?),
            "--quick" => o.quick = true,
            "--only" => {
                o.parts = value()?.split(',').map(String::from).collect();
                if let Some(p) = o.parts.iter().find(|p| !PARTS.contains(&p.as_str())) {
                    return Err(invalid(format!(
                        "--only: unknown part {p} (parts: {})",
                        PARTS.join(", ")
                    )));
                }
            }
            "--scale" => {
                let list: std::result::Result<Vec<usize>, _> = value()?.split(',').map(str::parse).collect();
                o.scale = Some(list.map_err(|_| invalid("--scale needs numbers, such as 10,50,200"))?);
            }
            "--rounds" | "--boots" => {
                let n = value()?
                    .parse()
                    .map_err(|_| invalid(format!("{a} needs a number")))?;
                if a == "--rounds" {
                    o.rounds = Some(n)
                } else {
                    o.boots = Some(n)
                }
            }
            _ => return Err(invalid(format!("unexpected argument {a:?}\n{}", crate::USAGE))),
        }
    }
    o.out = out.ok_or_else(|| invalid(format!("--out DIR is required\n{}", crate::USAGE)))?;
    Ok(o)
}

fn env_path(var: &str) -> Result<PathBuf> {
    let p = std::env::var_os(var)
        .map(PathBuf::from)
        .ok_or_else(|| invalid(format!("{var} is not set (scripts/bench.sh sets it)")))?;
    if !p.exists() {
        return Err(invalid(format!("{var}={} does not exist", p.display())));
    }
    Ok(p)
}

fn first_line(cmd: &mut Command) -> String {
    output(cmd)
        .map(|o| o.lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine(repo: &Path) -> Value {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let mem_kib: u64 = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let virt = match Path::new("/.dockerenv").exists() {
        true => "a Docker container".to_string(),
        false => first_line(&mut Command::new("systemd-detect-virt")),
    };
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": (mem_kib as f64 / 1048576.0 * 10.0).round() / 10.0,
        "host_kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "virtualisation": virt,
        "qemu": first_line(Command::new("qemu-system-x86_64").arg("--version")),
        "keel": first_line(Command::new("git").arg("-C").arg(repo).args(["describe", "--always", "--dirty"])),
        "date": first_line(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])),
        "load_start": loadavg(),
    })
}

/// Is this ELF file free of a dynamic loader (PT_INTERP)?
fn is_static(path: &Path) -> bool {
    let Ok(elf) = fs::read(path) else { return false };
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let (Some(phoff), Some(size), Some(num)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    elf.starts_with(b"\x7fELF")
        && !(0..num).any(|i| {
            let at = phoff as usize + i * size;
            elf.get(at..at + 4) == Some(&3u32.to_le_bytes()[..])
        })
}

pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    if unsafe { libc::geteuid() } != 0 {
        return Err(invalid(
            "the benchmarks create containers and boot images: run as root",
        ));
    }
    let me = fs::read_link("/proc/self/exe").map_err(io_err("cannot read", Path::new("/proc/self/exe")))?;
    if !is_static(&me) {
        return Err(invalid(format!(
            "{} is not static: it goes into the test images (build it for x86_64-unknown-linux-musl)",
            me.display()
        )));
    }
    let work = o.out.join("work");
    let logs = o.out.join("consoles");
    for d in [&work, &logs] {
        fs::create_dir_all(d).map_err(io_err("cannot create", d))?;
    }
    let tools = Tools {
        host_keel: env_path("KEEL_HOST_BIN")?,
        keel: env_path("KEEL_BIN")?,
        me,
        work,
    };
    let keel_kernel = env_path("KEEL_KERNEL")?;
    let stock_kernel = env_path("KEEL_STOCK_KERNEL").ok();
    let mut results = json!({
        "schema": 1,
        "mode": if o.quick { "quick" } else { "full" },
        "command": format!("scripts/bench.sh{}", if o.quick { " --quick" } else { "" }),
        "machine": machine(&o.repo),
    });
    let want = |p: &str| o.parts.iter().any(|x| x == p);
    let mut failed = Vec::new();
    let mut started = std::time::Instant::now();
    let mut record = |name: &str, r: Result<Value>, results: &mut Value| {
        let v = r.unwrap_or_else(|e| json!({"error": e.to_string()}));
        let failures = match &v["failed"] {
            Value::Bool(b) => *b,
            Value::Array(a) => !a.is_empty(),
            _ => false,
        };
        if v.get("error").is_some() || failures {
            failed.push(name.to_string());
        }
        eprintln!(
            "keel-bench: {name} done in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        results[name] = v;
        results[name]["seconds"] = json!(started.elapsed().as_secs());
        started = std::time::Instant::now();
    };
    // First: it may enter a mount namespace of its own, which needs a single thread.
    if want("lifecycle") {
        let p = lifecycle::Params {
            rounds: o.rounds.unwrap_or(if o.quick { 5 } else { 100 }),
            warmup: if o.quick { 1 } else { 5 },
            gap: std::time::Duration::from_millis(100),
        };
        record("lifecycle", lifecycle::run(&tools, &p), &mut results);
    }
    let bp = boot::Params {
        repo: &o.repo,
        keel_kernel: &keel_kernel,
        stock_kernel: stock_kernel.as_deref(),
        boots: o.boots.unwrap_or(if o.quick { 1 } else { 5 }),
        scale: o
            .scale
            .clone()
            .unwrap_or(if o.quick { vec![10] } else { vec![10, 50, 200] }),
        scale_boots: o.boots.unwrap_or(if o.quick { 1 } else { 3 }),
        restarts: if o.quick { 3 } else { 20 },
        logs,
        probe: if o.quick {
            boot::probe_args(300, 5, 3)
        } else {
            boot::probe_args(1000, 20, 10)
        },
    };
    if want("boot") {
        record("boot", boot::reference(&tools, &bp), &mut results);
    }
    if want("scale") {
        record("scale", boot::scale(&tools, &bp), &mut results);
    }
    if want("restart") {
        record("restart", boot::restart(&tools, &bp), &mut results);
    }
    if want("footprint") {
        record(
            "footprint",
            footprint(&tools, &o.repo, &keel_kernel, &results),
            &mut results,
        );
    }
    results["machine"]["load_end"] = json!(loadavg());
    let json_path = o.out.join("results.json");
    let text = serde_json::to_string_pretty(&results).map_err(|e| invalid(e.to_string()))?;
    fs::write(&json_path, text + "\n").map_err(io_err("cannot write", &json_path))?;
    let md = markdown(&results);
    let md_path = o.out.join("results.md");
    fs::write(&md_path, &md).map_err(io_err("cannot write", &md_path))?;
    println!("{md}");
    eprintln!(
        "keel-bench: wrote {} and {}",
        json_path.display(),
        md_path.display()
    );
    if !failed.is_empty() {
        return Err(invalid(format!(
            "measurements failed: {} (see results.json)",
            failed.join(", ")
        )));
    }
    Ok(())
}

/// Sizes, and PID 1's memory from the reference boots.
fn footprint(tools: &Tools, repo: &Path, kernel: &Path, results: &Value) -> Result<Value> {
    let contents = images::Contents {
        onboot: 5,
        services: (1..=5).map(|i| format!("svc{i}")).collect(),
        ..Default::default()
    };
    let reference = images::build(tools, "reference-noprobe", &contents, true)?;
    let file = output(Command::new("file").arg(&tools.keel))?;
    let kernel_bytes = images::size(kernel);
    let mut out = json!({
        "keel_binary_bytes": images::size(&tools.keel),
        "keel_binary_static_stripped": file.contains("statically linked") && !file.contains("not stripped"),
        "keel_kernel_bytes": kernel_bytes,
        "minimal_image_bytes": kernel_bytes + images::minimal(tools, repo)?,
        "reference_keel_initrd_bytes": reference.keel_bytes,
        "reference_keel_build_initrd_bytes": reference.keel_build_bytes,
        "reference_baseline_initrd_bytes": reference.baseline_bytes,
        "reference_keel_image_bytes": kernel_bytes + reference.keel_bytes,
        "reference_baseline_image_bytes": kernel_bytes + reference.baseline_bytes,
        "runc_bytes": output(Command::new("sh").args(["-c", "stat -L -c %s $(command -v runc)"]))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok()),
    });
    out["image_ratio"] = json!(
        ((kernel_bytes + reference.keel_bytes) as f64 / (kernel_bytes + reference.baseline_bytes) as f64
            * 1000.0)
            .round()
            / 1000.0
    );
    for run in ["keel@keel", "keel@debian", "baseline@debian"] {
        if let Some(m) = results.pointer(&format!("/boot/runs/{run}/ms_kib")) {
            for k in ["pid1_rss_kib", "pid1_pss_kib", "machine_used_kib"] {
                out["memory"][run][k] = m[k].clone();
            }
        }
    }
    Ok(out)
}

// ---- Markdown ----

fn med(v: &Value) -> Option<f64> {
    v.get("median").and_then(Value::as_f64)
}

/// `12.3 (11.9–13.0)` from a summary, or why there is none.
fn cell(v: &Value, digits: usize) -> String {
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        let short: String = e.chars().take(60).collect();
        return format!("failed: {short}");
    }
    match (med(v), v["p25"].as_f64(), v["p75"].as_f64()) {
        (Some(m), Some(a), Some(b)) => format!("{m:.digits$} ({a:.digits$}–{b:.digits$})"),
        _ => "–".into(),
    }
}

fn mib(bytes: &Value) -> String {
    bytes
        .as_f64()
        .map_or("–".into(), |b| format!("{:.2} MB", b / 1e6))
}

fn ratio(v: &Value) -> String {
    v.as_f64().map_or("–".into(), |r| format!("{r:.2}"))
}

fn markdown(r: &Value) -> String {
    let m = &r["machine"];
    let mut s = format!(
        "Measured {} ({} run, `{}`) on {}, {} cores, {} GiB, host kernel {}, in {}; load average {} at the start, {} at the end. keel {}; {}.\n",
        m["date"].as_str().unwrap_or(""),
        r["mode"].as_str().unwrap_or(""),
        r["command"].as_str().unwrap_or(""),
        m["cpu"].as_str().unwrap_or(""),
        m["cores"],
        m["memory_gib"],
        m["host_kernel"].as_str().unwrap_or(""),
        m["virtualisation"].as_str().unwrap_or(""),
        m["load_start"].as_str().unwrap_or(""),
        m["load_end"].as_str().unwrap_or(""),
        m["keel"].as_str().unwrap_or(""),
        m["qemu"].as_str().unwrap_or(""),
    );
    s += "Each cell: median (25th–75th percentile).\n";

    let l = &r["lifecycle"];
    if !l.is_null() {
        s += &format!(
            "\n### Container lifecycle\n\ncreate, start, wait for exit, delete of one `/bin/true` container (ms per container; {} rounds, every runtime twice per round, in an order that rotates: once {} ms after anything else ran (*isolated*, as PID 1 starts a service now and then), then once more right away (*back to back*, as in a burst at boot); {}; {}):\n\n",
            l["rounds"], l["gap_ms"], l["runc"].as_str().unwrap_or(""), l["crun"].as_str().unwrap_or("")
        );
        if let Some(e) = l["error"].as_str() {
            s += &format!("failed: {e}\n");
        } else {
            let cols = [
                "isolated_seccomp",
                "isolated_no_seccomp",
                "back_to_back_seccomp",
                "back_to_back_no_seccomp",
            ];
            s += "| runtime | isolated, default seccomp profile | isolated, no seccomp | back to back, default seccomp profile | back to back, no seccomp |\n|---|---|---|---|---|\n";
            for (name, label) in [
                ("runc", "runc run"),
                ("crun", "crun run"),
                ("keel run", "keel run"),
                ("keel in-process", "keel's runtime in-process (what PID 1 pays)"),
                (
                    "spawn /bin/true",
                    "starting /bin/true, no container (the harness's floor)",
                ),
            ] {
                let c = &l["ms"][name];
                s += &format!("| {label} |");
                for col in cols {
                    s += &format!(" {} |", cell(&c[col], 1));
                }
                s += "\n";
            }
            s += "\n| ratio of medians | isolated, default seccomp profile | isolated, no seccomp | back to back, default seccomp profile | back to back, no seccomp |\n|---|---|---|---|---|\n";
            for k in [
                "keel run / crun",
                "keel run / runc",
                "keel in-process / crun",
                "keel in-process / runc",
            ] {
                s += &format!("| {k} |");
                for col in cols {
                    s += &format!(" {} |", ratio(&l["ratios"][col][k]));
                }
                s += "\n";
            }
            s += "\nCPU time per container (ms, user + system of the runtime's processes and the container's, both timings):\n\n| runtime | default seccomp profile | no seccomp |\n|---|---|---|\n";
            for (name, label) in [
                ("runc", "runc run"),
                ("crun", "crun run"),
                ("keel run", "keel run"),
                ("keel in-process", "keel's runtime in-process"),
            ] {
                let c = &l["ms"][name];
                s += &format!(
                    "| {label} | {} | {} |\n",
                    cell(&c["cpu_seccomp"], 1),
                    cell(&c["cpu_no_seccomp"], 1)
                );
            }
            for n in l["notes"].as_array().into_iter().flatten() {
                s += &format!("\n- {}", n.as_str().unwrap_or(""));
            }
            s += "\n";
        }
    }

    let b = &r["boot"];
    if !b.is_null() {
        s += "\n### Boot to all services ready\n\n";
        if let Some(e) = b["error"].as_str() {
            s += &format!("failed: {e}\n");
        } else {
            s += &format!(
                "{}. Baseline: {}. {}; boots of the images interleaved. `/init` → ready: from the kernel's \"Run /init as init process\" to the last service started.\n\n",
                b["image"].as_str().unwrap_or(""),
                b["baseline"].as_str().unwrap_or(""),
                b["vm"].as_str().unwrap_or("")
            );
            s += "| image | kernel | boots | `/init` → ready (ms) | kernel start → ready (ms) | PID 1 Pss (KiB) | machine memory in use (KiB) |\n|---|---|---|---|---|---|---|\n";
            for (key, image, kernel) in [
                ("keel@debian", "keel", "Debian"),
                ("baseline@debian", "baseline (busybox init + rc + runc)", "Debian"),
                ("keel@keel", "keel", "keel's"),
            ] {
                let run = &b["runs"][key];
                if run.is_null() {
                    continue;
                }
                let v = &run["ms_kib"];
                let errors = run["errors"].as_array().map_or(0, Vec::len);
                s += &format!(
                    "| {image} | {kernel} | {}{} | {} | {} | {} | {} |\n",
                    run["boots"],
                    if errors > 0 {
                        format!(" ({errors} failed)")
                    } else {
                        String::new()
                    },
                    cell(&v["init_to_ready_ms"], 0),
                    cell(&v["kernel_to_ready_ms"], 0),
                    cell(&v["pid1_pss_kib"], 0),
                    cell(&v["machine_used_kib"], 0),
                );
            }
            s += &format!(
                "\nkeel / baseline, `/init` → ready, same kernel: **{}**.\n\n\"Run /init\" is a kernel timestamp, the rest CLOCK_BOOTTIME; under TCG the two clocks differ (kernel minus CLOCK_BOOTTIME: {} ms in keel's boots, {} ms in the baseline's, measured through /dev/kmsg in each boot), and each boot's /init is corrected by its own difference. From /init to PID 1's first line: keel {} ms; to the rc's first command: baseline {} ms.\n",
                ratio(&b["ratio_init_to_ready"]),
                cell(&b["runs"]["keel@debian"]["ms_kib"]["clock_offset_ms"], 0),
                cell(&b["runs"]["baseline@debian"]["ms_kib"]["clock_offset_ms"], 0),
                cell(&b["runs"]["keel@debian"]["ms_kib"]["init_to_pid1_ms"], 0),
                cell(&b["runs"]["baseline@debian"]["ms_kib"]["init_to_rc_ms"], 0),
            );
        }
    }

    let f = &r["footprint"];
    if !f.is_null() {
        s += "\n### Footprint\n\n";
        if let Some(e) = f["error"].as_str() {
            s += &format!("failed: {e}\n");
        } else {
            let kib = |run: &str, k: &str| cell(&f["memory"][run][k], 0);
            s += "| what | value |\n|---|---|\n";
            s += &format!(
                "| static keel binary (stripped) | {} |\n",
                mib(&f["keel_binary_bytes"])
            );
            s += &format!("| keel kernel (bzImage) | {} |\n", mib(&f["keel_kernel_bytes"]));
            s += &format!(
                "| minimal image (keel kernel + initrd with keel alone) | {} |\n",
                mib(&f["minimal_image_bytes"])
            );
            s += &format!(
                "| reference image, keel (keel kernel + initrd; 5 onboot + 5 services, busybox stored once) | {} |\n",
                mib(&f["reference_keel_image_bytes"])
            );
            s += &format!(
                "| the same bundles, baseline (keel kernel + busybox init, rc, runc and its libraries) | {} |\n",
                mib(&f["reference_baseline_image_bytes"])
            );
            s += &format!("| keel / baseline image | {} |\n", ratio(&f["image_ratio"]));
            s += &format!(
                "| PID 1 VmRSS idle, reference image, keel's kernel (KiB) | {} |\n",
                kib("keel@keel", "pid1_rss_kib")
            );
            s += &format!(
                "| PID 1 Pss idle, reference image, keel's kernel (KiB) | {} |\n",
                kib("keel@keel", "pid1_pss_kib")
            );
        }
    }

    let sc = &r["scale"];
    if !sc.is_null() {
        s += "\n### Scale\n\n";
        if let Some(e) = sc["error"].as_str() {
            s += &format!("failed: {e}\n");
        } else {
            s += &format!("{}.\n\n", sc["image"].as_str().unwrap_or(""));
            s += "| services | boots | `/init` → ready (ms) | PID 1 VmRSS (KiB) | PID 1 Pss (KiB) | `list` on the control socket (ms) | `keel ctl list` command (ms) |\n|---|---|---|---|---|---|---|\n";
            if let Some(m) = sc["services"].as_object() {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort_by_key(|k| k.parse::<usize>().unwrap_or(0));
                for k in keys {
                    let v = &m[k]["ms_kib"];
                    s += &format!(
                        "| {k} | {} | {} | {} | {} | {} | {} |\n",
                        m[k]["boots"],
                        cell(&v["init_to_ready_ms"], 0),
                        cell(&v["pid1_rss_kib"], 0),
                        cell(&v["pid1_pss_kib"], 0),
                        cell(&v["ctl_socket_ms"], 1),
                        cell(&v["ctl_command_ms"], 1),
                    );
                }
            }
            let g = &sc["growth"];
            if !g.is_null() {
                s += &format!(
                    "\nGrowth per service (least squares over the medians): VmRSS {} KiB, Pss {} KiB, `/init` → ready {} ms.\n",
                    ratio(&g["rss_kib_per_service"]),
                    ratio(&g["pss_kib_per_service"]),
                    ratio(&g["ready_ms_per_service"])
                );
            }
        }
    }

    let rs = &r["restart"];
    if !rs.is_null() {
        s += "\n### Restart latency\n\n";
        if let Some(e) = rs["error"].as_str() {
            s += &format!("failed: {e}\n");
        } else {
            s += &format!(
                "A service that {} (ms, {} restarts; the first left out):\n\n| from the service's exit to its replacement's first instruction | keel's own log: \"exited\" to \"started\" |\n|---|---|\n| {} | {} |\n",
                rs["service"].as_str().unwrap_or(""),
                rs["exit_to_exec_ms"]["n"],
                cell(&rs["exit_to_exec_ms"], 1),
                cell(&rs["keel_exited_to_started_ms"], 1)
            );
        }
    }
    s
}
