//! The cpio reader on arbitrary bytes: never panics, every entry it returns lies within
//! the input, and the streaming reader and read_entries agree.
#![no_main]

use keel::image::cpio::{read_entries, Reader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let range = data.as_ptr_range();
    let inside = |s: &[u8]| {
        let r = s.as_ptr_range();
        s.is_empty() || (range.start <= r.start && r.end <= range.end)
    };
    let mut streamed = Vec::new();
    let mut reader = Reader::new(data);
    let mut failed = false;
    for e in &mut reader {
        match e {
            Ok(e) => {
                assert!(inside(e.name) && inside(e.data));
                assert!(!e.name.is_empty() && !e.name.contains(&0));
                streamed.push(e);
            }
            Err(err) => {
                let _ = err.to_string();
                failed = true;
                break;
            }
        }
    }
    // After an error or the trailer the reader stays finished.
    assert!(reader.next().is_none());
    if let Ok(all) = read_entries(data) {
        assert!(!failed);
        assert_eq!(all, streamed);
    }
});
