//! Builds the kernel programs (leaktrace-ebpf) for bpfel-unknown-none with aya-build, so that
//! the userspace binary embeds them. `AYA_BUILD_SKIP=1` builds userspace alone (clippy, docs,
//! unit tests on a machine without the BPF toolchain); that binary says so if asked to trace.
use std::{env, process::Command};

fn main() -> anyhow::Result<()> {
    println!("cargo::rustc-check-cfg=cfg(leaktrace_ebpf_embedded)");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if !skip {
        let linker = Command::new("bpf-linker").arg("--version").output();
        if !linker.is_ok_and(|out| out.status.success()) {
            anyhow::bail!(
                "bpf-linker is not installed, so the kernel programs cannot be built\n\
                 hint: run `cargo xtask setup` (installs it, linked to the nightly's LLVM), or set \
                 AYA_BUILD_SKIP=1 to build userspace alone"
            );
        }
    }
    let ebpf_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../leaktrace-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package { name: "leaktrace-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )?;
    if !skip {
        println!("cargo:rustc-cfg=leaktrace_ebpf_embedded");
    }
    Ok(())
}
