//! `/proc` files: `PID/stat` (comm, start time), `PID/fd/N` link targets, `PID/maps`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use leaktrace::{inventory, symbolize::capture};

fuzz_target!(|bytes: &[u8]| {
    let _ = inventory::parse_stat(bytes);
    let _ = inventory::socket_inode(bytes);
    let _ = capture::executable_maps(bytes);
});
