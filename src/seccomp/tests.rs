use super::*;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;

/// A classic-BPF interpreter for the instructions seccomp filters use, run on a
/// `struct seccomp_data` laid out as the kernel does: nr, arch, ip, args[6].
fn run(prog: &BpfProgram, nr: i64, arch: u32, args: [u64; 6]) -> u32 {
    run_traced(prog, nr, arch, args).0
}

/// [`run`], with the instructions it went through.
fn run_traced(prog: &BpfProgram, nr: i64, arch: u32, args: [u64; 6]) -> (u32, Vec<usize>) {
    let mut data = Vec::new();
    data.extend_from_slice(&(nr as i32).to_ne_bytes());
    data.extend_from_slice(&arch.to_ne_bytes());
    data.extend_from_slice(&0u64.to_ne_bytes());
    for a in args {
        data.extend_from_slice(&a.to_ne_bytes());
    }
    let (mut acc, mut pc, mut trace) = (0u32, 0usize, Vec::new());
    loop {
        let i = &prog[pc];
        trace.push(pc);
        pc += 1;
        match i.code {
            0x20 => {
                let k = i.k as usize;
                acc = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap());
            }
            0x54 => acc &= i.k,
            0x05 => pc += i.k as usize,
            0x15 | 0x25 | 0x35 | 0x45 => {
                let t = match i.code {
                    0x15 => acc == i.k,
                    0x25 => acc > i.k,
                    0x35 => acc >= i.k,
                    _ => acc & i.k != 0,
                };
                pc += if t { i.jt } else { i.jf } as usize;
            }
            0x06 => return (i.k, trace),
            c => panic!("instruction {c:#x} not modelled"),
        }
    }
}

/// What the kernel returns for a system call through every program: the most restrictive.
fn eval_arch(f: &Filter, nr: i64, arch: u32, args: [u64; 6]) -> u32 {
    f.programs
        .iter()
        .rev()
        .map(|p| run(p, nr, arch, args))
        .fold(RET_ALLOW, |acc, r| {
            if ((r & 0xffff_0000) as i32) < ((acc & 0xffff_0000) as i32) {
                r
            } else {
                acc
            }
        })
}

fn eval(f: &Filter, name: &str, args: [u64; 6]) -> u32 {
    eval_arch(f, syscall_number(name).unwrap(), AUDIT_ARCH_X86_64, args)
}

fn errno(e: i32) -> u32 {
    RET_ERRNO | e as u32
}

fn default_filter(caps: &[&str]) -> Filter {
    let caps: Vec<String> = caps.iter().map(|s| s.to_string()).collect();
    default_profile(&caps).compile(0).unwrap()
}

const NO: [u64; 6] = [0; 6];

fn arg0(v: u64) -> [u64; 6] {
    [v, 0, 0, 0, 0, 0]
}

#[test]
fn table_is_sorted_and_complete() {
    assert!(x86_64::X86_64.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(syscall_number("read"), Some(0));
    assert_eq!(syscall_number("execve"), Some(59));
    assert_eq!(syscall_number("fchmodat2"), Some(452));
    assert_eq!(syscall_number("mseal"), Some(462));
    assert_eq!(syscall_number("no_such_call"), None);
    assert_eq!(syscall_name(165), Some("mount"));
}

#[test]
fn every_name_in_the_default_profile_is_known() {
    let caps: Vec<String> = default::BY_CAPABILITY
        .iter()
        .map(|(c, _)| c.to_string())
        .collect();
    let profile = default_profile(&caps);
    let unknown: Vec<&String> = profile
        .rules
        .iter()
        .flat_map(|r| &r.names)
        .filter(|n| syscall_number(n).is_none())
        .collect();
    assert!(unknown.is_empty(), "{unknown:?}");
}

#[test]
fn default_profile_allows_ordinary_calls_and_denies_the_dangerous_ones() {
    let f = default_filter(&[]);
    for ok in [
        "read",
        "write",
        "openat",
        "execve",
        "mmap",
        "exit_group",
        "socket",
        "wait4",
        "setuid",
    ] {
        assert_eq!(eval(&f, ok, NO), RET_ALLOW, "{ok}");
    }
    for denied in [
        "mount",
        "umount2",
        "pivot_root",
        "kexec_load",
        "kexec_file_load",
        "init_module",
        "finit_module",
        "delete_module",
        "reboot",
        "swapon",
        "swapoff",
        "settimeofday",
        "clock_settime",
        "adjtimex",
        "ptrace",
        "setns",
        "keyctl",
        "add_key",
        "request_key",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "open_by_handle_at",
        "iopl",
        "ioperm",
        "sethostname",
        "setdomainname",
        "chroot",
        "acct",
        "syslog",
        "io_uring_setup",
        "process_vm_readv",
        "fsopen",
        "move_mount",
        "quotactl",
        "lookup_dcookie",
    ] {
        assert_eq!(eval(&f, denied, NO), errno(libc::EPERM), "{denied}");
    }
    // A number no rule names, and an x32 number of an allowed call.
    assert_eq!(eval_arch(&f, 999, AUDIT_ARCH_X86_64, NO), errno(libc::EPERM));
    assert_eq!(
        eval_arch(&f, 0x4000_0000, AUDIT_ARCH_X86_64, NO),
        errno(libc::EPERM)
    );
    // Another ABI is not filtered by number: it kills.
    assert_eq!(eval_arch(&f, 0, AUDIT_ARCH_I386, NO), RET_KILL_PROCESS);
}

#[test]
fn namespaces_stay_closed_without_cap_sys_admin() {
    let f = default_filter(&[]);
    let newuser = libc::CLONE_NEWUSER as u64;
    let sigchld = libc::SIGCHLD as u64;
    assert_eq!(eval(&f, "unshare", arg0(newuser)), errno(libc::EPERM));
    assert_eq!(
        eval(&f, "unshare", arg0(libc::CLONE_NEWNET as u64)),
        errno(libc::EPERM)
    );
    assert_eq!(eval(&f, "unshare", arg0(libc::CLONE_FILES as u64)), RET_ALLOW);
    assert_eq!(eval(&f, "clone", arg0(sigchld)), RET_ALLOW);
    assert_eq!(eval(&f, "clone", arg0(newuser | sigchld)), errno(libc::EPERM));
    assert_eq!(eval(&f, "clone", arg0(0x80 | sigchld)), errno(libc::EPERM));
    assert_eq!(eval(&f, "clone3", NO), errno(libc::ENOSYS));

    let f = default_filter(&["CAP_SYS_ADMIN"]);
    assert_eq!(eval(&f, "unshare", arg0(newuser)), RET_ALLOW);
    assert_eq!(eval(&f, "clone", arg0(newuser | sigchld)), RET_ALLOW);
    assert_eq!(eval(&f, "clone3", NO), RET_ALLOW);
    assert_eq!(eval(&f, "mount", NO), RET_ALLOW);
    // Capabilities open their own calls only.
    assert_eq!(eval(&f, "init_module", NO), errno(libc::EPERM));
    assert_eq!(eval(&f, "keyctl", NO), errno(libc::EPERM));
}

#[test]
fn capabilities_open_exactly_their_calls() {
    let f = default_filter(&["CAP_SYS_TIME", "CAP_NET_ADMIN"]);
    for ok in ["settimeofday", "clock_settime", "adjtimex", "clock_adjtime"] {
        assert_eq!(eval(&f, ok, NO), RET_ALLOW, "{ok}");
    }
    for denied in ["mount", "reboot", "ptrace", "init_module", "iopl"] {
        assert_eq!(eval(&f, denied, NO), errno(libc::EPERM), "{denied}");
    }
    let f = default_filter(&["CAP_SYS_BOOT", "CAP_SYS_PTRACE", "CAP_SYS_MODULE"]);
    for ok in [
        "reboot",
        "ptrace",
        "process_vm_readv",
        "init_module",
        "finit_module",
    ] {
        assert_eq!(eval(&f, ok, NO), RET_ALLOW, "{ok}");
    }
    // Never opened by any capability: the keyring is not namespaced, kexec replaces the
    // kernel, userfaultfd and io_uring are exploit primitives.
    let all: Vec<&str> = default::BY_CAPABILITY.iter().map(|(c, _)| *c).collect();
    let f = default_filter(&all);
    for denied in [
        "keyctl",
        "add_key",
        "request_key",
        "kexec_load",
        "userfaultfd",
        "io_uring_setup",
        "swapon",
    ] {
        assert_eq!(eval(&f, denied, NO), errno(libc::EPERM), "{denied}");
    }
}

#[test]
fn argument_rules() {
    let f = default_filter(&[]);
    assert_eq!(eval(&f, "personality", arg0(0)), RET_ALLOW);
    assert_eq!(eval(&f, "personality", arg0(0xffff_ffff)), RET_ALLOW);
    // READ_IMPLIES_EXEC
    assert_eq!(eval(&f, "personality", arg0(0x0040_0000)), errno(libc::EPERM));
}

#[test]
fn every_capability_combination_fits_in_a_program() {
    let all: Vec<&str> = default::BY_CAPABILITY.iter().map(|(c, _)| *c).collect();
    // The allow-list, and ENOSYS for clone3 when namespaces are closed.
    for (caps, programs) in [(&[][..], 2), (&all[..], 1)] {
        let f = default_filter(caps);
        assert!(f.programs.iter().all(|p| p.len() < 4096));
        assert_eq!(f.programs.len(), programs);
    }
}

fn oci(json: &str) -> LinuxSeccomp {
    serde_json::from_str(json).unwrap()
}

#[test]
fn oci_profiles() {
    let s = oci(r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir", "no_such_call"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["kill"], "action": "SCMP_ACT_KILL_PROCESS",
             "args": [{"index": 1, "value": 9, "op": "SCMP_CMP_EQ"},
                      {"index": 1, "value": 15, "op": "SCMP_CMP_EQ"}]},
            {"names": ["socket"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 0, "value": 16, "op": "SCMP_CMP_EQ"},
                      {"index": 2, "value": 9, "op": "SCMP_CMP_EQ"}]}
        ]}"#);
    let (p, flags) = Profile::from_oci(&s).unwrap();
    assert_eq!(flags, 0);
    let f = p.compile(flags).unwrap();
    assert_eq!(eval(&f, "mkdir", NO), errno(13));
    assert_eq!(eval(&f, "read", NO), RET_ALLOW);
    // Two conditions on one argument are alternatives.
    assert_eq!(eval(&f, "kill", [1, 9, 0, 0, 0, 0]), RET_KILL_PROCESS);
    assert_eq!(eval(&f, "kill", [1, 15, 0, 0, 0, 0]), RET_KILL_PROCESS);
    assert_eq!(eval(&f, "kill", [1, 1, 0, 0, 0, 0]), RET_ALLOW);
    // Conditions on different arguments must all hold.
    assert_eq!(eval(&f, "socket", [16, 3, 9, 0, 0, 0]), errno(libc::EPERM));
    assert_eq!(eval(&f, "socket", [16, 3, 0, 0, 0, 0]), RET_ALLOW);

    let s = oci(
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38, "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [{"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"},
                         {"names": ["openat"], "action": "SCMP_ACT_ALLOW",
                          "args": [{"index": 2, "value": 3, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}]}"#,
    );
    let (p, flags) = Profile::from_oci(&s).unwrap();
    assert_eq!(flags, libc::SECCOMP_FILTER_FLAG_LOG);
    let f = p.compile(flags).unwrap();
    assert_eq!(eval(&f, "write", NO), RET_ALLOW);
    assert_eq!(eval(&f, "mount", NO), errno(libc::ENOSYS));
    assert_eq!(eval(&f, "openat", [0, 0, 0, 0, 0, 0]), RET_ALLOW); // O_RDONLY
    assert_eq!(eval(&f, "openat", [0, 0, 2, 0, 0, 0]), errno(libc::ENOSYS)); // O_RDWR
}

#[test]
fn unsupported_oci_parts_are_named() {
    let s = oci(r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#);
    assert!(Profile::from_oci(&s)
        .unwrap_err()
        .to_string()
        .contains("SCMP_ACT_NOTIFY"));
    let s = oci(
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_ERRNO",
            "args": [{"index": 6, "value": 9, "op": "SCMP_CMP_EQ"}]}]}"#,
    );
    let e = Profile::from_oci(&s).unwrap_err().to_string();
    assert!(e.contains("syscalls[0] (kill)") && e.contains("index 6"), "{e}");
}

/// What a program built by `bpf::program` must return, from the rules themselves.
fn reference(
    rules: &BTreeMap<i64, Vec<Vec<Cond>>>,
    mismatch: Action,
    matched: Action,
    nr: i64,
    args: [u64; 6],
) -> u32 {
    let holds = |c: &Cond| {
        let a = args[c.index as usize];
        match c.op {
            Op::Eq => a == c.value,
            Op::Ne => a != c.value,
            Op::Lt => a < c.value,
            Op::Le => a <= c.value,
            Op::Gt => a > c.value,
            Op::Ge => a >= c.value,
            Op::MaskedEq => a & c.value == c.value_two,
        }
    };
    let hit = rules
        .get(&nr)
        .is_some_and(|alts| alts.iter().any(|conds| conds.iter().all(holds)));
    bpf::ret_value(if hit { matched } else { mismatch })
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Values at the edges of 32-bit halves, where a comparison split in two words errs.
    fn value(&mut self, near: &[u64]) -> u64 {
        const EDGES: [u64; 8] = [
            0,
            1,
            0x7fff_ffff,
            0xffff_ffff,
            0x1_0000_0000,
            0x1_0000_0001,
            u64::MAX - 1,
            u64::MAX,
        ];
        match self.below(4) {
            0 => EDGES[self.below(8) as usize],
            1 if !near.is_empty() => {
                let v = near[self.below(near.len() as u64) as usize];
                match self.below(3) {
                    0 => v.wrapping_sub(1),
                    1 => v,
                    _ => v.wrapping_add(1),
                }
            }
            2 => self.next() & 0xffff_ffff,
            _ => self.next(),
        }
    }
}

/// The code generator against the rules' meaning, on random rule sets (runs of adjacent
/// numbers, conditions of every kind, programs long enough to need far jumps) and argument
/// values at the edges of every comparison.
#[test]
fn generated_programs_mean_what_their_rules_say() {
    let ops = [Op::Eq, Op::Ne, Op::Lt, Op::Le, Op::Gt, Op::Ge, Op::MaskedEq];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..300 {
        let mut rules: BTreeMap<i64, Vec<Vec<Cond>>> = BTreeMap::new();
        let mut values = Vec::new();
        // One round in ten: hundreds of calls, most without conditions, like a profile.
        let big = round % 10 == 0;
        let calls = 1 + rng.below(if big { 400 } else { 40 });
        let mut nr = rng.below(5) as i64;
        for _ in 0..calls {
            nr += 1 + (rng.below(4) == 0) as i64 * rng.below(20) as i64;
            if big && rng.below(8) != 0 {
                rules.insert(nr, vec![Vec::new()]);
                continue;
            }
            let alts = (0..rng.below(4))
                .map(|_| {
                    (0..1 + rng.below(3))
                        .map(|_| {
                            let c = Cond {
                                index: rng.below(6) as u8,
                                op: ops[rng.below(7) as usize],
                                value: rng.value(&values),
                                value_two: rng.value(&values),
                            };
                            values.push(c.value);
                            values.push(c.value_two);
                            c
                        })
                        .collect()
                })
                .collect();
            rules.insert(nr, alts);
        }
        // A few calls with many alternatives: the conditions alone pass 255 instructions.
        if round % 7 == 0 {
            let many = (0..60)
                .map(|_| {
                    vec![Cond {
                        index: rng.below(6) as u8,
                        op: ops[rng.below(7) as usize],
                        value: rng.value(&values),
                        value_two: rng.value(&values),
                    }]
                })
                .collect();
            rules.insert(nr + 1, many);
        }
        let (mismatch, matched) = if round % 2 == 0 {
            (Action::Errno(1), Action::Allow)
        } else {
            (Action::Allow, Action::Trace(7))
        };
        let prog = bpf::program(&rules, mismatch, matched);
        assert!(
            prog.len() <= bpf::MAX_LEN,
            "round {round}: {} instructions",
            prog.len()
        );
        let last = *rules.keys().last().unwrap_or(&0);
        for _ in 0..400 {
            let nr = match rng.below(3) {
                0 => rng.below(last as u64 + 3) as i64,
                1 => *rules
                    .keys()
                    .nth(rng.below(rules.len() as u64) as usize)
                    .unwrap_or(&0),
                _ => rng.value(&[]) as u32 as i64,
            };
            let args = [(); 6].map(|_| rng.value(&values));
            let want = reference(&rules, mismatch, matched, nr, args);
            assert_eq!(
                run(&prog, nr, AUDIT_ARCH_X86_64, args),
                want,
                "round {round}: nr {nr}, args {args:x?}, rules for it {:?}; through {:?} of {}",
                rules.get(&nr),
                run_traced(&prog, nr, AUDIT_ARCH_X86_64, args).1,
                prog.len()
            );
        }
        assert_eq!(run(&prog, 0, AUDIT_ARCH_I386, NO), RET_KILL_PROCESS);
    }
}

#[test]
fn the_default_profile_is_a_short_program() {
    let f = default_filter(&[]);
    let lens: Vec<usize> = f.programs.iter().map(Vec::len).collect();
    // A binary search over ranges (107 instructions when written), not a test per call.
    assert!(lens[0] < 200, "{lens:?}");
}
