//! The kernels of the matrix: Debian's cloud kernel packages, resolved and downloaded with apt from
//! a private apt state under target/vmtest/apt (the machine's own sources and package lists are
//! left alone), cached there, and unpacked to the vmlinuz and the few modules the VM loads.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::cmd::{capture, run};

/// One kernel of the matrix: the Debian suite whose `linux-image-cloud-amd64` it is.
pub struct KernelSpec {
    /// Short name for `--kernel` and the table.
    pub name: &'static str,
    /// The Debian release it ships with (the table's first column).
    pub release: &'static str,
    pub suite: &'static str,
    /// Whether `--state-hook auto` should attach the tp_btf programs here; where not, the
    /// classic tracepoint must be chosen and the fallback logged. Why, for the README.
    pub expect_tp_btf: Result<(), &'static str>,
}

/// The cloud flavour: virtio, serial console and BTF built in, the quickest to boot.
const META_PACKAGE: &str = "linux-image-cloud-amd64";

pub const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        name: "5.10",
        release: "Debian 11 (bullseye)",
        suite: "bullseye",
        expect_tp_btf: Err("tracing programs may call bpf_get_socket_cookie from 5.12 on"),
    },
    KernelSpec { name: "6.1", release: "Debian 12 (bookworm)", suite: "bookworm", expect_tp_btf: Ok(()) },
    KernelSpec {
        name: "6.12",
        release: "Debian 12 (bookworm-backports)",
        suite: "bookworm-backports",
        expect_tp_btf: Ok(()),
    },
    KernelSpec { name: "6.12-trixie", release: "Debian 13 (trixie)", suite: "trixie", expect_tp_btf: Ok(()) },
];

/// What the socket inventory needs (sock_diag for TCP), modules on Debian's kernels; in load
/// order.
const MODULES: &[&str] = &["kernel/net/ipv4/inet_diag.ko", "kernel/net/ipv4/tcp_diag.ko"];

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const MIRROR: &str = "http://deb.debian.org/debian";

/// A kernel ready to boot.
pub struct Kernel {
    /// The package it came from (`linux-image-6.1.0-50-cloud-amd64 6.1.176-1`).
    pub package: String,
    pub vmlinuz: PathBuf,
    /// Uncompressed modules, in load order.
    pub modules: Vec<PathBuf>,
}

/// apt with its own sources, lists, cache and (empty) dpkg status, all under `root`.
pub struct PrivateApt {
    root: PathBuf,
}

impl PrivateApt {
    fn new(root: &Path) -> Result<Self> {
        for dir in ["lists/partial", "cache/archives/partial", "preferences.d"] {
            fs::create_dir_all(root.join(dir)).with_context(|| format!("cannot create {}", root.join(dir).display()))?;
        }
        let sources: String = KERNELS
            .iter()
            .map(|k| format!("deb [signed-by={KEYRING}] {MIRROR} {} main\n", k.suite))
            .collect();
        fs::write(root.join("sources.list"), sources).context("writing the private apt sources")?;
        let status = root.join("status");
        if !status.exists() {
            fs::write(&status, "").context("writing the private dpkg status")?;
        }
        Ok(Self { root: root.to_path_buf() })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let dir = |sub: &str| self.root.join(sub).display().to_string();
        for (key, value) in [
            ("Dir::Etc::SourceList", dir("sources.list")),
            ("Dir::Etc::SourceParts", dir("sources.d-none")),
            ("Dir::Etc::Preferences", dir("preferences")),
            ("Dir::Etc::PreferencesParts", dir("preferences.d")),
            ("Dir::State::Lists", dir("lists")),
            ("Dir::State::status", dir("status")),
            ("Dir::Cache", dir("cache")),
            ("APT::Architecture", "amd64".to_string()),
            ("Acquire::Languages", "none".to_string()),
            // The cache is root's, under target/: apt's _apt user may not write there.
            ("APT::Sandbox::User", "root".to_string()),
        ] {
            cmd.arg("-o").arg(format!("{key}={value}"));
        }
        cmd
    }

    /// Refreshes the package lists unless they are less than a day old.
    fn update(&self) -> Result<()> {
        let stamp = self.root.join("updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() < 86_400));
        if fresh {
            return Ok(());
        }
        let mut update = self.command("apt-get");
        update.arg("update");
        run(&mut update).context(
            "could not fetch Debian's package lists for the kernels; check that deb.debian.org is reachable",
        )?;
        fs::write(&stamp, "").context("writing the apt stamp")
    }

    /// The versioned kernel package `META_PACKAGE` depends on in `suite`: (name, version).
    fn resolve(&self, suite: &str) -> Result<(String, String)> {
        let mut show = self.command("apt-cache");
        show.args(["show", &format!("{META_PACKAGE}/{suite}")]);
        let text = capture(&mut show).with_context(|| format!("{META_PACKAGE} is not in Debian's {suite}"))?;
        let depends = text
            .lines()
            .find_map(|l| l.strip_prefix("Depends:"))
            .with_context(|| format!("{META_PACKAGE}/{suite} depends on nothing"))?;
        parse_dependency(depends).with_context(|| format!("cannot read a kernel package from `Depends:{depends}`"))
    }
}

/// `linux-image-6.1.0-50-cloud-amd64 (= 6.1.176-1), ...` -> (name, version).
fn parse_dependency(depends: &str) -> Option<(String, String)> {
    let first = depends.split(',').next()?.trim();
    let (name, rest) = first.split_once(' ')?;
    let version = rest.trim().strip_prefix("(=")?.strip_suffix(')')?.trim();
    name.starts_with("linux-image-").then(|| (name.to_string(), version.to_string()))
}

/// The private apt state under `dir`, its package lists fetched (or less than a day old).
pub fn package_lists(dir: &Path) -> Result<PrivateApt> {
    let apt = PrivateApt::new(&dir.join("apt"))?;
    apt.update()?;
    Ok(apt)
}

/// Downloads (or finds in the cache) and unpacks the kernel of each spec, under `dir`.
pub fn fetch(apt: &PrivateApt, dir: &Path, specs: &[&KernelSpec]) -> Result<Vec<Kernel>> {
    let debs = dir.join("debs");
    fs::create_dir_all(&debs).with_context(|| format!("cannot create {}", debs.display()))?;
    specs
        .iter()
        .map(|spec| {
            let (name, version) = apt.resolve(spec.suite)?;
            let deb = debs.join(format!("{name}_{}_amd64.deb", version.replace(':', "%3a")));
            if !deb.exists() {
                let mut download = apt.command("apt-get");
                download.current_dir(&debs).args(["download", &format!("{name}={version}")]);
                run(&mut download).with_context(|| format!("could not download {name} {version} from Debian"))?;
            }
            if !deb.exists() {
                bail!("apt-get downloaded {name} {version}, but not to {}", deb.display());
            }
            unpack(&deb, &dir.join("kernels").join(&name), &format!("{name} {version}"))
        })
        .collect()
}

/// The vmlinuz and the modules of a kernel package, unpacked once; the rest of the package's
/// tree (most of its size) is removed again.
fn unpack(deb: &Path, into: &Path, package: &str) -> Result<Kernel> {
    let vmlinuz = into.join("vmlinuz");
    let modules: Vec<PathBuf> = MODULES
        .iter()
        .map(|m| into.join("modules").join(Path::new(m).file_name().expect("a module path names a file")))
        .collect();
    if vmlinuz.exists() && modules.iter().all(|m| m.exists()) {
        return Ok(Kernel { package: package.to_string(), vmlinuz, modules });
    }
    let tree = into.join("tree");
    let _ = fs::remove_dir_all(&tree);
    fs::create_dir_all(&tree).with_context(|| format!("cannot create {}", tree.display()))?;
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tree))
        .with_context(|| format!("could not unpack {}", deb.display()))?;
    let only = |dir: &Path, prefix: &str| -> Result<PathBuf> {
        fs::read_dir(dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix)))
            .with_context(|| format!("{package} has no {prefix}* in {}", dir.display()))
    };
    // Debian 13 ships them under /usr (merged /usr), earlier releases under /lib.
    let modules_dir = ["usr/lib/modules", "lib/modules"].iter().map(|d| tree.join(d)).find(|d| d.is_dir());
    let modules_dir = modules_dir.with_context(|| format!("{package} has no lib/modules or usr/lib/modules"))?;
    let module_root = only(&modules_dir, "")?;
    for module in MODULES {
        uncompressed_module(&module_root, module, &into.join("modules"))?;
    }
    let image = only(&tree.join("boot"), "vmlinuz-")?;
    fs::copy(&image, &vmlinuz).with_context(|| format!("cannot copy {}", image.display()))?;
    fs::remove_dir_all(&tree).with_context(|| format!("cannot remove {}", tree.display()))?;
    Ok(Kernel { package: package.to_string(), vmlinuz, modules })
}

/// `module` (a path under the kernel's module directory), xz-decompressed where the package
/// compresses it (Debian does from 6.12 on), copied to `out`.
fn uncompressed_module(root: &Path, module: &str, out: &Path) -> Result<PathBuf> {
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let plain = root.join(module);
    let name = Path::new(module).file_name().expect("a module path names a file");
    let target = out.join(name);
    if plain.exists() {
        fs::copy(&plain, &target).with_context(|| format!("cannot copy {}", plain.display()))?;
        return Ok(target);
    }
    let xz = root.join(format!("{module}.xz"));
    if !xz.exists() {
        bail!("the kernel package has neither {} nor {}", plain.display(), xz.display());
    }
    let data = Command::new("xz")
        .arg("-dc")
        .arg(&xz)
        .output()
        .with_context(|| format!("could not run xz to decompress {}", xz.display()))?;
    if !data.status.success() {
        bail!("xz could not decompress {}: {}", xz.display(), String::from_utf8_lossy(&data.stderr).trim());
    }
    fs::write(&target, data.stdout).with_context(|| format!("cannot write {}", target.display()))?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kernel_package_a_meta_package_depends_on() {
        assert_eq!(
            parse_dependency(" linux-image-6.1.0-50-cloud-amd64 (= 6.1.176-1)"),
            Some(("linux-image-6.1.0-50-cloud-amd64".into(), "6.1.176-1".into()))
        );
        assert_eq!(
            parse_dependency(" linux-image-6.12.95+deb12-cloud-amd64 (= 6.12.95-1~bpo12+1), foo"),
            Some(("linux-image-6.12.95+deb12-cloud-amd64".into(), "6.12.95-1~bpo12+1".into()))
        );
        assert_eq!(parse_dependency(" initramfs-tools"), None);
    }
}
