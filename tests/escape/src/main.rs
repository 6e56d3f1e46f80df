//! What a compromised service would try. Every attempt runs in a child process (so one that
//! succeeds cannot distort the next) and is reported on one line:
//!
//!   ESCAPE <label> <probe> DENIED <why>    the sandbox refused it
//!   ESCAPE <label> <probe> ALLOWED <what>  it worked
//!   ESCAPE <label> <probe> REACHED <errno> it got past the sandbox and failed only on
//!                                          its arguments (a hole, even if harmless here)
//!
//! Usage: keel-escape LABEL [--exhaust]   (`--exhaust` adds the pids and memory attempts)
//!        keel-escape --ids               (print "euid capeff": used through a setuid copy)
//!        keel-escape ctl-abuse [SOCKET]  (abuse the control socket: see abuse.rs)

mod abuse;

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::ptr::null;

enum Outcome {
    Allowed(String),
    Denied(String),
    Reached(String),
}
use Outcome::*;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn ename(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOTTY => "ENOTTY",
        libc::EROFS => "EROFS",
        libc::ENOSYS => "ENOSYS",
        libc::ENOEXEC => "ENOEXEC",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        _ => return format!("errno{e}"),
    };
    name.into()
}

const P: &[i32] = &[libc::EPERM];
const FS: &[i32] = &[libc::EPERM, libc::EACCES, libc::EROFS];

/// A system call's result: denied when it failed with one of `policy`.
fn judge(rc: i64, policy: &[i32]) -> Outcome {
    if rc >= 0 {
        return Allowed(format!("returned {rc}"));
    }
    let e = errno();
    if policy.contains(&e) {
        Denied(ename(e))
    } else {
        Reached(ename(e))
    }
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn sys(nr: libc::c_long, a: [usize; 5]) -> i64 {
    // SAFETY: every probe passes pointers to live buffers or null; a denied call touches nothing.
    unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4]) as i64 }
}

fn open(path: &str, flags: i32) -> i64 {
    let p = c(path);
    // SAFETY: a valid C string.
    unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC, 0o644) as i64 }
}

/// A child that waits to be killed: a target for ptrace and friends.
fn sleeper() -> libc::pid_t {
    // SAFETY: the child only pauses.
    match unsafe { libc::fork() } {
        0 => loop {
            unsafe { libc::pause() };
        },
        pid => pid,
    }
}

fn reap(pid: libc::pid_t) {
    // SAFETY: plain syscalls on our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

/// Open for writing (nothing is written): a file the kernel does not have is no hole.
fn write_probe(path: &str, flags: i32) -> Outcome {
    match open(path, libc::O_WRONLY | flags) {
        fd if fd >= 0 => Allowed("opened for writing".into()),
        _ if errno() == libc::ENOENT => Denied("absent".into()),
        _ => judge(-1, FS),
    }
}

/// Read up to one byte: masked files read as empty.
fn read_probe(path: &str) -> Outcome {
    let fd = open(path, libc::O_RDONLY);
    if fd < 0 {
        let e = errno();
        return match e {
            libc::ENOENT => Denied("absent".into()),
            e if FS.contains(&e) => Denied(ename(e)),
            e => Reached(ename(e)),
        };
    }
    let mut b = [0u8; 1];
    // SAFETY: reading into a live buffer.
    let n = unsafe { libc::read(fd as i32, b.as_mut_ptr().cast(), 1) };
    match n {
        0 => Denied("masked (reads empty)".into()),
        n if n > 0 => Allowed("readable".into()),
        _ => judge(-1, FS),
    }
}

fn cap_eff() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX)
}

fn seccomp_mode() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Seccomp:").map(|v| v.trim().to_string()))
        })
        .unwrap_or_else(|| "?".into())
}

fn setuid_binary() -> Outcome {
    let (euid, caps) = (unsafe { libc::geteuid() }, cap_eff());
    let out = std::process::Command::new("/bin/escape-suid")
        .arg("--ids")
        .output();
    let out = match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).to_string(),
        Err(e) => return Reached(format!("no setuid binary to try: {e}")),
    };
    let mut it = out.split_whitespace();
    let (Some(new_euid), Some(new_caps)) = (
        it.next().and_then(|v| v.parse::<u32>().ok()),
        it.next().and_then(|v| u64::from_str_radix(v, 16).ok()),
    ) else {
        return Reached(format!("unexpected output {out:?}"));
    };
    if (new_euid == 0 && euid != 0) || new_caps & !caps != 0 {
        Allowed(format!("euid {euid}->{new_euid}, CapEff {caps:x}->{new_caps:x}"))
    } else {
        Denied(format!("still euid {new_euid}, CapEff {new_caps:x}"))
    }
}

fn net_admin() -> Outcome {
    // SAFETY: ioctls on a datagram socket with a zeroed, named ifreq.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return judge(-1, P);
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(s, libc::SIOCGIFMTU as _, &mut ifr) < 0 {
            return Reached(format!("SIOCGIFMTU {}", ename(errno())));
        }
        // The same MTU again: allowed or not, nothing changes.
        judge(libc::ioctl(s, libc::SIOCSIFMTU as _, &ifr) as i64, P)
    }
}

fn ctl_socket() -> Outcome {
    let mut s = match std::os::unix::net::UnixStream::connect("/run/keel/ctl.sock") {
        Ok(s) => s,
        Err(e) => {
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Denied("not reachable (ENOENT)".into()),
                Some(e) if FS.contains(&e) || e == libc::ECONNREFUSED => Denied(ename(e)),
                Some(e) => Reached(ename(e)),
                None => Reached(e.to_string()),
            }
        }
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let _ = s.write_all(b"{\"cmd\":\"list\"}\n");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    if answer.contains("permission denied") {
        Denied("refused by keel".into())
    } else if answer.contains("\"ok\":true") {
        Allowed("answered list".into())
    } else {
        Reached(format!("unexpected answer {answer:?}"))
    }
}

fn pids_exhaustion() -> Outcome {
    let mut kids = Vec::new();
    let outcome = loop {
        if kids.len() >= 100_000 {
            break Allowed(format!("{} processes", kids.len()));
        }
        // SAFETY: children only pause until killed.
        match unsafe { libc::fork() } {
            0 => loop {
                unsafe { libc::pause() };
            },
            -1 => {
                let e = errno();
                break if e == libc::EAGAIN {
                    Denied(format!("EAGAIN after {} processes", kids.len()))
                } else {
                    Reached(ename(e))
                };
            }
            pid => kids.push(pid),
        }
    };
    for k in kids {
        reap(k);
    }
    outcome
}

/// Touch memory in a child until something stops it; it reports progress through a pipe.
fn memory_exhaustion() -> Outcome {
    let mut fds = [0; 2];
    // SAFETY: pipe into a live array; the child writes only to its end.
    unsafe { libc::pipe(fds.as_mut_ptr()) };
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe { libc::close(fds[0]) };
        const CHUNK: usize = 1 << 20;
        for mib in 1..=(64 << 10) {
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    CHUNK,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                unsafe { libc::_exit(3) };
            }
            unsafe { std::ptr::write_bytes(p.cast::<u8>(), 1, CHUNK) };
            if mib % 8 == 0 {
                let m = (mib as u32).to_ne_bytes();
                unsafe { libc::write(fds[1], m.as_ptr().cast(), 4) };
            }
        }
        unsafe { libc::_exit(0) };
    }
    unsafe { libc::close(fds[1]) };
    let mut pipe = unsafe { std::fs::File::from_raw_fd(fds[0] as RawFd) };
    let mut last = 0u32;
    let mut buf = [0u8; 4];
    while pipe.read_exact(&mut buf).is_ok() {
        last = u32::from_ne_bytes(buf);
    }
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL {
        Denied(format!("OOM-killed after about {last} MiB"))
    } else if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 3 {
        Denied(format!("ENOMEM after about {last} MiB"))
    } else {
        Allowed(format!("{last} MiB, status {status:#x}"))
    }
}

type Probe = (&'static str, Box<dyn Fn() -> Outcome>);

fn probes(exhaust: bool) -> Vec<Probe> {
    let none = c("none");
    let mut v: Vec<Probe> = vec![
        (
            "mount",
            Box::new(move || {
                let (t, f) = (c("/tmp"), c("tmpfs"));
                judge(
                    unsafe { libc::mount(none.as_ptr(), t.as_ptr(), f.as_ptr(), 0, null()) } as i64,
                    P,
                )
            }),
        ),
        (
            "umount",
            Box::new(|| {
                let t = c("/dev/shm");
                judge(unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) } as i64, P)
            }),
        ),
        (
            "pivot_root",
            Box::new(|| {
                let t = c("/tmp");
                judge(
                    sys(
                        libc::SYS_pivot_root,
                        [t.as_ptr() as usize, t.as_ptr() as usize, 0, 0, 0],
                    ),
                    P,
                )
            }),
        ),
        (
            "fsopen",
            Box::new(|| {
                let t = c("tmpfs");
                judge(sys(libc::SYS_fsopen, [t.as_ptr() as usize, 0, 0, 0, 0]), P)
            }),
        ),
        (
            "open_tree",
            Box::new(|| {
                let t = c("/");
                judge(
                    sys(
                        libc::SYS_open_tree,
                        [libc::AT_FDCWD as usize, t.as_ptr() as usize, 1, 0, 0],
                    ),
                    P,
                )
            }),
        ),
        (
            "kexec_load",
            Box::new(|| judge(sys(libc::SYS_kexec_load, [0, 0, 0, 0, 0]), P)),
        ),
        (
            "kexec_file_load",
            Box::new(|| {
                let e = c("");
                // KEXEC_FILE_UNLOAD: the fds are not looked at.
                judge(
                    sys(
                        libc::SYS_kexec_file_load,
                        [usize::MAX, usize::MAX, 1, e.as_ptr() as usize, 1],
                    ),
                    P,
                )
            }),
        ),
        (
            "init_module",
            Box::new(|| {
                let image = [0x7fu8, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                let e = c("");
                judge(
                    sys(
                        libc::SYS_init_module,
                        [image.as_ptr() as usize, image.len(), e.as_ptr() as usize, 0, 0],
                    ),
                    P,
                )
            }),
        ),
        (
            "finit_module",
            Box::new(|| {
                let fd = open("/proc/self/exe", libc::O_RDONLY);
                let e = c("");
                judge(
                    sys(
                        libc::SYS_finit_module,
                        [fd as usize, e.as_ptr() as usize, 0, 0, 0],
                    ),
                    P,
                )
            }),
        ),
        (
            "delete_module",
            Box::new(|| {
                let m = c("keel_escape_none");
                judge(
                    sys(
                        libc::SYS_delete_module,
                        [m.as_ptr() as usize, libc::O_NONBLOCK as usize, 0, 0, 0],
                    ),
                    P,
                )
            }),
        ),
        (
            "reboot",
            Box::new(|| {
                // LINUX_REBOOT_CMD_CAD_OFF: the least harmful reboot(2) there is.
                judge(sys(libc::SYS_reboot, [0xfee1dead, 672274793, 0, 0, 0]), P)
            }),
        ),
        (
            "swapon",
            Box::new(|| {
                let p = c("/proc/self/exe");
                judge(unsafe { libc::swapon(p.as_ptr(), 0) } as i64, P)
            }),
        ),
        (
            "settimeofday",
            Box::new(|| {
                let mut tv: libc::timeval = unsafe { std::mem::zeroed() };
                unsafe { libc::gettimeofday(&mut tv, std::ptr::null_mut()) };
                judge(unsafe { libc::settimeofday(&tv, null()) } as i64, P)
            }),
        ),
        (
            "clock_settime",
            Box::new(|| {
                let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
                unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
                judge(
                    unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } as i64,
                    P,
                )
            }),
        ),
        (
            "adjtimex",
            Box::new(|| {
                let mut t: libc::timex = unsafe { std::mem::zeroed() };
                judge(unsafe { libc::adjtimex(&mut t) } as i64, P)
            }),
        ),
        (
            "ptrace",
            Box::new(|| {
                let pid = sleeper();
                let r = unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0) } as i64;
                let o = judge(r, P);
                reap(pid);
                o
            }),
        ),
        (
            "process_vm_readv",
            Box::new(|| {
                let pid = sleeper();
                static TARGET: u64 = 42;
                let mut buf = 0u64;
                let local = libc::iovec {
                    iov_base: (&mut buf as *mut u64).cast(),
                    iov_len: 8,
                };
                let remote = libc::iovec {
                    iov_base: (&TARGET as *const u64 as *mut u64).cast(),
                    iov_len: 8,
                };
                let r = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) } as i64;
                reap(pid);
                judge(r, P)
            }),
        ),
        (
            "unshare_user",
            Box::new(|| judge(unsafe { libc::unshare(libc::CLONE_NEWUSER) } as i64, P)),
        ),
        (
            "unshare_mount",
            Box::new(|| judge(unsafe { libc::unshare(libc::CLONE_NEWNS) } as i64, P)),
        ),
        (
            "unshare_net",
            Box::new(|| judge(unsafe { libc::unshare(libc::CLONE_NEWNET) } as i64, P)),
        ),
        (
            "clone_newuser",
            Box::new(|| {
                let flags = (libc::CLONE_NEWUSER | libc::SIGCHLD) as usize;
                match sys(libc::SYS_clone, [flags, 0, 0, 0, 0]) {
                    0 => unsafe { libc::_exit(0) },
                    r if r > 0 => {
                        reap(r as i32);
                        Allowed("child in a new user namespace".into())
                    }
                    r => judge(r, P),
                }
            }),
        ),
        (
            "clone3_newuser",
            Box::new(|| {
                // struct clone_args: flags, pidfd, child_tid, parent_tid, exit_signal, stack, ...
                let mut args = [0u64; 8];
                args[0] = libc::CLONE_NEWUSER as u64;
                args[4] = libc::SIGCHLD as u64;
                match sys(libc::SYS_clone3, [args.as_ptr() as usize, 64, 0, 0, 0]) {
                    0 => unsafe { libc::_exit(0) },
                    r if r > 0 => {
                        reap(r as i32);
                        Allowed("child in a new user namespace".into())
                    }
                    // ENOSYS is the filter too: it sends C libraries back to clone(2).
                    r => judge(r, &[libc::EPERM, libc::ENOSYS]),
                }
            }),
        ),
        (
            "setns",
            Box::new(|| {
                let fd = open("/proc/self/ns/net", libc::O_RDONLY);
                judge(unsafe { libc::setns(fd as i32, 0) } as i64, P)
            }),
        ),
        (
            "keyctl",
            Box::new(|| judge(sys(libc::SYS_keyctl, [1, 0, 0, 0, 0]), P)),
        ),
        (
            "add_key",
            Box::new(|| {
                let (t, d) = (c("user"), c("keel-escape"));
                let ring = -2i32 as usize; // KEY_SPEC_PROCESS_KEYRING
                judge(
                    sys(
                        libc::SYS_add_key,
                        [
                            t.as_ptr() as usize,
                            d.as_ptr() as usize,
                            b"x".as_ptr() as usize,
                            1,
                            ring,
                        ],
                    ),
                    P,
                )
            }),
        ),
        (
            "request_key",
            Box::new(|| {
                let (t, d) = (c("user"), c("keel-escape"));
                judge(
                    sys(
                        libc::SYS_request_key,
                        [t.as_ptr() as usize, d.as_ptr() as usize, 0, 0, 0],
                    ),
                    &[libc::EPERM],
                )
            }),
        ),
        (
            "bpf",
            Box::new(|| {
                // BPF_MAP_CREATE of a one-entry array.
                let attr: [u32; 8] = [2, 4, 4, 1, 0, 0, 0, 0];
                judge(sys(libc::SYS_bpf, [0, attr.as_ptr() as usize, 32, 0, 0]), P)
            }),
        ),
        (
            "perf_event_open",
            Box::new(|| {
                // perf_event_attr: type SOFTWARE, size, config CPU_CLOCK.
                let mut attr = [0u32; 32];
                attr[0] = 1;
                attr[1] = 128;
                judge(
                    sys(
                        libc::SYS_perf_event_open,
                        [attr.as_ptr() as usize, 0, usize::MAX, usize::MAX, 0],
                    ),
                    &[libc::EPERM, libc::EACCES],
                )
            }),
        ),
        (
            "userfaultfd",
            Box::new(|| {
                judge(
                    sys(libc::SYS_userfaultfd, [libc::O_CLOEXEC as usize, 0, 0, 0, 0]),
                    P,
                )
            }),
        ),
        (
            "io_uring_setup",
            Box::new(|| {
                let params = [0u8; 120];
                judge(
                    sys(libc::SYS_io_uring_setup, [1, params.as_ptr() as usize, 0, 0, 0]),
                    P,
                )
            }),
        ),
        (
            "open_by_handle_at",
            Box::new(|| {
                // struct file_handle: handle_bytes, handle_type, then the handle.
                let handle: [u32; 4] = [8, 1, 2, 0];
                let root = open("/", libc::O_RDONLY | libc::O_DIRECTORY);
                judge(
                    sys(
                        libc::SYS_open_by_handle_at,
                        [root as usize, handle.as_ptr() as usize, 0, 0, 0],
                    ),
                    P,
                )
            }),
        ),
        (
            "iopl",
            Box::new(|| judge(sys(libc::SYS_iopl, [3, 0, 0, 0, 0]), P)),
        ),
        (
            "ioperm",
            Box::new(|| judge(sys(libc::SYS_ioperm, [0x80, 1, 1, 0, 0]), P)),
        ),
        (
            "mknod_block_device",
            Box::new(|| {
                let p = c("/tmp/keel-escape-sda");
                judge(
                    unsafe { libc::mknod(p.as_ptr(), libc::S_IFBLK | 0o600, libc::makedev(8, 0)) } as i64,
                    P,
                )
            }),
        ),
        (
            "raw_socket",
            Box::new(|| {
                judge(
                    unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) } as i64,
                    P,
                )
            }),
        ),
        (
            "packet_socket",
            Box::new(|| {
                judge(
                    unsafe {
                        libc::socket(
                            libc::AF_PACKET,
                            libc::SOCK_RAW,
                            (libc::ETH_P_ALL as u16).to_be() as i32,
                        )
                    } as i64,
                    P,
                )
            }),
        ),
        ("net_admin", Box::new(net_admin)),
        (
            "chroot",
            Box::new(|| {
                let p = c("/tmp");
                judge(unsafe { libc::chroot(p.as_ptr()) } as i64, P)
            }),
        ),
        (
            "acct",
            Box::new(|| {
                let p = c("/tmp/keel-escape-acct");
                judge(unsafe { libc::acct(p.as_ptr()) } as i64, &[libc::EPERM])
            }),
        ),
        (
            "syslog_read",
            Box::new(|| {
                let mut buf = [0u8; 64];
                judge(
                    sys(libc::SYS_syslog, [3, buf.as_mut_ptr() as usize, buf.len(), 0, 0]),
                    P,
                )
            }),
        ),
        (
            "personality",
            Box::new(|| {
                // READ_IMPLIES_EXEC
                judge(sys(libc::SYS_personality, [0x0040_0000, 0, 0, 0, 0]), P)
            }),
        ),
        (
            "quotactl",
            Box::new(|| judge(sys(libc::SYS_quotactl, [0x80_0001, 0, 0, 0, 0]), P)),
        ),
        (
            "vhangup",
            Box::new(|| judge(sys(libc::SYS_vhangup, [0, 0, 0, 0, 0]), P)),
        ),
        (
            "sethostname",
            Box::new(|| {
                let n = b"escaped";
                judge(unsafe { libc::sethostname(n.as_ptr().cast(), n.len()) } as i64, P)
            }),
        ),
        (
            "raise_rlimit",
            Box::new(|| {
                let mut r: libc::rlimit = unsafe { std::mem::zeroed() };
                unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
                let up = libc::rlimit {
                    rlim_cur: r.rlim_max + 1,
                    rlim_max: r.rlim_max + 1,
                };
                judge(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &up) } as i64, P)
            }),
        ),
        ("setuid_binary", Box::new(setuid_binary)),
        (
            "write_sysrq_trigger",
            Box::new(|| write_probe("/proc/sysrq-trigger", 0)),
        ),
        (
            "write_proc_sys",
            Box::new(|| write_probe("/proc/sys/kernel/hostname", 0)),
        ),
        ("write_sys", Box::new(|| write_probe("/sys/class/net/lo/mtu", 0))),
        (
            "write_rootfs",
            Box::new(|| write_probe("/keel-escape", libc::O_CREAT)),
        ),
        ("read_kcore", Box::new(|| read_probe("/proc/kcore"))),
        ("read_keys", Box::new(|| read_probe("/proc/keys"))),
        ("read_timer_list", Box::new(|| read_probe("/proc/timer_list"))),
        ("control_socket", Box::new(ctl_socket)),
    ];
    if exhaust {
        v.push(("exhaust_pids", Box::new(pids_exhaustion)));
        v.push(("exhaust_memory", Box::new(memory_exhaustion)));
    }
    v
}

/// Run `f` in a child and bring its outcome back through a pipe.
fn isolated(f: &dyn Fn() -> Outcome) -> Outcome {
    let mut fds = [0; 2];
    // SAFETY: pipe into a live array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Reached(format!("pipe: {}", ename(errno())));
    }
    // SAFETY: the child runs the probe and leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe { libc::close(fds[0]) };
        let line = match f() {
            Allowed(s) => format!("ALLOWED {s}"),
            Denied(s) => format!("DENIED {s}"),
            Reached(s) => format!("REACHED {s}"),
        };
        unsafe {
            libc::write(fds[1], line.as_ptr().cast(), line.len());
            libc::_exit(0);
        }
    }
    unsafe { libc::close(fds[1]) };
    let mut pipe = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    let mut line = String::new();
    let _ = pipe.read_to_string(&mut line);
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    match line.split_once(' ').unwrap_or((line.as_str(), "")) {
        ("ALLOWED", s) => Allowed(s.into()),
        ("DENIED", s) => Denied(s.into()),
        ("REACHED", s) => Reached(s.into()),
        _ => Reached(format!("probe died (status {status:#x})")),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("ctl-abuse") {
        abuse::main(args.get(1).map(String::as_str));
        return;
    }
    if args.first().map(String::as_str) == Some("--ids") {
        println!("{} {:x}", unsafe { libc::geteuid() }, cap_eff());
        return;
    }
    let label = args.first().cloned().unwrap_or_else(|| "escape".into());
    let exhaust = args.iter().any(|a| a == "--exhaust");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "ESCAPE-BEGIN {label} uid={} seccomp={} capeff={:x}",
        unsafe { libc::getuid() },
        seccomp_mode(),
        cap_eff()
    );
    let (mut denied, mut allowed) = (0, 0);
    for (name, f) in probes(exhaust) {
        let (word, detail) = match isolated(f.as_ref()) {
            Denied(s) => {
                denied += 1;
                ("DENIED", s)
            }
            Allowed(s) => {
                allowed += 1;
                ("ALLOWED", s)
            }
            Reached(s) => {
                allowed += 1;
                ("REACHED", s)
            }
        };
        let _ = writeln!(out, "ESCAPE {label} {name} {word} {detail}");
        let _ = out.flush();
    }
    let _ = writeln!(out, "ESCAPE-END {label} {denied} denied {allowed} not denied");
}
