//! The example manifests, built by `keel build` from keel's standard images (services/build.sh)
//! and booted in QEMU (TCG). Each test talks to the example's console shell (the getty
//! service) through the serial line and checks from inside the machine that its services
//! did their job: the minimal one boots from the ISO, the networked one has a DHCP address
//! from QEMU's user network, the clock from an NTP server and the hardened sysctls, the
//! persistent one counts its boots on a disk that survives a power-off.
//!
//! Inputs (scripts/test.sh sets them): KEEL_BIN, the static keel; KEEL_KERNEL, the kernel
//! built from kernel-config/ (put into the keel/kernel image).

mod common;

use std::ffi::OsStr;
use std::io::Write;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;

const BOOT_LIMIT: Duration = Duration::from_secs(300);
const STEP_LIMIT: Duration = Duration::from_secs(60);

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set (scripts/test.sh sets it)"))
}

/// The standard images, built once per run into target/services.
fn store() -> &'static Path {
    static STORE: OnceLock<PathBuf> = OnceLock::new();
    STORE.get_or_init(|| {
        let out = repo().join("target/services");
        let st = Command::new(repo().join("services/build.sh"))
            .arg(&out)
            .env("KEEL_KERNEL", env("KEEL_KERNEL"))
            .status()
            .expect("run services/build.sh");
        assert!(st.success(), "services/build.sh failed");
        out
    })
}

/// `keel build` of `manifest` (its text, written beside the example so relative paths
/// hold) into a fresh directory.
fn build(name: &str, manifest: &str, extra: &[&str]) -> PathBuf {
    let d = scratch(name);
    let m = d.join("keel.yml");
    std::fs::write(&m, manifest).unwrap();
    let mut args = vec![OsStr::new("--store"), store().as_os_str()];
    args.extend(extra.iter().map(OsStr::new));
    keel_build_ok(&m, &d.join("out"), &args)
}

fn example(name: &str) -> String {
    std::fs::read_to_string(repo().join("examples").join(name).join("keel.yml")).unwrap()
}

/// A VM whose serial console is this test's to read and type on.
struct Vm {
    child: Child,
    stdin: ChildStdin,
    console: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    commands: u32,
}

impl Vm {
    fn start(mut cmd: Command) -> Vm {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start QEMU");
        let stdin = child.stdin.take().unwrap();
        let (console, reader) = collect(child.stdout.take().unwrap());
        Vm {
            child,
            stdin,
            console,
            reader: Some(reader),
            commands: 0,
        }
    }

    /// A kernel + initrd built by keel build, with the manifest's command line.
    fn boot(out: &Path, qemu_args: &str) -> Vm {
        let cmdline = std::fs::read_to_string(out.join("cmdline")).unwrap();
        let mut cmd = Command::new(repo().join("scripts/run-qemu.sh"));
        cmd.env("KEEL_QEMU_ARGS", qemu_args)
            .arg(out.join("kernel"))
            .arg(out.join("initrd.img"))
            .args(cmdline.split_whitespace());
        Vm::start(cmd)
    }

    fn console(&self) -> String {
        clean_console(&self.console.lock().unwrap())
    }

    /// Wait until `pat` is on the console; panics with the console after `limit`.
    fn wait_for(&mut self, pat: &str, limit: Duration) {
        self.wait_for_nth(pat, 1, limit)
    }

    /// Wait until `pat` is on the console `n` times.
    fn wait_for_nth(&mut self, pat: &str, n: usize, limit: Duration) {
        let start = Instant::now();
        while self.console().matches(pat).count() < n {
            if start.elapsed() > limit || matches!(self.child.try_wait(), Ok(Some(_))) {
                let console = self.console();
                self.kill();
                panic!("{pat:?} not seen within {limit:?}\n{console}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Type `command` into the console shell and return what it printed. The markers are
    /// computed by the shell, so the echo of the typed line never matches them.
    fn run(&mut self, command: &str) -> String {
        self.commands += 1;
        let n = self.commands;
        let (begin, end) = (format!("<<{}>>", 1000 + n), format!("<<{}>>", 2000 + n));
        let line = format!("echo '<<'$((1000+{n}))'>>'; {command}; echo '<<'$((2000+{n}))'>>'\n");
        self.stdin.write_all(line.as_bytes()).unwrap();
        self.stdin.flush().unwrap();
        self.wait_for(&end, STEP_LIMIT);
        let console = self.console();
        let from = console.find(&begin).map(|i| i + begin.len()).unwrap_or(0);
        let to = console.rfind(&end).unwrap_or(console.len());
        // Keep the command's own lines: keel's and the kernel's log lines interleave.
        console[from..to]
            .lines()
            .filter(|l| !l.starts_with('[') && !l.contains(" | "))
            .collect::<Vec<_>>()
            .join("\n")
            .trim()
            .to_string()
    }

    /// Ask keel to power off from the shell and wait for QEMU to exit.
    fn poweroff(&mut self) -> String {
        self.stdin.write_all(b"keel poweroff\n").unwrap();
        let _ = self.stdin.flush();
        let start = Instant::now();
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            if start.elapsed() > STEP_LIMIT {
                let console = self.console();
                self.kill();
                panic!("the VM did not power off\n{console}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let console = self.console();
        assert!(console.contains("reboot: Power down"), "{console}");
        console
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

fn shell_ready(vm: &mut Vm) {
    vm.wait_for("started service getty", BOOT_LIMIT);
    // The shell answers once it is up: retry a harmless command until it does.
    let start = Instant::now();
    loop {
        vm.stdin.write_all(b"echo shell-$((40+2))\n").unwrap();
        vm.stdin.flush().unwrap();
        std::thread::sleep(Duration::from_secs(1));
        if vm.console().contains("shell-42") {
            return;
        }
        if start.elapsed() > STEP_LIMIT {
            let console = vm.console();
            vm.kill();
            panic!("the console shell did not answer\n{console}");
        }
    }
}

#[test]
fn minimal_boots_from_its_iso_into_a_console_shell() {
    require_root();
    let manifest = example("minimal");
    let a = build("ex-minimal-a", &manifest, &["--format", "iso"]);
    let b = build("ex-minimal-b", &manifest, &["--format", "iso"]);
    let iso = a.join("keel.iso");
    assert_eq!(
        std::fs::read(&iso).unwrap(),
        std::fs::read(b.join("keel.iso")).unwrap(),
        "the ISO differs between two builds"
    );
    // No -kernel: the firmware boots the image's bootloader from the CD.
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-machine",
        "q35,accel=tcg",
        "-cpu",
        "max",
        "-smp",
        "1",
        "-m",
        "256",
    ])
    .args([
        "-nographic",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-nodefaults",
    ])
    .arg("-cdrom")
    .arg(&iso);
    let mut vm = Vm::start(cmd);
    shell_ready(&mut vm);
    // The machine's processes are visible (pid: host): PID 1 is keel, booted as /init.
    assert_eq!(vm.run("cat /proc/1/comm"), "init");
    let list = vm.run("keel ctl list");
    assert!(
        list.lines()
            .any(|l| l.starts_with("getty") && l.contains("running")),
        "{list}"
    );
    // The shell runs in the getty container: no capabilities beyond those it declares.
    let caps = vm.run("grep CapEff /proc/self/status");
    assert_eq!(
        caps, "CapEff:\t00000000004000c0",
        "CAP_SETGID|CAP_SETUID|CAP_SYS_BOOT only"
    );
    vm.poweroff();
}

/// An NTP server on 127.0.0.1:123 of a network namespace of its own (so nothing on the host
/// is touched), answering with `fake` (seconds since 1970); QEMU, started from the same
/// thread, shares the namespace and its user network reaches it as 10.0.2.2.
fn with_fake_ntp<T: Send + 'static>(fake: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        let st = Command::new("/bin/busybox")
            .args(["ip", "link", "set", "lo", "up"])
            .status()
            .unwrap();
        assert!(st.success(), "lo up");
        let sock = UdpSocket::bind("127.0.0.1:123").expect("bind 127.0.0.1:123");
        sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let server = std::thread::spawn(move || {
            // This thread is in the new namespace too: it was spawned after unshare.
            let offset = fake as f64
                - std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs_f64();
            let mut buf = [0u8; 512];
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if n < 48 {
                    continue;
                }
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs_f64()
                    + offset
                    + 2_208_988_800.0;
                let ts = ((now.trunc() as u64) << 32) | ((now.fract() * 4_294_967_296.0) as u64);
                let mut r = [0u8; 48];
                r[0] = 4 << 3 | 4; // no leap warning, version 4, server
                r[1] = 1; // stratum 1
                r[2] = 4;
                r[3] = (-20i8) as u8;
                r[12..16].copy_from_slice(b"GPS\0");
                r[16..24].copy_from_slice(&ts.to_be_bytes());
                r[24..32].copy_from_slice(&buf[40..48]); // originate = the client's transmit
                r[32..40].copy_from_slice(&ts.to_be_bytes());
                r[40..48].copy_from_slice(&ts.to_be_bytes());
                let _ = sock.send_to(&r, from);
            }
        });
        let result = f();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = server.join();
        result
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

#[test]
fn networked_gets_an_address_the_time_and_hardened_sysctls() {
    require_root();
    let manifest = example("networked");
    // The example asks the NTP pool; here the server is the fake one behind QEMU's host.
    let patched = manifest.replace("\"pool.ntp.org\"", "\"10.0.2.2\"");
    assert_ne!(patched, manifest, "the example no longer names pool.ntp.org");
    let out = build("ex-networked", &patched, &[]);
    // 2028-02-29 12:00 UTC: far from any real clock this test will run under.
    let fake = 1_835_438_400;
    with_fake_ntp(fake, move || {
        let mut vm = Vm::boot(&out, "-netdev user,id=n0 -device virtio-net-pci,netdev=n0");
        vm.wait_for("service dhcp is ready", BOOT_LIMIT);
        shell_ready(&mut vm);
        let addr = vm.run("ip -4 addr show dev eth0");
        assert!(addr.contains("inet 10.0.2.15/24"), "{addr}");
        let route = vm.run("ip route show default");
        assert!(route.contains("default via 10.0.2.2"), "{route}");
        assert_eq!(vm.run("cat /etc/resolv.conf"), "nameserver 10.0.2.3");
        let sysctls = vm.run(
            "cat /proc/sys/kernel/kptr_restrict /proc/sys/net/ipv4/conf/all/accept_redirects /proc/sys/fs/protected_fifos",
        );
        assert_eq!(sysctls.split_whitespace().collect::<Vec<_>>(), ["2", "0", "2"]);
        vm.wait_for("set local clock to", STEP_LIMIT);
        assert_eq!(vm.run("date -u +%F"), "2028-02-29");
        let list = vm.run("keel ctl list");
        for svc in ["dhcp", "ntp", "kmsg", "getty"] {
            assert!(
                list.lines()
                    .any(|l| l.starts_with(svc) && l.contains("running") && l.contains(" 0  ")),
                "{svc} is not running without restarts:\n{list}"
            );
        }
        assert!(
            list.lines()
                .any(|l| l.starts_with("sysctl") && l.contains("exit code 0")),
            "{list}"
        );
        // The kernel log reader works under the hardened dmesg_restrict (CAP_SYSLOG).
        let kmsg = vm.run("keel ctl logs kmsg | grep -c 'Run /init as init process'");
        assert_eq!(kmsg, "1", "{}", vm.run("keel ctl logs kmsg -n 20"));
        vm.poweroff();
    });
}

#[test]
fn persistent_keeps_its_data_across_two_boots_of_one_disk() {
    require_root();
    let out = build("ex-persistent", &example("persistent"), &[]);
    let disk = out.join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(64 << 20).unwrap();
    let drive = format!("-drive file={},format=raw,if=virtio", disk.display());

    let mut vm = Vm::boot(&out, &drive);
    vm.wait_for("keel-format: /dev/vda formatted", BOOT_LIMIT);
    vm.wait_for("this disk has seen 1 boot(s)", BOOT_LIMIT);
    shell_ready(&mut vm);
    // The mount was made where PID 1 and every later container see it.
    let mounts = vm.run("grep ' /var/persist ' /proc/1/mountinfo");
    assert!(
        mounts.contains(" - ext4 ")
            && mounts.contains("dev/vda ")
            && mounts.contains("nosuid")
            && mounts.contains("nodev"),
        "/var/persist is not mounted in PID 1's namespace: {mounts:?}\n{}",
        vm.console()
    );
    vm.poweroff();

    let mut vm = Vm::boot(&out, &drive);
    vm.wait_for("this disk has seen 2 boot(s)", BOOT_LIMIT);
    shell_ready(&mut vm);
    let console = vm.poweroff();
    assert!(
        console.contains("keel-format: /dev/vda already holds TYPE=ext4"),
        "formatted again:\n{console}"
    );
    // keel unmounted the disk cleanly at the first power-off: nothing to replay.
    assert!(!console.contains("recovery complete"), "{console}");
}

#[test]
fn getty_without_insecure_logs_in_against_the_bound_shadow_file() {
    require_root();
    // The hash of "keel-pw" (SHA-512 crypt), as `mkpasswd -m sha512` writes it.
    let hash = "$6$6Xk2hQv0rG0dPZ5M$Yv/QShJExfxD/VLifNdCsBTkRMNJN9mqdTl8kuEpm6ZLOVBHYnKFqujqXwspFZg/U5szRZEXujTxe9R6AUAFN1";
    let manifest = format!(
        r#"
kernel:
  image: keel/kernel:latest
  cmdline: "console=ttyS0"
services:
  - name: getty
    image: keel/getty:latest
    binds.add: ["/etc/keel/shadow:/etc/shadow:ro"]
files:
  - path: etc/keel/shadow
    contents: "root:{hash}:19000:0:99999:7:::\n"
    mode: "0600"
"#
    );
    let out = build("ex-login", &manifest, &[]);
    let mut vm = Vm::boot(&out, "");
    vm.wait_for("login:", BOOT_LIMIT);
    vm.stdin.write_all(b"root\n").unwrap();
    vm.wait_for("Password:", STEP_LIMIT);
    vm.stdin.write_all(b"wrong\n").unwrap();
    vm.wait_for("Login incorrect", STEP_LIMIT);
    // login flushes what was typed before its next prompt: type only once that is shown.
    vm.wait_for_nth("login:", 2, STEP_LIMIT);
    std::thread::sleep(Duration::from_millis(300));
    vm.stdin.write_all(b"root\n").unwrap();
    vm.wait_for_nth("Password:", 2, STEP_LIMIT);
    vm.stdin.write_all(b"keel-pw\n").unwrap();
    vm.wait_for("root login on", STEP_LIMIT);
    shell_ready(&mut vm);
    vm.poweroff();
}

#[test]
fn services_build_the_same_images_twice() {
    let d = scratch("services-twice");
    let mut index = Vec::new();
    for out in [d.join("a"), d.join("b")] {
        let st = Command::new(repo().join("services/build.sh"))
            .arg(&out)
            .args(["busybox", "kmsg"])
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "services/build.sh");
        index.push(std::fs::read_to_string(out.join("index.json")).unwrap());
    }
    assert_eq!(index[0], index[1], "two builds of the same services differ");
    for name in ["keel/busybox:latest", "keel/kmsg:latest"] {
        assert!(index[0].contains(name), "{name} missing: {}", index[0]);
    }
}

#[test]
fn an_iso_needs_a_kernel() {
    let d = scratch("iso-no-kernel");
    let m = d.join("keel.yml");
    std::fs::write(&m, "kernel:\n  cmdline: console=ttyS0\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["build", "--check", "--format", "iso"])
        .arg(&m)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("--format iso needs a kernel"),
        "{err}"
    );
}
