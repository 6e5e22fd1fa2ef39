//! A batch of netlink sock_diag replies (`inet_diag_msg` and its attributes) as a dump reads it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    // The seeds are replies to request 1 (see the corpus); other sequence numbers are skipped.
    let _ = leaktrace::inventory::parse_dump_batch(bytes, 1, 0);
});
