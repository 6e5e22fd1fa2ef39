//! Which container a process runs in, read from its cgroup: container runtimes name the cgroup
//! they create after the container's id (`cri-containerd-<id>.scope`, `/docker/<id>`, ...), and
//! the kubelet names the pod's cgroup after the pod's UID. Pure parsing of `/proc/PID/cgroup`
//! text, so every runtime's and driver's layout is tested from fixtures.
//!
//! Which line: cgroup v2 has one (`0::/path`). Hybrid v1 machines have one line per hierarchy
//! and a `0::` line that may stay `/` while the v1 hierarchies hold the container; so the `0::`
//! line is read first, then the v1 lines that runtimes always populate (`name=systemd`,
//! `memory`, `cpu`, `pids`), then any other; the first path naming a container wins.
//!
//! Within a path, the innermost component naming a container wins (a container running
//! systemd has service cgroups below its own, crun adds a `container` leaf). A path read in a
//! private cgroup namespace is relative (`/../libpod-<id>`): the components naming the container
//! are still there, so it parses the same; only leaktrace's own cgroup and its ancestors read as
//! `/` or `/..` there (see the module above for how that is avoided).
use serde::{Deserialize, Serialize};

/// The container runtime (or engine) that made the cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Containerd,
    #[serde(rename = "cri-o")]
    CriO,
    Docker,
    Podman,
    /// A kubepods cgroupfs layout (`pod<uid>/<id>`) names no runtime; the Kubernetes API does.
    Unknown,
}

impl Runtime {
    /// As the report writes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::Docker => "docker",
            Self::Podman => "podman",
            Self::Unknown => "unknown",
        }
    }

    /// The runtime named by a Kubernetes `containerID`'s scheme (`containerd://<id>`).
    pub fn from_scheme(scheme: &str) -> Self {
        match scheme {
            "containerd" => Self::Containerd,
            "cri-o" => Self::CriO,
            "docker" => Self::Docker,
            "podman" | "libpod" => Self::Podman,
            _ => Self::Unknown,
        }
    }
}

/// What a process's cgroup says about its container.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CgroupContainer {
    /// The container id: 64 lowercase hex digits.
    pub id: String,
    pub runtime: Runtime,
    /// The pod's UID (dashed, as the Kubernetes API writes it), under a kubepods cgroup.
    pub pod_uid: Option<String>,
}

/// Prefixes of the scope a runtime makes for a container, and the runtime each names.
const SCOPE_PREFIXES: &[(&str, Runtime)] = &[
    ("cri-containerd-", Runtime::Containerd),
    ("crio-", Runtime::CriO),
    ("docker-", Runtime::Docker),
    ("libpod-", Runtime::Podman),
];

/// Scopes that hold a runtime's monitor process next to the container, not the container.
const MONITOR_PREFIXES: &[&str] = &["crio-conmon-", "libpod-conmon-"];

/// v1 hierarchies read after the `0::` line, in this order; the others follow.
const PREFERRED_V1: &[&str] = &["name=systemd", "memory", "cpu", "pids"];

/// The container named by `/proc/PID/cgroup` text, or `None` for a process on the host.
pub fn parse(text: &str) -> Option<CgroupContainer> {
    let mut lines: Vec<(usize, &str)> = text.lines().filter_map(|line| Some((rank(line)?, path(line)?))).collect();
    lines.sort_by_key(|(rank, _)| *rank);
    lines.into_iter().find_map(|(_, path)| parse_path(path))
}

/// A line's `hierarchy-ID:controllers:path` fields, ranked: `0::` first, then [`PREFERRED_V1`].
fn rank(line: &str) -> Option<usize> {
    let mut fields = line.splitn(3, ':');
    let hierarchy = fields.next()?;
    let controllers = fields.next()?;
    if hierarchy == "0" && controllers.is_empty() {
        return Some(0);
    }
    let preferred = controllers.split(',').filter_map(|controller| PREFERRED_V1.iter().position(|c| *c == controller)).min();
    Some(1 + preferred.unwrap_or(PREFERRED_V1.len()))
}

fn path(line: &str) -> Option<&str> {
    line.splitn(3, ':').nth(2)
}

/// The container a single cgroup path names.
pub fn parse_path(path: &str) -> Option<CgroupContainer> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty() && *c != "..").collect();
    let (index, id, runtime) = components.iter().enumerate().rev().find_map(|(index, component)| {
        let (id, runtime) = container_component(component, components.get(index.wrapping_sub(1)).copied())?;
        Some((index, id, runtime))
    })?;
    let pod_uid = components[..index].iter().rev().find_map(|component| pod_uid(component));
    Some(CgroupContainer { id: id.to_string(), runtime, pod_uid })
}

/// A component that names a container: `<prefix><id>.scope`, `<prefix><id>`, or a bare id
/// (whose runtime the parent names: `/docker/<id>`).
fn container_component<'a>(component: &'a str, parent: Option<&str>) -> Option<(&'a str, Runtime)> {
    if MONITOR_PREFIXES.iter().any(|prefix| component.starts_with(prefix)) {
        return None;
    }
    let name = component.strip_suffix(".scope").unwrap_or(component);
    if let Some((id, runtime)) =
        SCOPE_PREFIXES.iter().find_map(|(prefix, runtime)| Some((name.strip_prefix(prefix)?, *runtime)))
    {
        return is_container_id(id).then_some((id, runtime));
    }
    if !is_container_id(name) {
        return None;
    }
    let runtime = match parent {
        Some("docker") => Runtime::Docker,
        Some("libpod_parent") => Runtime::Podman,
        _ => Runtime::Unknown,
    };
    Some((name, runtime))
}

fn is_container_id(text: &str) -> bool {
    text.len() == 64 && is_id_prefix(text)
}

/// Up to 64 lowercase hex digits: the start of a container id, as users abbreviate them.
pub fn is_id_prefix(text: &str) -> bool {
    (1..=64).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The pod UID in a kubelet cgroup: `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid>.slice`
/// (systemd, which escapes the UID's dashes as underscores).
fn pod_uid(component: &str) -> Option<String> {
    let name = component.strip_suffix(".slice").unwrap_or(component);
    let uid = match name.strip_prefix("pod") {
        Some(uid) => uid,
        None if name.starts_with("kubepods") => &name[name.rfind("-pod")? + "-pod".len()..],
        None => return None,
    };
    let uid = uid.replace('_', "-");
    is_uid(&uid).then_some(uid)
}

/// `8-4-4-4-12` hex digits.
fn is_uid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Option<CgroupContainer> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/container/fixtures").join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        parse(&text)
    }

    #[track_caller]
    fn container(name: &str, runtime: Runtime, id_start: &str, pod_uid: Option<&str>) {
        let found = fixture(name).unwrap_or_else(|| panic!("{name}: no container found"));
        assert!(found.id.starts_with(id_start) && found.id.len() == 64, "{name}: id {}", found.id);
        assert_eq!(found.runtime, runtime, "{name}");
        assert_eq!(found.pod_uid.as_deref(), pod_uid, "{name}");
    }

    #[track_caller]
    fn host(name: &str) {
        assert_eq!(fixture(name), None, "{name}");
    }

    #[test]
    fn podman_layouts() {
        // This machine's: cgroupfs manager, v1 hybrid, every hierarchy and the `0::` line.
        container("podman-cgroupfs-v1-hybrid.cgroup", Runtime::Podman, "5e687ed3797e", None);
        container("podman-seen-from-private-cgroupns.cgroup", Runtime::Podman, "e89c44f4b72e", None);
        container("podman-systemd-v2-crun.cgroup", Runtime::Podman, "50441b5e7a2a", None);
        container("podman-rootless-v2.cgroup", Runtime::Podman, "", None);
        container("podman-systemd-inside-v2.cgroup", Runtime::Podman, "", None);
        host("podman-conmon-v2.cgroup");
    }

    #[test]
    fn docker_layouts() {
        container("docker-systemd-v2.cgroup", Runtime::Docker, "", None);
        container("docker-cgroupfs-v1.cgroup", Runtime::Docker, "fb081ee28007", None);
        container("docker-systemd-v1-hybrid.cgroup", Runtime::Docker, "", None);
    }

    #[test]
    fn kubernetes_layouts_name_the_pod() {
        container(
            "containerd-kubepods-systemd-v2.cgroup",
            Runtime::Containerd,
            "8a91f2bcaabe",
            Some("79455e22-5e41-80f0-2068-62adebaef055"),
        );
        let guaranteed = fixture("containerd-kubepods-guaranteed-systemd-v2.cgroup").unwrap();
        assert_eq!((guaranteed.runtime, guaranteed.pod_uid.is_some()), (Runtime::Containerd, true));
        let v1_systemd = fixture("containerd-kubepods-systemd-v1.cgroup").unwrap();
        assert_eq!((v1_systemd.runtime, v1_systemd.pod_uid.is_some()), (Runtime::Containerd, true));
        // cgroupfs driver: the runtime is not in the path (the Kubernetes API names it).
        let cgroupfs = fixture("containerd-kubepods-cgroupfs-v1.cgroup").unwrap();
        assert_eq!(cgroupfs.runtime, Runtime::Unknown);
        assert!(cgroupfs.pod_uid.as_deref().is_some_and(|uid| uid.len() == 36 && !uid.contains('_')));
        assert_eq!(fixture("containerd-kubepods-cgroupfs-v2.cgroup").unwrap().runtime, Runtime::Unknown);
        let crio = fixture("crio-kubepods-systemd-v2.cgroup").unwrap();
        assert_eq!((crio.runtime, crio.pod_uid.is_some()), (Runtime::CriO, true));
        host("crio-conmon-v2.cgroup");
        assert_eq!(fixture("docker-kubepods-cgroupfs-v1.cgroup").unwrap().runtime, Runtime::Unknown);
        let dockerd = fixture("docker-kubepods-systemd-v2.cgroup").unwrap();
        assert_eq!(dockerd.runtime, Runtime::Docker);
        // A guaranteed pod under cgroupfs has no QoS level.
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let guaranteed = parse_path(&format!("/kubepods/pod79455e22-5e41-80f0-2068-62adebaef055/{id}")).unwrap();
        assert_eq!(guaranteed.pod_uid.as_deref(), Some("79455e22-5e41-80f0-2068-62adebaef055"));
        // The same pod, through either driver.
        assert_eq!(dockerd.pod_uid, fixture("docker-kubepods-cgroupfs-v1.cgroup").unwrap().pod_uid);
    }

    #[test]
    fn host_processes_have_no_container() {
        host("host-v1-hybrid.cgroup");
        host("host-systemd-v2.cgroup");
        host("host-kubelet-v2.cgroup");
        host("host-seen-from-private-cgroupns.cgroup");
    }

    #[test]
    fn a_hybrid_root_line_defers_to_the_v1_hierarchies() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let text = format!("0::/\n3:pids:/docker/{id}\n");
        assert_eq!(parse(&text).unwrap().id, id);
        // A short or upper-case "id" is not one.
        assert_eq!(parse_path("/docker/0123456789abcdef"), None);
        assert_eq!(parse_path(&format!("/docker/{}", id.to_uppercase())), None);
        assert_eq!(parse_path("/kubepods/burstable/podnot-a-uid/x"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("garbage\n"), None);
    }

    #[test]
    fn runtimes_serialize_as_the_report_names_them() {
        let all = [Runtime::Containerd, Runtime::CriO, Runtime::Docker, Runtime::Podman, Runtime::Unknown];
        let names: Vec<String> = all.iter().map(|runtime| serde_json::to_string(runtime).unwrap()).collect();
        assert_eq!(names, [r#""containerd""#, r#""cri-o""#, r#""docker""#, r#""podman""#, r#""unknown""#]);
        for runtime in all {
            assert_eq!(serde_json::to_string(&runtime).unwrap(), format!("\"{}\"", runtime.name()));
        }
        assert_eq!(Runtime::from_scheme("cri-o"), Runtime::CriO);
    }
}
