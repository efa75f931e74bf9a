//! The spool journal reader on an arbitrary segment file: every frame it returns is whole, and
//! a torn or corrupt tail ends the reading, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trace_proxy::spool::journal::Reader;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("00000000000000000001.journal");
    std::fs::write(&path, data).expect("write segment");
    let Ok(mut reader) = Reader::open(&path) else {
        return;
    };
    while let Ok(Some(frame)) = reader.next_frame() {
        // What replay does with a frame: decode it as a record (or skip it).
        let _ = serde_json::from_slice::<trace_proxy::spool::Record>(&frame);
    }
});
