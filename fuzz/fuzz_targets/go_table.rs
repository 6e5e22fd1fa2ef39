//! A Go binary's `.gopclntab` (function, file and line of an address, inlined calls
//! included) and its `.go.buildinfo` version, from any ELF bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use leaktrace::{goruntime::{GoVersion, buildinfo}, symbolize::gopclntab::GoTable};

fuzz_target!(|bytes: &[u8]| {
    if let Some(version) = buildinfo::version_string(bytes) {
        let _ = GoVersion::parse(&version);
    }
    let Some(table) = GoTable::from_bytes(bytes) else { return };
    let _ = table.function_named("runtime.newproc1");
    // Addresses through the whole text, a few hundred lookups per input at most.
    let Some(range) = table.function_named("main.main").or_else(|| table.function_named("runtime.main")) else { return };
    let step = ((range.end.saturating_sub(range.start)) / 64).max(1);
    let mut address = range.start.saturating_sub(step * 4);
    while address < range.end.saturating_add(step * 4) {
        let _ = table.lookup(address);
        let _ = table.function_starting_at(address);
        address = address.saturating_add(step);
        if address == u64::MAX { break }
    }
    for offset in [0u64, 0x1000, 0x40_0000, u64::MAX] {
        let _ = table.file_offset_to_address(offset);
        let _ = table.address_to_file_offset(offset);
    }
});
