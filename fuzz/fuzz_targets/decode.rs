//! Ring-buffer records from the kernel to events: any bytes decode or fail, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = leaktrace::decode::decode(bytes);
});
