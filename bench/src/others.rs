//! `leaktrace-bench others`: the tracing programs loaded on this host, as JSON. Other people's
//! tracers (a test suite running leaktrace, a bpftrace) run on the benchmark's connections too
//! and skew every row alike; the report says when they were there.
use anyhow::{Context, Result};
use aya::programs::loaded_programs;
use aya_obj::generated::bpf_prog_type;
use serde::Serialize;

#[derive(Serialize)]
struct Others {
    r#type: &'static str,
    programs: Vec<Program>,
}

#[derive(Serialize)]
struct Program {
    id: u32,
    name: String,
}

/// Program types that run on kernel events (tracepoints, kprobes, fentry, perf events).
const TRACING: [bpf_prog_type; 5] = [
    bpf_prog_type::BPF_PROG_TYPE_TRACEPOINT,
    bpf_prog_type::BPF_PROG_TYPE_RAW_TRACEPOINT,
    bpf_prog_type::BPF_PROG_TYPE_TRACING,
    bpf_prog_type::BPF_PROG_TYPE_KPROBE,
    bpf_prog_type::BPF_PROG_TYPE_PERF_EVENT,
];

pub fn run() -> Result<()> {
    let mut programs = Vec::new();
    for info in loaded_programs() {
        let info = info.context("listing the loaded BPF programs (needs CAP_SYS_ADMIN)")?;
        if TRACING.contains(&info.program_type()) {
            programs.push(Program {
                id: info.id(),
                name: info.name_as_str().unwrap_or("?").to_string(),
            });
        }
    }
    println!(
        "{}",
        serde_json::to_string(&Others {
            r#type: "others",
            programs
        })?
    );
    Ok(())
}
