//! Seccomp without the C library: a profile (OCI `linux.seccomp`, or keel's default) is
//! compiled into classic BPF in PID 1 and installed by the container's init right before
//! execve, after its capabilities are dropped.
//!
//! A profile maps system calls to actions, optionally under argument conditions. Each BPF
//! program the compiler emits has a single match action, so a profile becomes one program
//! that allows everything the profile names (under its conditions) and falls back to the
//! default action, plus one program per other action that takes that action on its rules
//! and allows the rest. The kernel runs every program and applies the most restrictive
//! result, so where rules overlap the most restrictive matching action wins.
//!
//! Only the native x86_64 ABI is filtered; system calls made through another ABI (i386,
//! x32 numbers) never match a rule: i386 kills the process, x32 gets the default action.

mod bpf;
mod default;
mod x86_64;

use std::collections::BTreeMap;

pub use bpf::BpfProgram;
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator};

pub use default::profile as default_profile;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeccompError {
    #[error("linux.seccomp: action {0} is not supported")]
    Action(String),
    #[error("linux.seccomp: syscalls[{rule}] ({name}): argument index {index} is out of range (0-5)")]
    ArgIndex { rule: usize, name: String, index: usize },
    #[error("linux.seccomp: the filter cannot be compiled: {0}")]
    Compile(String),
    #[error("linux.seccomp: flag {0} is not supported")]
    Flag(String),
    #[error("seccomp filter: {0}")]
    Install(String),
}

type Result<T> = std::result::Result<T, SeccompError>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Allow,
    Errno(u32),
    KillThread,
    KillProcess,
    Trap,
    Log,
    Trace(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Ne,
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
    /// `(arg & value) == value_two`
    MaskedEq,
}

/// A comparison of one system call argument (64 bits wide).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cond {
    pub index: u8,
    pub op: Op,
    pub value: u64,
    pub value_two: u64,
}

/// `action` for each of `names` when every condition holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub names: Vec<String>,
    pub action: Action,
    pub conds: Vec<Cond>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    pub default: Action,
    pub rules: Vec<Rule>,
}

/// Compiled programs, in installation order, and the seccomp(2) flags to install them with.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub programs: Vec<BpfProgram>,
    pub flags: libc::c_ulong,
}

/// The number of a system call on x86_64.
pub fn syscall_number(name: &str) -> Option<i64> {
    x86_64::X86_64
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| i64::from(x86_64::X86_64[i].1))
}

/// The name of an x86_64 system call number.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    x86_64::X86_64
        .iter()
        .find(|(_, n)| i64::from(*n) == nr)
        .map(|(name, _)| *name)
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<Action> {
    use LinuxSeccompAction as A;
    Ok(match a {
        A::ScmpActAllow => Action::Allow,
        A::ScmpActErrno => Action::Errno(errno.unwrap_or(libc::EPERM as u32)),
        A::ScmpActKill | A::ScmpActKillThread => Action::KillThread,
        A::ScmpActKillProcess => Action::KillProcess,
        A::ScmpActTrap => Action::Trap,
        A::ScmpActLog => Action::Log,
        A::ScmpActTrace => Action::Trace(errno.unwrap_or(0)),
        A::ScmpActNotify => {
            return Err(SeccompError::Action(
                "SCMP_ACT_NOTIFY (no seccomp agent runs in keel)".into(),
            ))
        }
    })
}

impl Profile {
    /// The profile of an OCI `linux.seccomp` section. Within one rule, several conditions
    /// on the same argument are alternatives (each becomes its own rule), as OCI runtimes
    /// read them; conditions on different arguments must all hold.
    pub fn from_oci(s: &LinuxSeccomp) -> Result<(Profile, libc::c_ulong)> {
        let mut flags = 0;
        for f in s.flags().iter().flatten() {
            flags |= match f {
                LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
                LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW,
                // The container's init is single-threaded when the filter goes in.
                LinuxSeccompFilterFlag::SeccompFilterFlagTsync => 0,
                #[allow(unreachable_patterns)]
                other => return Err(SeccompError::Flag(format!("{other:?}"))),
            };
        }
        let mut rules = Vec::new();
        for (i, sc) in s.syscalls().iter().flatten().enumerate() {
            let act = action(sc.action(), sc.errno_ret())?;
            let mut conds: Vec<Cond> = Vec::new();
            for a in sc.args().iter().flatten() {
                if a.index() > 5 {
                    return Err(SeccompError::ArgIndex {
                        rule: i,
                        name: sc.names().join(","),
                        index: a.index(),
                    });
                }
                use LinuxSeccompOperator as O;
                conds.push(Cond {
                    index: a.index() as u8,
                    op: match a.op() {
                        O::ScmpCmpNe => Op::Ne,
                        O::ScmpCmpLt => Op::Lt,
                        O::ScmpCmpLe => Op::Le,
                        O::ScmpCmpEq => Op::Eq,
                        O::ScmpCmpGe => Op::Ge,
                        O::ScmpCmpGt => Op::Gt,
                        O::ScmpCmpMaskedEq => Op::MaskedEq,
                    },
                    value: a.value(),
                    value_two: a.value_two().unwrap_or(0),
                });
            }
            let repeated = conds
                .iter()
                .enumerate()
                .any(|(j, c)| conds[..j].iter().any(|d| d.index == c.index));
            let sets = if repeated {
                conds.into_iter().map(|c| vec![c]).collect()
            } else {
                vec![conds]
            };
            for conds in sets {
                rules.push(Rule {
                    names: sc.names().clone(),
                    action: act,
                    conds,
                });
            }
        }
        let profile = Profile {
            default: action(s.default_action(), s.default_errno_ret())?,
            rules,
        };
        Ok((profile, flags))
    }

    /// Compile into BPF programs. Names this kernel table does not know are skipped, as
    /// OCI runtimes do, so one profile can serve several kernels.
    pub fn compile(&self, flags: libc::c_ulong) -> Result<Filter> {
        // For each action, each system call's alternative condition sets (empty: always).
        let mut by_action: BTreeMap<Action, BTreeMap<i64, Vec<Vec<Cond>>>> = BTreeMap::new();
        for r in &self.rules {
            for name in &r.names {
                let Some(nr) = syscall_number(name) else {
                    continue;
                };
                by_action
                    .entry(r.action)
                    .or_default()
                    .entry(nr)
                    .or_default()
                    .push(r.conds.clone());
            }
        }
        // The first program: whatever some rule names passes (under its conditions), the
        // rest gets the default action.
        let mut main: BTreeMap<i64, Vec<Vec<Cond>>> = BTreeMap::new();
        for calls in by_action.values() {
            for (nr, alts) in calls {
                main.entry(*nr).or_default().extend(alts.iter().cloned());
            }
        }
        let mut programs = Vec::new();
        if self.default != Action::Allow {
            programs.push(bpf::program(&main, self.default, Action::Allow));
        }
        for (act, calls) in &by_action {
            if *act != Action::Allow {
                programs.push(bpf::program(calls, Action::Allow, *act));
            }
        }
        if let Some(p) = programs.iter().find(|p| p.len() > bpf::MAX_LEN) {
            return Err(SeccompError::Compile(format!(
                "a program of {} instructions is over the kernel's limit of {}",
                p.len(),
                bpf::MAX_LEN
            )));
        }
        Ok(Filter { programs, flags })
    }
}

impl Filter {
    /// Install every program into the calling thread. Without no_new_privs this needs
    /// CAP_SYS_ADMIN, which the caller checks before it gets here.
    pub fn install(&self) -> Result<()> {
        for p in &self.programs {
            let prog = libc::sock_fprog {
                len: p.len() as u16,
                filter: p.as_ptr() as *mut libc::sock_filter,
            };
            // SAFETY: the kernel copies the program; `prog` and `p` outlive the call.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    self.flags,
                    &prog as *const libc::sock_fprog,
                )
            };
            if rc != 0 {
                return Err(SeccompError::Install(std::io::Error::last_os_error().to_string()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
