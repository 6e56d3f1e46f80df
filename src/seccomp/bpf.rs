//! The classic-BPF code generator: one program per (rules, mismatch, matched) triple.
//!
//! System call numbers are found by a binary search over ranges (numbers next to each other
//! with the same outcome share a range), so a program is a few hundred instructions for the
//! default profile rather than a linear chain of one comparison per call. That matters when
//! the filter is loaded: the kernel runs the program once per system call number to build
//! its cache of calls that are always allowed.
//!
//! Code is emitted backwards, so every jump target is known when the jump is written; a
//! conditional jump can only skip 255 instructions, farther targets go through an `ja`.

use std::collections::BTreeMap;

use super::{Action, Cond, Op};

pub type BpfProgram = Vec<libc::sock_filter>;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// `struct seccomp_data` offsets: nr, arch, then args[6] after the instruction pointer.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

const LD_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const AND_K: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGT: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// The kernel's limit on a program's length.
pub const MAX_LEN: usize = 4096;

pub fn ret_value(a: Action) -> u32 {
    match a {
        Action::Allow => 0x7fff_0000,
        Action::Errno(e) => 0x0005_0000 | (e & 0xffff),
        Action::KillThread => 0,
        Action::KillProcess => 0x8000_0000,
        Action::Trap => 0x0003_0000,
        Action::Log => 0x7ffc_0000,
        Action::Trace(v) => 0x7ff0_0000 | (v & 0xffff),
    }
}

/// A position counted from the end of the program (0 is the last instruction).
type Label = usize;

struct Emitter {
    /// The program reversed.
    rev: Vec<libc::sock_filter>,
}

impl Emitter {
    fn push(&mut self, code: u16, jt: u8, jf: u8, k: u32) -> Label {
        self.rev.push(libc::sock_filter { code, jt, jf, k });
        self.rev.len() - 1
    }

    /// Instructions between the next one emitted and `to`.
    fn skip(&self, to: Label) -> usize {
        self.rev.len() - to - 1
    }

    fn ret(&mut self, a: Action) -> Label {
        self.push(RET, 0, 0, ret_value(a))
    }

    fn load(&mut self, off: u32) -> Label {
        self.push(LD_ABS, 0, 0, off)
    }

    /// `to`, or an `ja` to it when a conditional jump cannot reach it.
    fn near(&mut self, to: Label) -> Label {
        match u8::try_from(self.skip(to)) {
            Ok(_) => to,
            Err(_) => {
                let k = self.skip(to) as u32;
                self.push(JA, 0, 0, k)
            }
        }
    }

    /// A conditional jump: to `t` if it holds, else to `f`.
    fn jump(&mut self, code: u16, k: u32, t: Label, f: Label) -> Label {
        // A trampoline for one target moves the other one further away: until both fit.
        let (mut t, mut f) = (t, f);
        loop {
            match (u8::try_from(self.skip(t)), u8::try_from(self.skip(f))) {
                (Ok(jt), Ok(jf)) => return self.push(code, jt, jf, k),
                (Err(_), _) => t = self.near(t),
                (_, Err(_)) => f = self.near(f),
            }
        }
    }

    /// Code testing `c` on the loaded arguments: continues at `t` if it holds, else `f`.
    fn cond(&mut self, c: &Cond, t: Label, f: Label) -> Label {
        let (lo_off, hi_off) = (OFF_ARGS + 8 * c.index as u32, OFF_ARGS + 8 * c.index as u32 + 4);
        let split = |v: u64| ((v >> 32) as u32, v as u32);
        match c.op {
            // Each step falls through to the one emitted just before it.
            Op::Eq | Op::Ne => {
                let (t, f) = if c.op == Op::Eq { (t, f) } else { (f, t) };
                let (hi, lo) = split(c.value);
                self.jump(JEQ, lo, t, f);
                let low = self.load(lo_off);
                self.jump(JEQ, hi, low, f);
                self.load(hi_off)
            }
            Op::MaskedEq => {
                let (mhi, mlo) = split(c.value);
                let (hi, lo) = split(c.value_two);
                self.jump(JEQ, lo, t, f);
                self.push(AND_K, 0, 0, mlo);
                let low = self.load(lo_off);
                self.jump(JEQ, hi, low, f);
                self.push(AND_K, 0, 0, mhi);
                self.load(hi_off)
            }
            Op::Gt | Op::Le | Op::Ge | Op::Lt => {
                // Unsigned 64-bit: the high words decide unless they are equal.
                let (t, f) = match c.op {
                    Op::Gt | Op::Ge => (t, f),
                    _ => (f, t),
                };
                let low_op = if matches!(c.op, Op::Gt | Op::Le) { JGT } else { JGE };
                let (hi, lo) = split(c.value);
                self.jump(low_op, lo, t, f);
                let low = self.load(lo_off);
                let equal = self.jump(JEQ, hi, low, f);
                self.jump(JGT, hi, t, equal);
                self.load(hi_off)
            }
        }
    }
}

/// One program: a system call that `rules` names, with one of its alternative condition
/// sets holding (an empty set always holds), gets `matched`; anything else `mismatch`. A
/// call from another architecture kills the process.
pub fn program(rules: &BTreeMap<i64, Vec<Vec<Cond>>>, mismatch: Action, matched: Action) -> BpfProgram {
    let mut e = Emitter { rev: Vec::new() };
    let on_match = e.ret(matched);
    let on_mismatch = e.ret(mismatch);
    let kill = e.ret(Action::KillProcess);
    // Where each named call goes.
    let mut targets: Vec<(u32, Label)> = Vec::new();
    for (&nr, alts) in rules {
        let Ok(nr) = u32::try_from(nr) else { continue };
        let entry = if alts.iter().any(Vec::is_empty) {
            on_match
        } else {
            let mut next = on_mismatch;
            for conds in alts.iter().rev() {
                let mut at = on_match;
                for c in conds.iter().rev() {
                    at = e.cond(c, at, next);
                }
                next = at;
            }
            next
        };
        targets.push((nr, entry));
    }
    // Ranges [start, next start) covering every number; neighbours with one outcome merge.
    let mut ranges: Vec<(u32, Label)> = Vec::new();
    let mut add = |start: u32, to: Label| {
        if let Some(last) = ranges.last_mut().filter(|l| l.0 == start) {
            last.1 = to;
            let n = ranges.len();
            if n >= 2 && ranges[n - 2].1 == to {
                ranges.pop();
            }
        } else if ranges.last().is_none_or(|l| l.1 != to) {
            ranges.push((start, to));
        }
    };
    add(0, on_mismatch);
    for (nr, to) in targets {
        add(nr, to);
        if let Some(after) = nr.checked_add(1) {
            add(after, on_mismatch);
        }
    }
    let root = search(&mut e, &ranges);
    // The load of the number falls through to the search's root.
    if root + 1 != e.rev.len() {
        let k = e.skip(root) as u32;
        e.push(JA, 0, 0, k);
    }
    e.load(OFF_NR);
    let numbers = e.rev.len() - 1;
    e.jump(JEQ, AUDIT_ARCH_X86_64, numbers, kill);
    e.load(OFF_ARCH);
    e.rev.reverse();
    e.rev
}

/// A binary search over `ranges` (sorted by start, the first starting at 0) on the number
/// in the accumulator; returns the entry label.
fn search(e: &mut Emitter, ranges: &[(u32, Label)]) -> Label {
    if ranges.len() == 1 {
        return ranges[0].1;
    }
    let mid = ranges.len() / 2;
    let high = search(e, &ranges[mid..]);
    let low = search(e, &ranges[..mid]);
    e.jump(JGE, ranges[mid].0, high, low)
}
