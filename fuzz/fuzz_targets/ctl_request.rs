//! The control socket's request decoder, fed what a client sends, split into reads at
//! arbitrary points. It must not panic, must never hold more than MAX_REQUEST bytes, must
//! give the same answers however the stream is split, and every request it accepts must
//! survive encode -> decode unchanged. The client's response decoder gets the same lines.
#![no_main]

use keel::ctl::{encode, encode_request, RequestReader, Response, MAX_REQUEST};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: a seed for the read sizes; the rest: the byte stream.
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let whole = RequestReader::new().feed(stream);

    let mut reader = RequestReader::new();
    let mut split = Vec::new();
    let mut rest = stream;
    let mut step = usize::from(seed) + 1;
    while !rest.is_empty() {
        let n = step.min(rest.len());
        let (now, later) = rest.split_at(n);
        let got = reader.feed(now);
        // One answer per completed line, plus at most one TooLong.
        assert!(got.len() <= now.iter().filter(|&&b| b == b'\n').count() + 1);
        split.extend(got);
        assert!(reader.buffered() <= MAX_REQUEST, "{}", reader.buffered());
        rest = later;
        step = step * 7 % 4099 + 1;
    }
    assert_eq!(whole, split, "answers depend on how the stream was split");

    for r in whole.iter().flatten() {
        let line = encode_request(r);
        assert_eq!(RequestReader::new().feed(&line), vec![Ok(r.clone())]);
    }

    for line in stream.split(|&b| b == b'\n') {
        if let Ok(resp) = serde_json::from_slice::<Response>(line) {
            let again: Response = serde_json::from_slice(&encode(&resp)).expect("own encoding");
            assert_eq!(again, resp);
        }
    }
});
