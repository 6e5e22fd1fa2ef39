//! Perf maps (`/tmp/perf-PID.map`), written by whatever runs in the traced process.
#![no_main]
use libfuzzer_sys::fuzz_target;
use leaktrace::symbolize::perfmap::PerfMap;

fuzz_target!(|text: &str| {
    let map = PerfMap::parse(text);
    for address in [0, 1, 0x1000, 0x7fff_0000_0000, u64::MAX] {
        let _ = map.lookup(address);
    }
});
