//! `cargo xtask image`: the OCI image a Kubernetes node runs (deploy/kubernetes/), built here
//! without pulling anything: a static leaktrace (kernel programs embedded) in an empty image.
//!
//! The binary is built for the host's gnu target named explicitly, with `+crt-static`: with
//! `--target`, RUSTFLAGS reach only the target's crates, not build scripts and proc macros (which
//! must stay dynamic to be loaded), and aya-build's nested build of the kernel programs sets its
//! own flags. It goes to `target/image/cargo`, so the flags never invalidate the normal build.
//! `buildah build` then runs deploy/image/Containerfile (`FROM scratch`) on a context holding
//! only that binary.
use std::{
    fs,
    path::PathBuf,
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{
    cargo::{self, workspace_root},
    cmd::{self, capture, run},
    setup::{self, Ready},
};

/// The image's repository; `localhost/` is what podman and buildah call an image that was never
/// pulled, and what the DaemonSet names.
pub const REPOSITORY: &str = "localhost/leaktrace";

/// What building the image needs besides the Rust toolchain, as (command, Debian package).
const IMAGE_TOOLS: &[(&str, &str)] = &[("buildah", "buildah")];

pub struct Options {
    /// Also write the image as a docker-archive (`docker load`, `ctr images import`, `kind load`).
    pub save: bool,
}

/// Builds the image and returns its `REPOSITORY:<version>` name (also tagged `:latest`).
pub fn image(ready: &Ready, options: &Options) -> Result<String> {
    let started = Instant::now();
    if !cmd::is_root() {
        bail!(
            "building the image needs root: buildah keeps images in root's container storage, where \
             the tests' rootful podman finds them\nfix: sudo -E cargo xtask image"
        );
    }
    setup::debian_packages("image tools", IMAGE_TOOLS)?;
    let version = leaktrace_version(ready)?;
    let binary = static_binary(ready)?;
    let context = image_dir().join("context");
    fs::create_dir_all(&context).with_context(|| format!("cannot create {}", context.display()))?;
    fs::copy(&binary, context.join("leaktrace"))
        .with_context(|| format!("cannot copy {} into {}", binary.display(), context.display()))?;

    let name = format!("{REPOSITORY}:{version}");
    let previous = image_id(&name);
    let containerfile = workspace_root().join("deploy/image/Containerfile");
    let mut build = Command::new("buildah");
    build.args(["build", "--layers=false", "--file"]).arg(&containerfile);
    build.args(["--tag", &name, "--tag", &format!("{REPOSITORY}:latest")]);
    build.args(["--label", &format!("org.opencontainers.image.version={version}")]);
    build.args(["--label", "org.opencontainers.image.title=leaktrace"]);
    // The binary's time as the image's: the same binary makes the same image (the same id), so
    // rebuilding without a change adds nothing to the container storage.
    build.args(["--timestamp", &modified_seconds(&binary)?.to_string()]);
    build.arg(&context);
    // buildah prints the image id on stdout, where xtask prints only the image's name.
    build.stdout(std::io::stderr());
    run(&mut build).context("buildah could not build the image; see its output above")?;
    forget_previous(previous.as_deref(), image_id(&name).as_deref());

    let size = capture(Command::new("buildah").args(["images", "--format", "{{.Size}}", &name]))
        .context("buildah built the image but cannot list it")?;
    // One line per tag, all the same image.
    let size = size.lines().next().unwrap_or_default().trim();
    say!("image: {name} (and :latest), {size}, built in {:.0?}", started.elapsed());
    if options.save {
        let archive = image_dir().join("leaktrace.tar");
        // docker-archive refuses to overwrite.
        let _ = fs::remove_file(&archive);
        run(Command::new("buildah")
            .arg("push")
            .arg(&name)
            .arg(format!("docker-archive:{}:{name}", archive.display()))
            .stdout(std::io::stderr()))
        .context("buildah could not write the image archive")?;
        say!("image: saved to {}", archive.display());
    }
    Ok(name)
}

/// Where everything of the image lives: the static build, the build context, the archive.
fn image_dir() -> PathBuf {
    cargo::target_dir().join("image")
}

/// The leaktrace package's version, which tags the image.
fn leaktrace_version(ready: &Ready) -> Result<String> {
    let metadata = capture(cargo::cargo(ready).args(["metadata", "--no-deps", "--format-version", "1"]))
        .context("`cargo metadata` failed; the image is tagged with leaktrace's version")?;
    let metadata: serde_json::Value =
        serde_json::from_str(&metadata).context("`cargo metadata` printed something that is not JSON")?;
    metadata["packages"]
        .as_array()
        .and_then(|packages| packages.iter().find(|p| p["name"] == "leaktrace"))
        .and_then(|package| package["version"].as_str())
        .map(str::to_string)
        .context("`cargo metadata` lists no leaktrace package with a version")
}

/// Builds the static release binary and checks that it is one.
pub fn static_binary(ready: &Ready) -> Result<PathBuf> {
    let target = host_gnu_target()?;
    let target_dir = image_dir().join("cargo");
    let mut build = cargo::cargo(ready);
    build.args(["build", "--release", "--package", "leaktrace", "--target", &target]);
    build.arg("--target-dir").arg(&target_dir);
    // Replaces the caller's RUSTFLAGS on purpose: flags such as target-cpu=native would make an
    // image that runs on this machine's kind of CPU only.
    build.env("RUSTFLAGS", "-C target-feature=+crt-static");
    build.env_remove("CARGO_ENCODED_RUSTFLAGS");
    // An image without its kernel programs would be useless.
    build.env_remove("AYA_BUILD_SKIP");
    run(&mut build).context(
        "building the static leaktrace failed; see cargo's output above \
         (it needs glibc's static libraries, which Debian's libc6-dev ships)",
    )?;
    let binary = target_dir.join(&target).join("release").join("leaktrace");
    let elf = fs::read(&binary).with_context(|| format!("cargo built leaktrace, but {} cannot be read", binary.display()))?;
    if let Some(interpreter) = interpreter(&elf).with_context(|| format!("{} is not an ELF file", binary.display()))? {
        bail!(
            "{} is dynamically linked (it asks for {interpreter}), so it cannot run in an empty image; \
             a cargo config that sets rustflags for {target} may have replaced +crt-static",
            binary.display()
        );
    }
    Ok(binary)
}

/// The host's target triple; only the gnu targets have their standard library installed here and
/// link statically with `+crt-static`.
fn host_gnu_target() -> Result<String> {
    let rustc = capture(Command::new("rustc").arg("-vV")).context("`rustc -vV` failed")?;
    let host = rustc
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .context("`rustc -vV` names no host target")?;
    if !host.ends_with("-linux-gnu") {
        bail!("the image is built for the host's gnu target, but this host is {host}; build on Linux with glibc");
    }
    Ok(host.to_string())
}

/// The program interpreter (PT_INTERP) a 64-bit little-endian ELF file asks for, or `None` for a
/// static (or static-pie) executable. `Err` when `elf` is not such a file.
pub fn interpreter(elf: &[u8]) -> Result<Option<String>> {
    const PT_INTERP: u32 = 3;
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        bail!("not a 64-bit little-endian ELF file");
    }
    let read = |at: usize, len: usize| {
        at.checked_add(len).and_then(|end| elf.get(at..end)).context("truncated ELF header")
    };
    let u16_at = |at| read(at, 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u64_at = |at| read(at, 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize);
    let (phoff, phentsize, phnum) = (u64_at(0x20)?, u16_at(0x36)?, u16_at(0x38)?);
    for index in 0..phnum {
        let header = phoff.saturating_add(index.saturating_mul(phentsize));
        if u32::from_le_bytes(read(header, 4)?.try_into().expect("4 bytes")) != PT_INTERP {
            continue;
        }
        let (offset, size) = (u64_at(header.saturating_add(8))?, u64_at(header.saturating_add(32))?);
        let path = read(offset, size)?;
        return Ok(Some(String::from_utf8_lossy(path).trim_end_matches('\0').to_string()));
    }
    Ok(None)
}

/// When `path` was last modified, in seconds since the epoch.
fn modified_seconds(path: &std::path::Path) -> Result<u64> {
    let modified = fs::metadata(path).and_then(|m| m.modified()).with_context(|| format!("cannot stat {}", path.display()))?;
    Ok(modified.duration_since(std::time::UNIX_EPOCH).map(|age| age.as_secs()).unwrap_or(0))
}

/// The id of the image `name`, if there is one.
fn image_id(name: &str) -> Option<String> {
    capture(Command::new("buildah").args(["images", "--noheading", "--no-trunc", "--format", "{{.ID}}", name]))
        .ok()
        // One line per tag of the same image.
        .and_then(|ids| ids.lines().next().map(|id| id.trim().to_string()))
        .filter(|id| !id.is_empty())
}

/// Removes the image a rebuild replaced, so repeated builds do not pile up untagged images. One
/// still in use by a container stays (buildah refuses), which is harmless.
fn forget_previous(previous: Option<&str>, current: Option<&str>) {
    if let Some(previous) = previous
        && Some(previous) != current
    {
        let _ = capture(Command::new("buildah").args(["rmi", previous]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header with one program header of type `p_type` whose contents are
    /// `contents`.
    fn elf_with(p_type: u32, contents: &[u8]) -> Vec<u8> {
        let mut elf = vec![0; 0x40 + 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[0x40..0x44].copy_from_slice(&p_type.to_le_bytes());
        let offset = elf.len() as u64;
        elf[0x40 + 8..0x40 + 16].copy_from_slice(&offset.to_le_bytes());
        elf[0x40 + 32..0x40 + 40].copy_from_slice(&(contents.len() as u64).to_le_bytes());
        elf.extend_from_slice(contents);
        elf
    }

    #[test]
    fn a_dynamic_executable_names_its_interpreter() {
        let elf = elf_with(3, b"/lib64/ld-linux-x86-64.so.2\0");
        assert_eq!(interpreter(&elf).unwrap().as_deref(), Some("/lib64/ld-linux-x86-64.so.2"));
    }

    #[test]
    fn a_static_executable_has_no_interpreter() {
        // PT_DYNAMIC, as a static-pie has, is not an interpreter.
        assert_eq!(interpreter(&elf_with(2, b"")).unwrap(), None);
    }

    #[test]
    fn a_file_that_is_not_elf_is_an_error() {
        assert!(interpreter(b"#!/bin/sh\n").is_err());
        let mut truncated = elf_with(3, b"/lib/ld.so\0");
        truncated.truncate(0x50);
        assert!(interpreter(&truncated).is_err());
    }

    #[test]
    fn the_running_xtask_is_dynamic() {
        // Built without +crt-static: a real ELF file with an interpreter.
        let own = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(interpreter(&own).unwrap().is_some_and(|path| path.contains("ld-linux")));
    }
}
