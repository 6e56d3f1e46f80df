//! Container lifecycle: create, start, wait for the exit of, and delete the same `/bin/true`
//! bundle, again and again, with runc, crun, `keel run` and keel's runtime in-process (what
//! PID 1 pays per container, without a process start), with and without the default seccomp
//! profile. Every round runs every contender once, in an order that rotates, so that a
//! busy machine slows them all alike.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use serde_json::{json, Value};

use crate::images::{self, Tools};
use crate::stats::{json_of, summary};
use crate::{invalid, io_err, output, Result};

/// Where every contender puts the container's cgroup (created and removed each time).
const CGROUP: &str = "/keel-bench/lifecycle";
/// A contender that fails this many times in a row is dropped from the run.
const MAX_FAILURES: u32 = 3;

pub struct Params {
    pub rounds: usize,
    pub warmup: usize,
    /// The pause before each isolated run: longer than it takes the kernel to forget a
    /// recent cgroup migration (moving a process into a cgroup after a pause waits for an
    /// RCU grace period, right after another one it does not).
    pub gap: std::time::Duration,
}

/// The two timings of every contender in each round.
const TIMINGS: [&str; 2] = ["isolated", "back_to_back"];

/// A private mount namespace for the contenders: their state directories on a tmpfs (as
/// under /run on a real machine; on a disk, keeping state costs writes that runtimes pay
/// differently), and cgroup v2 on /sys/fs/cgroup. Returns how the cgroup hierarchy was
/// obtained and its controllers. This process has no other thread yet, so
/// unshare(CLONE_NEWNS) is allowed.
fn namespace(state: &Path) -> Result<(String, Vec<String>)> {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let fail = |what: &str| invalid(format!("{what}: {}", std::io::Error::last_os_error()));
    let cstr = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| invalid(format!("{}: NUL in path", p.display())))
    };
    fs::create_dir_all(state).map_err(io_err("cannot create", state))?;
    let state_c = cstr(state)?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: plain system calls with NUL-terminated strings and a statfs to fill.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(fail("unshare(CLONE_NEWNS)"));
        }
        let none = std::ptr::null();
        if libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            none.cast(),
        ) != 0
        {
            return Err(fail("make / private"));
        }
        if libc::mount(
            c"tmpfs".as_ptr(),
            state_c.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            none.cast(),
        ) != 0
        {
            return Err(fail("mount a tmpfs for the runtimes' state"));
        }
        let v2 =
            libc::statfs(c"/sys/fs/cgroup".as_ptr(), &mut st) == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC;
        if !v2
            && libc::mount(
                c"cgroup2".as_ptr(),
                c"/sys/fs/cgroup".as_ptr(),
                c"cgroup2".as_ptr(),
                0,
                none.cast(),
            ) != 0
        {
            return Err(fail("mount cgroup2 on /sys/fs/cgroup"));
        }
        // On a hybrid or v1 host, runc and crun would use v1 and keel (built for v2 only)
        // could not run at all: cgroup2 puts all of them on the same footing.
        let how = match v2 {
            true => "the host's cgroup v2",
            false => "cgroup v2 mounted in a private mount namespace (the host's hierarchy is hybrid)",
        };
        let path = Path::new("/sys/fs/cgroup/cgroup.controllers");
        let controllers = fs::read_to_string(path).map_err(io_err("cannot read", path))?;
        Ok((
            how.to_string(),
            controllers.split_whitespace().map(String::from).collect(),
        ))
    }
}

/// The `/bin/true` container exactly as `keel build` generates it (keel's default posture),
/// with its cgroup path fixed, in two variants: the default seccomp profile written into
/// `linux.seccomp` (what every runtime then applies), and no filter at all.
fn bundles(
    tools: &Tools,
    dir: &Path,
    controllers: &[String],
    notes: &mut Vec<String>,
) -> Result<(PathBuf, PathBuf)> {
    let bb = images::busybox_image(&tools.work)?;
    let manifest = format!(
        "onboot:\n  - name: true\n    image: {}\n    command: [\"/bin/true\"]\n",
        bb.display()
    );
    let root = images::build_unpacked(tools, "lifecycle", &manifest)?;
    let template = root.join("containers/onboot/000-true");
    let mut out = Vec::new();
    for (name, seccomp) in [("seccomp", true), ("no-seccomp", false)] {
        let b = dir.join(name);
        let _ = fs::remove_dir_all(&b);
        output(Command::new("cp").arg("-a").arg(&template).arg(&b))?;
        images::edit_json(&b.join("config.json"), |c| {
            c["linux"]["cgroupsPath"] = json!(CGROUP);
            // The device rule needs a cgroup BPF program, which keel does not install yet
            // (runc always does; crun skips it where it cannot load one, and without the
            // deny rule it is allowed to skip). Left out for all.
            if let Some(r) = c["linux"]["resources"].as_object_mut() {
                r.remove("devices");
                if !controllers.iter().any(|c| c == "pids") {
                    r.remove("pids");
                }
            }
            if !seccomp {
                if let Some(l) = c["linux"].as_object_mut() {
                    l.remove("seccomp");
                }
                c["annotations"]["org.keel.seccomp"] = json!("unconfined");
            }
        })?;
        out.push(b);
    }
    notes.push("bundle: the /bin/true (busybox) container as keel build generates it: keel's default posture, linux.seccomp = keel's default profile (or none, and org.keel.seccomp=unconfined)".into());
    notes.push("left out for all: the cgroup device rule (keel has no cgroup BPF device filter yet)".into());
    if !controllers.iter().any(|c| c == "pids") {
        notes
            .push("left out for all: the pids limit (no pids controller in this cgroup v2 hierarchy)".into());
    }
    let off = out.pop().ok_or_else(|| invalid("no bundle"))?;
    let on = out.pop().ok_or_else(|| invalid("no bundle"))?;
    Ok((on, off))
}

/// keel's runtime in a long-lived process, one container per line it reads.
struct InProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl InProcess {
    fn start(keel: &Path, state: &Path, id: &str, bundle: &Path, stderr: File) -> Result<Self> {
        let mut child = Command::new(keel)
            .arg("bench-runtime")
            .arg("--root")
            .arg(state)
            .args(["--id", id])
            .arg(bundle)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| invalid(format!("{} bench-runtime: {e}", keel.display())))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(invalid("keel bench-runtime: no pipes"));
        };
        Ok(InProcess {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        })
    }

    /// One container: milliseconds of wall-clock and CPU time, as measured inside keel.
    fn once(&mut self) -> Result<(f64, f64)> {
        let fail = |e: std::io::Error| invalid(format!("keel bench-runtime: {e}"));
        self.stdin.write_all(b"\n").map_err(fail)?;
        self.stdin.flush().map_err(fail)?;
        let mut line = String::new();
        self.stdout.read_line(&mut line).map_err(fail)?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let ns = |i: usize| {
            words
                .get(i)
                .and_then(|w| w.parse::<f64>().ok())
                .map(|ns| ns / 1e6)
        };
        match (ns(0), words.get(1), ns(5)) {
            (Some(wall), Some(&"0"), Some(cpu)) => Ok((wall, cpu)),
            _ => Err(invalid(format!("keel bench-runtime: {}", line.trim()))),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        // End of input ends it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum How {
    /// A command per container, timed from spawn to exit.
    Command(Vec<String>),
    InProcess(Box<InProcess>),
}

struct Contender {
    runtime: &'static str,
    seccomp: bool,
    how: How,
    stderr: PathBuf,
    /// Wall-clock ms per timing (TIMINGS).
    samples: [Vec<f64>; 2],
    /// CPU ms, both timings.
    cpu: Vec<f64>,
    failures: u32,
    error: Option<String>,
}

/// Wait for `pid`: its exit status and the CPU time (ms) it and its reaped descendants used.
fn wait_with_cpu(pid: i32) -> std::io::Result<(i32, f64)> {
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid; wait4 fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: plain system call on our own child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    Ok((status, ms(ru.ru_utime) + ms(ru.ru_stime)))
}

impl Contender {
    /// One container: milliseconds of wall-clock and CPU time.
    fn once(&mut self) -> Result<(f64, f64)> {
        match &mut self.how {
            How::InProcess(p) => p.once(),
            How::Command(argv) => {
                let err = File::options()
                    .create(true)
                    .append(true)
                    .open(&self.stderr)
                    .map_err(io_err("cannot open", &self.stderr))?;
                let t = Instant::now();
                let child = Command::new(&argv[0])
                    .args(&argv[1..])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(err)
                    .spawn()
                    .map_err(|e| invalid(format!("{}: {e}", argv[0])))?;
                // Reaped here rather than by Child::wait, for the CPU time of the whole tree.
                let (status, cpu) = wait_with_cpu(child.id() as i32)
                    .map_err(|e| invalid(format!("{}: wait4: {e}", argv[0])))?;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                    return Ok((ms, cpu));
                }
                let log = fs::read_to_string(&self.stderr).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(3).collect();
                Err(invalid(format!(
                    "{}: wait status {status:#x}: {}",
                    argv.join(" "),
                    tail.join(" / ")
                )))
            }
        }
    }
}

fn version(cmd: &str) -> String {
    output(Command::new(cmd).arg("--version"))
        .map(|v| v.lines().next().unwrap_or("").to_string())
        .unwrap_or_else(|e| format!("unavailable: {e}"))
}

pub fn run(tools: &Tools, p: &Params) -> Result<Value> {
    let dir = tools.work.join("lifecycle");
    let state = dir.join("state");
    let (cgroup, controllers) = namespace(&state)?;
    let mut notes = vec![
        format!("cgroup: {cgroup}; controllers: {}", controllers.join(" ")),
        "every runtime keeps its state on a tmpfs".to_string(),
    ];
    let (on, off) = bundles(tools, &dir, &controllers, &mut notes)?;
    let keel = tools.keel.display().to_string();
    let mut contenders = Vec::new();
    for (seccomp, bundle) in [(true, &on), (false, &off)] {
        let b = bundle.display().to_string();
        let tag = if seccomp { "on" } else { "off" };
        for runtime in ["runc", "crun", "keel run", "keel in-process", "spawn /bin/true"] {
            let id = format!("bench-{}-{tag}", runtime.replace([' ', '/'], "-"));
            let root = state.join(&id).display().to_string();
            let stderr = dir.join(format!("{id}.stderr"));
            let how = match runtime {
                "runc" | "crun" => How::Command(vec![
                    runtime.into(),
                    "--root".into(),
                    root,
                    "run".into(),
                    "--bundle".into(),
                    b.clone(),
                    id,
                ]),
                "keel run" => How::Command(vec![
                    keel.clone(),
                    "run".into(),
                    "--root".into(),
                    root,
                    "--id".into(),
                    id,
                    b.clone(),
                ]),
                "keel in-process" => {
                    let err = File::create(&stderr).map_err(io_err("cannot create", &stderr))?;
                    How::InProcess(Box::new(InProcess::start(
                        &tools.keel,
                        Path::new(&root),
                        &id,
                        bundle,
                        err,
                    )?))
                }
                // The floor: what starting any process costs this harness.
                _ if seccomp => How::Command(vec!["/bin/true".into()]),
                _ => continue,
            };
            contenders.push(Contender {
                runtime,
                seccomp,
                how,
                stderr,
                samples: [Vec::new(), Vec::new()],
                cpu: Vec::new(),
                failures: 0,
                error: None,
            });
        }
    }
    let n = contenders.len();
    for round in 0..p.warmup + p.rounds {
        for k in 0..n {
            let c = &mut contenders[(round + k) % n];
            if c.error.is_some() {
                continue;
            }
            // Isolated: after a pause, as PID 1 starts a service now and then. Back to back:
            // right after the same runtime's previous container, as in a burst at boot.
            std::thread::sleep(p.gap);
            for slot in 0..2 {
                match c.once() {
                    Ok((ms, cpu)) if round >= p.warmup => {
                        c.samples[slot].push(ms);
                        c.cpu.push(cpu);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        c.failures += 1;
                        if c.failures >= MAX_FAILURES {
                            c.error = Some(e.to_string());
                        }
                        break;
                    }
                }
            }
        }
    }
    let _ = fs::remove_dir(Path::new("/sys/fs/cgroup").join(CGROUP.trim_start_matches('/')));
    let _ = fs::remove_dir("/sys/fs/cgroup/keel-bench");

    let mut ms = serde_json::Map::new();
    let mut medians = std::collections::HashMap::new();
    for c in &contenders {
        let seccomp = if c.seccomp { "seccomp" } else { "no_seccomp" };
        let entry = ms.entry(c.runtime.to_string()).or_insert_with(|| json!({}));
        for (slot, timing) in TIMINGS.iter().enumerate() {
            entry[format!("{timing}_{seccomp}")] = match &c.error {
                Some(e) => json!({"error": e}),
                None => json_of(&c.samples[slot]),
            };
            if let Some(s) = summary(&c.samples[slot]) {
                medians.insert((c.runtime, *timing, c.seccomp), s.median);
            }
        }
        entry[format!("cpu_{seccomp}")] = match &c.error {
            Some(e) => json!({"error": e}),
            None => json_of(&c.cpu),
        };
        if c.failures > 0 && c.error.is_none() {
            notes.push(format!("{} ({seccomp}): {} failed runs", c.runtime, c.failures));
        }
    }
    let mut ratios = json!({});
    for timing in TIMINGS {
        for (mode, seccomp) in [("seccomp", true), ("no_seccomp", false)] {
            for (a, b) in [
                ("keel run", "crun"),
                ("keel run", "runc"),
                ("keel in-process", "crun"),
                ("keel in-process", "runc"),
            ] {
                if let (Some(x), Some(y)) = (
                    medians.get(&(a, timing, seccomp)),
                    medians.get(&(b, timing, seccomp)),
                ) {
                    ratios[format!("{timing}_{mode}")][format!("{a} / {b}")] =
                        json!((x / y * 1000.0).round() / 1000.0);
                }
            }
        }
    }
    let failed: Vec<String> = contenders
        .iter()
        .filter_map(|c| c.error.as_ref().map(|e| format!("{}: {e}", c.runtime)))
        .collect();
    Ok(json!({
        "rounds": p.rounds,
        "warmup": p.warmup,
        "gap_ms": p.gap.as_millis() as u64,
        "unit": "ms per container",
        "runc": version("runc"),
        "crun": version("crun"),
        "ms": ms,
        "ratios": ratios,
        "notes": notes,
        "failed": failed,
    }))
}
