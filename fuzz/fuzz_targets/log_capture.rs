//! A container's output as PID 1 captures it: arbitrary bytes in arbitrary reads through
//! the line assembler into a ring. Bounded memory (pending bytes, ring budget), no '\n' in a
//! line, consecutive sequence numbers, and nothing lost or invented: the lines re-joined
//! give back the input (modulo CR before LF, and lossy UTF-8).
#![no_main]

use std::time::Duration;

use keel::logging::capture::{LineAssembler, Ring, Stream, MAX_LINE, MIN_BUDGET};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let mut asm = LineAssembler::new();
    let mut ring = Ring::new(MIN_BUDGET + usize::from(seed) * 64);
    let mut lines: Vec<String> = Vec::new();
    let mut rest = input;
    let mut step = usize::from(seed) % 64 + 1;
    while !rest.is_empty() {
        let (now, later) = rest.split_at(step.min(rest.len()));
        asm.feed(now, &mut |l: &str| lines.push(l.to_owned()));
        assert!(asm.pending() <= MAX_LINE + 1, "{}", asm.pending());
        rest = later;
        step = step * 13 % 5003 + 1;
    }
    let complete = lines.len();
    asm.flush(&mut |l: &str| lines.push(l.to_owned()));
    assert_eq!(asm.pending(), 0);

    for (i, l) in lines.iter().enumerate() {
        assert!(!l.contains('\n'));
        let seq = ring.push(Duration::from_millis(i as u64), Stream::Stdout, l);
        assert_eq!(seq, i as u64 + 1);
        assert!(ring.bytes() <= ring.budget());
    }
    let kept: Vec<u64> = ring.last(usize::MAX).map(|e| e.seq).collect();
    assert!(kept.windows(2).all(|w| w[1] == w[0] + 1));
    assert_eq!(ring.dropped() + ring.len() as u64, lines.len() as u64);

    // Valid UTF-8 without CR comes back exactly: pieces of a long line are joined without
    // a separator only when they were cut, so compare the characters alone.
    if let Ok(text) = std::str::from_utf8(input) {
        if !text.contains('\r') {
            let want: String = text.chars().filter(|&c| c != '\n').collect();
            let got: String = lines.concat();
            assert_eq!(got, want);
            let newlines = text.matches('\n').count();
            assert!(complete >= newlines);
        }
    }
});
