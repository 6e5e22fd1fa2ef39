//! `cargo xtask`: the workspace's own build tool, so that a fresh machine needs two commands
//! (`cargo xtask setup`, then `cargo xtask build` or `test`) and no hand-run toolchain steps.

/// One line of progress (or a warning) on stderr, prefixed so it stands out from cargo's output.
macro_rules! say {
    ($($arg:tt)*) => { eprintln!("xtask: {}", format_args!($($arg)*)) };
}

mod bench;
mod cargo;
mod cmd;
mod fuzz;
mod image;
mod setup;
mod vmtest;

use std::{env, ffi::OsString, path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Set up, build, run and test leaktrace"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building needs (checks first; safe to rerun)
    ///
    /// A nightly toolchain with rust-src, and bpf-linker linked against the nightly's LLVM;
    /// with --test-deps also the end-to-end tests' tools. Mounts tracefs when root.
    Setup {
        /// Also install what the end-to-end tests need (gcc, iproute2, Go with grpc-go, python3, liburing,
        /// podman, runc, buildah, prometheus).
        #[arg(long)]
        test_deps: bool,
        /// Look for and install bpf-linker only in DIR/bin (`cargo install --root DIR`); also
        /// $XTASK_BPF_LINKER_ROOT, which build, run and test follow too. For testing xtask.
        #[arg(long, value_name = "DIR", hide = true)]
        bpf_linker_root: Option<PathBuf>,
    },
    /// Set up, then build leaktrace (release unless --debug); prints the binary's path on stdout
    Build {
        /// Build the debug profile.
        #[arg(long)]
        debug: bool,
    },
    /// Set up, build, then run leaktrace with ARGS (`cargo xtask run -- events --duration 1`)
    Run {
        /// Build and run the debug profile.
        #[arg(long)]
        debug: bool,
        /// Arguments for leaktrace.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<OsString>,
    },
    /// Set up (with test prerequisites), then `cargo test` the workspace
    ///
    /// ARGS go to `cargo test` as given, `--` included (`cargo xtask test -- --nocapture`).
    /// As root, LEAKTRACE_REQUIRE_PRIVILEGED=1 makes privileged tests fail instead of skipping.
    Test {
        /// Arguments for `cargo test`.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<OsString>,
    },
    /// Set up, then build the container image `localhost/leaktrace:<version>` (and `:latest`) with
    /// buildah: a static leaktrace, nothing else; prints the image's name on stdout (root)
    Image {
        /// Also write it to target/image/leaktrace.tar (docker-archive: `docker load`,
        /// `ctr -n k8s.io images import`, `kind load image-archive`).
        #[arg(long)]
        save: bool,
    },
    /// Boot Debian's kernels (5.10, 6.1, 6.12 of bookworm-backports and of trixie) under qemu, run
    /// the lifecycle and verdict checks there against the real probes; prints which passed which
    Vmtest {
        /// CI mode: never skip (a missing tool or kernel is an error).
        #[arg(long)]
        ci: bool,
        /// Only this kernel (`5.10`, `6.1`, `6.12`, `6.12-trixie`); repeatable. Default: all.
        #[arg(long = "kernel", value_name = "NAME")]
        kernels: Vec<String>,
        /// Write the results to README.md's "Tested on" table.
        #[arg(long)]
        write_readme: bool,
        /// Time limit of one kernel's boot and checks, in seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Fuzz every parser of outside bytes (cargo fuzz, libFuzzer), each target for a bounded time
    /// from its committed corpus; fails on a crash, hang or out-of-memory. Installs cargo-fuzz
    Fuzz {
        /// CI's run: a fixed seed and 20 000 inputs per target (at most --seconds), so a
        /// commit's result is the same on every run.
        #[arg(long)]
        ci: bool,
        /// Seconds per target (default 120).
        #[arg(long)]
        seconds: Option<u64>,
        /// Only these targets (`cargo fuzz list` in fuzz/ names them).
        #[arg(value_name = "TARGET")]
        targets: Vec<String>,
    },
    /// Set up, then clippy with warnings denied: host crates, and the eBPF crate with the nightly
    Clippy,
    /// Measure what leaktrace costs (root): throughput traced and untraced, kernel cost per
    /// program, events at fixed rates, kernel memory per live connection; writes BENCHMARKS.md
    Bench {
        /// Every section once, tiny, in seconds: checks that they work (CI), never a speed;
        /// writes target/bench/BENCHMARKS.smoke.md instead of BENCHMARKS.md.
        #[arg(long)]
        smoke: bool,
        /// Interleaved epochs of the throughput comparison.
        #[arg(long, default_value_t = 10)]
        epochs: usize,
        /// Seconds of load per measurement.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Live connections of the memory section (comma-separated).
        #[arg(long, value_delimiter = ',', default_values_t = [100_000, 1_000_000])]
        live: Vec<usize>,
        /// Only the section of this name; writes target/bench/BENCHMARKS.only.md instead.
        #[arg(long, hide = true, value_name = "SECTION")]
        only: Option<String>,
        /// Also build this earlier commit and measure its probes and live view side by side
        /// (kernel cost and throughput rows named after it).
        #[arg(long, value_name = "REV")]
        baseline: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // What failed and how to fix it, then what caused it (no backtrace, even with
            // RUST_BACKTRACE set: the chain says enough).
            say!("error: {err}");
            for cause in err.chain().skip(1) {
                say!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn dispatch(task: Task) -> Result<()> {
    let bpf_linker_root_env = || {
        env::var_os(setup::BPF_LINKER_ROOT_ENV)
            .filter(|r| !r.is_empty())
            .map(PathBuf::from)
    };
    let build_opts = || setup::Options {
        test_deps: false,
        bpf_linker_root: bpf_linker_root_env(),
    };
    match task {
        Task::Setup {
            test_deps,
            bpf_linker_root,
        } => {
            let bpf_linker_root = bpf_linker_root.or_else(bpf_linker_root_env);
            setup::setup(&setup::Options {
                test_deps,
                bpf_linker_root,
            })?;
            say!("setup: done");
            Ok(())
        }
        Task::Build { debug } => {
            let ready = setup::setup(&build_opts())?;
            let binary = cargo::build(&ready, debug)?;
            println!("{}", binary.display());
            Ok(())
        }
        Task::Run { debug, args } => {
            let ready = setup::setup(&build_opts())?;
            cargo::run_leaktrace(&ready, debug, &args)
        }
        Task::Test { args } => {
            let ready = setup::setup(&setup::Options {
                test_deps: true,
                bpf_linker_root: bpf_linker_root_env(),
            })?;
            // clap drops a `--` that comes first, which `cargo test` needs to tell its own
            // arguments from the test binaries'; so pass on everything after `test` verbatim.
            let raw: Vec<OsString> = env::args_os().collect();
            let args = if raw.get(1).is_some_and(|a| a == "test") {
                raw[2..].to_vec()
            } else {
                args
            };
            cargo::test(&ready, &args)
        }
        Task::Image { save } => {
            let ready = setup::setup(&build_opts())?;
            let name = image::image(&ready, &image::Options { save })?;
            println!("{name}");
            Ok(())
        }
        Task::Vmtest { ci, kernels, write_readme, timeout } => {
            let ready = setup::setup(&build_opts())?;
            let timeout = std::time::Duration::from_secs(timeout);
            vmtest::vmtest(&ready, &vmtest::Options { ci, kernels, write_readme, timeout })
        }
        Task::Fuzz { ci, seconds, targets } => {
            let ready = setup::setup(&build_opts())?;
            let seconds = seconds.unwrap_or(120);
            fuzz::fuzz(&ready, &fuzz::Options { seconds, deterministic: ci, targets })
        }
        Task::Clippy => {
            let ready = setup::setup(&build_opts())?;
            cargo::clippy(&ready)
        }
        Task::Bench { smoke, epochs, seconds, live, only, baseline } => {
            let ready = setup::setup(&build_opts())?;
            let options = if smoke {
                bench::Options { smoke, epochs: 1, seconds: 0.3, live: vec![2_000], only, baseline }
            } else {
                bench::Options { smoke, epochs, seconds, live, only, baseline }
            };
            bench::bench(&ready, options)
        }
    }
}
