//! Rebuild the kernel programs when the linker that produces them changes.
use std::env;

fn main() {
    // bpf-linker is picked by rustc's bpfel-unknown-none target spec; a new linker means a new
    // object, so make cargo notice it.
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    println!("cargo:rerun-if-env-changed=PATH");
    let _ = env::var("PATH");
}
