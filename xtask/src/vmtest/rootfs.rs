//! The VM's root filesystem: an initramfs (newc cpio, written by `cpio`) holding only static
//! binaries (busybox, the static leaktrace `cargo xtask image` builds, the sockpuppet helper
//! built with `gcc -static`), the kernel's sock_diag modules and the scenario script as /init.
//! Made in a second per kernel, with no network and no package manager inside.
use std::{
    fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::cmd::run;

/// The scenarios the VM runs; the host judges what they print (checks.rs).
const INIT: &str = include_str!("init.sh");

/// The static busybox of Debian's busybox-static.
pub const BUSYBOX: &str = "/bin/busybox";

/// What goes into every image besides the kernel's modules.
pub struct Payload {
    pub leaktrace: PathBuf,
    pub sockpuppet: PathBuf,
}

/// Builds the test helper statically, so it runs in the initramfs without a libc there.
pub fn sockpuppet(source: &Path, out_dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let binary = out_dir.join("sockpuppet");
    run(Command::new("gcc")
        .args(["-static", "-O0", "-g", "-fno-omit-frame-pointer", "-Wall", "-Werror", "-o"])
        .arg(&binary)
        .arg(source))
    .context("could not build sockpuppet statically (gcc and glibc's static libraries, libc6-dev, are needed)")?;
    Ok(binary)
}

/// Writes the initramfs for one kernel (its `modules`, in load order) to `image`.
pub fn initramfs(payload: &Payload, modules: &[PathBuf], staging: &Path, image: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(staging);
    for dir in ["bin", "modules", "proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(staging.join(dir)).with_context(|| format!("cannot create {}", staging.display()))?;
    }
    let copy = |from: &Path, to: &str| -> Result<()> {
        let target = staging.join(to);
        fs::copy(from, &target).with_context(|| format!("cannot copy {} into the initramfs", from.display()))?;
        fs::set_permissions(&target, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot make {} executable", target.display()))
    };
    // Debian's plain busybox package installs a dynamic one at the same path.
    let busybox = fs::read(BUSYBOX).with_context(|| format!("cannot read {BUSYBOX}"))?;
    if let Some(interpreter) = crate::image::interpreter(&busybox).with_context(|| format!("{BUSYBOX} is not an ELF file"))? {
        bail!("{BUSYBOX} is dynamically linked (it asks for {interpreter}): the initramfs has no libc\nfix: apt-get install busybox-static");
    }
    copy(Path::new(BUSYBOX), "bin/busybox")?;
    copy(&payload.leaktrace, "bin/leaktrace")?;
    copy(&payload.sockpuppet, "bin/sockpuppet")?;
    for (index, module) in modules.iter().enumerate() {
        let name = module.file_name().and_then(|n| n.to_str()).context("a module without a file name")?;
        // The init script loads them in name order.
        copy(module, &format!("modules/{index}-{name}"))?;
    }
    fs::write(staging.join("init"), INIT).context("writing /init")?;
    fs::set_permissions(staging.join("init"), fs::Permissions::from_mode(0o755)).context("making /init executable")?;
    cpio(staging, image)?;
    fs::remove_dir_all(staging).with_context(|| format!("cannot remove {}", staging.display()))
}

/// `cpio -o -H newc` of everything under `staging`, paths relative to it.
fn cpio(staging: &Path, image: &Path) -> Result<()> {
    let mut paths = Vec::new();
    walk(staging, staging, &mut paths)?;
    let out = fs::File::create(image).with_context(|| format!("cannot create {}", image.display()))?;
    let mut child = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet", "-R", "0:0"])
        .current_dir(staging)
        .stdin(Stdio::piped())
        .stdout(out)
        .spawn()
        .context("could not run cpio (Debian's cpio package)")?;
    let mut stdin = child.stdin.take().expect("piped");
    for path in &paths {
        writeln!(stdin, "{path}").context("writing the file list to cpio")?;
    }
    drop(stdin);
    let status = child.wait().context("waiting for cpio")?;
    if !status.success() {
        bail!("cpio could not write {} ({status})", image.display());
    }
    Ok(())
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        let relative = path.strip_prefix(root).expect("under root").display().to_string();
        out.push(relative);
        if path.is_dir() {
            walk(root, &path, out)?;
        }
    }
    Ok(())
}
