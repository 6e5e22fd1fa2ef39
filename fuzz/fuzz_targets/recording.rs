//! `--record` files for `leaktrace replay`: each line parses or fails, and a recording replays.
#![no_main]
use libfuzzer_sys::fuzz_target;
use leaktrace::{commands::replay::Replayer, recording, tracker::{Filter, Limits, Thresholds}};

fuzz_target!(|bytes: &[u8]| {
    let mut replayer = Replayer::new(Thresholds::default(), Limits::default(), Filter::default());
    for record in recording::read(bytes).map_while(Result::ok) {
        replayer.begin(&record);
        replayer.apply(record);
    }
    if let Some(end) = replayer.end_ns() {
        let _ = replayer.report_at(end);
    }
});
