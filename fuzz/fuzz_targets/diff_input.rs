//! What `leaktrace diff` reads: a `--format json` report, a jsonl stream or a recording, with
//! or without a time into it.
#![no_main]
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use leaktrace::{diff::input, tracker::{Filter, Thresholds}};

fuzz_target!(|bytes: &[u8]| {
    // The first byte picks a time into the input (or none), the rest is the file.
    let Some((&first, file)) = bytes.split_first() else { return };
    let at = (first != 0).then(|| Duration::from_millis(u64::from(first) * 100));
    let _ = input::parse("fuzz", file, at, &Thresholds::default(), &Filter::default());
});
