//! `/proc/PID/cgroup` text to the container (and pod) a process runs in.
#![no_main]
use libfuzzer_sys::fuzz_target;
use leaktrace::container::cgroup;

fuzz_target!(|text: &str| {
    let _ = cgroup::parse(text);
    let _ = cgroup::parse_path(text);
    let _ = cgroup::is_id_prefix(text);
});
