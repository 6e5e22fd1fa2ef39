//! deploy/ as the tests use it, since no Kubernetes cluster can run here:
//!
//! - [`Manifests::load`]: every YAML document of deploy/kubernetes/ read the way the API server
//!   reads it, as the API's own types (k8s-openapi); a field the type does not know (a typo, a
//!   misplaced key) fails the load instead of being ignored. The Prometheus operator's objects,
//!   whose types are not in k8s-openapi, stay plain values.
//! - [`PodmanPod::from_pod`]: the DaemonSet's pod as `podman run` flags (podman 4.3's
//!   `kube play` supports neither DaemonSet nor hostPID), so a test runs the image with exactly
//!   what the manifest grants.
//! - [`leaktrace_image`]: the image of `cargo xtask image`, built by that same command once per
//!   test process (a no-op when nothing changed).
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{Namespace, PodSpec, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::api::resource::Quantity,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// The workspace's root: the tests crate lives in `<root>/tests`.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// `deploy/kubernetes/`.
pub fn kubernetes_dir() -> PathBuf {
    workspace_root().join("deploy/kubernetes")
}

/// Every object of deploy/kubernetes/ (its subdirectories included, as `kubectl apply -R`).
#[derive(Debug)]
pub struct Manifests {
    pub namespace: Namespace,
    pub service_account: ServiceAccount,
    pub cluster_role: ClusterRole,
    pub cluster_role_binding: ClusterRoleBinding,
    pub daemon_set: DaemonSet,
    pub pod_monitor: Value,
    pub prometheus_rule: Value,
    /// `(file relative to deploy/kubernetes/, kind)` of every document, in the order
    /// `kubectl apply -R -f deploy/kubernetes/` applies them (files sorted by name).
    pub order: Vec<(String, String)>,
}

impl Manifests {
    /// Loads them; panics naming the file and what is wrong with it.
    #[track_caller]
    pub fn load() -> Self {
        let mut found: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
        let mut order = Vec::new();
        for file in yaml_files(&kubernetes_dir()) {
            let relative = file.strip_prefix(kubernetes_dir()).unwrap().display().to_string();
            let text = std::fs::read_to_string(&file).unwrap_or_else(|err| panic!("cannot read {relative}: {err}"));
            let documents: Vec<Value> =
                serde_saphyr::from_multiple(&text).unwrap_or_else(|err| panic!("{relative} is not YAML: {err}"));
            for document in documents.into_iter().filter(|document| !document.is_null()) {
                let kind = document["kind"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{relative}: a document without a kind: {document}"))
                    .to_string();
                order.push((relative.clone(), kind.clone()));
                found.entry(kind).or_default().push((relative.clone(), document));
            }
        }
        let mut one = |kind: &str| -> (String, Value) {
            let mut documents = found.remove(kind).unwrap_or_default();
            assert_eq!(documents.len(), 1, "deploy/kubernetes/ should hold exactly one {kind}, found {documents:?}");
            documents.pop().unwrap()
        };
        let manifests = Self {
            namespace: typed(one("Namespace")),
            service_account: typed(one("ServiceAccount")),
            cluster_role: typed(one("ClusterRole")),
            cluster_role_binding: typed(one("ClusterRoleBinding")),
            daemon_set: typed(one("DaemonSet")),
            pod_monitor: one("PodMonitor").1,
            prometheus_rule: one("PrometheusRule").1,
            order,
        };
        assert!(found.is_empty(), "deploy/kubernetes/ holds objects no test knows: {:?}", found.keys().collect::<Vec<_>>());
        manifests
    }

    /// The DaemonSet's pod spec.
    pub fn pod(&self) -> &PodSpec {
        let template = &self.daemon_set.spec.as_ref().expect("the DaemonSet has a spec").template;
        template.spec.as_ref().expect("the DaemonSet's template has a spec")
    }
}

/// The `.yaml` files under `dir`, recursively, in the order kubectl reads them.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|err| panic!("cannot list {}: {err}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    entries.sort();
    let mut files = Vec::new();
    for path in entries {
        if path.is_dir() {
            files.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml") {
            files.push(path);
        }
    }
    files
}

/// The document as the Kubernetes type `T`, which must serialize back to the same document:
/// otherwise the type dropped a field it does not know, which the API server would reject (or
/// silently ignore).
#[track_caller]
fn typed<T: DeserializeOwned + Serialize>((file, document): (String, Value)) -> T {
    let kind = document["kind"].as_str().unwrap_or_default().to_string();
    let object: T = serde_json::from_value(document.clone())
        .unwrap_or_else(|err| panic!("{file}: the {kind} is not a valid Kubernetes {kind}: {err}"));
    let again = serde_json::to_value(&object).expect("k8s-openapi types serialize");
    if let Some(path) = first_difference(&document, &again, String::new()) {
        panic!("{file}: the {kind} has a field Kubernetes does not know, or one of the wrong type, at {path}");
    }
    object
}

/// The path of the first place where `a` and `b` differ (`None`: they are equal).
fn first_difference(a: &Value, b: &Value, path: String) -> Option<String> {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter().find_map(|key| match (a.get(key), b.get(key)) {
                (Some(x), Some(y)) => first_difference(x, y, format!("{path}.{key}")),
                _ => Some(format!("{path}.{key}")),
            })
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            a.iter().zip(b).enumerate().find_map(|(i, (x, y))| first_difference(x, y, format!("{path}[{i}]")))
        }
        _ => (a != b).then_some(if path.is_empty() { ".".to_string() } else { path }),
    }
}

/// The DaemonSet's single container as a `podman run`: its flags, image and arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodmanPod {
    pub flags: Vec<String>,
    pub image: String,
    pub args: Vec<String>,
}

impl PodmanPod {
    /// Translates what the pod grants and limits into podman's terms; `node_name` stands in for
    /// the downward API's `spec.nodeName`. The pod's own network namespace is left to the
    /// caller (`--network none` has one with loopback only). Panics on anything it cannot
    /// translate faithfully, so a new field in the manifest cannot go untested.
    #[track_caller]
    pub fn from_pod(pod: &PodSpec, node_name: &str) -> Self {
        let [container] = pod.containers.as_slice() else {
            panic!("the DaemonSet's pod should have one container, it has {}", pod.containers.len())
        };
        assert!(pod.init_containers.is_none(), "init containers are not translated to podman");
        let mut flags = Vec::new();
        let mut flag = |flag: String| flags.push(flag);
        if pod.host_pid == Some(true) {
            flag("--pid=host".into());
        }
        if pod.host_network == Some(true) {
            flag("--network=host".into());
        }
        if pod.host_ipc == Some(true) {
            flag("--ipc=host".into());
        }
        // What a node's runtime does: containers share the host's cgroup namespace on cgroup v1,
        // and get their own on cgroup v2.
        let cgroup_v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        flag(format!("--cgroupns={}", if cgroup_v2 { "private" } else { "host" }));

        let security = container.security_context.clone().unwrap_or_default();
        if security.privileged == Some(true) {
            flag("--privileged".into());
        }
        if let Some(capabilities) = &security.capabilities {
            for drop in capabilities.drop.iter().flatten() {
                flag(format!("--cap-drop={}", drop.to_lowercase()));
            }
            for add in capabilities.add.iter().flatten() {
                flag(format!("--cap-add={add}"));
            }
        }
        if security.read_only_root_filesystem == Some(true) {
            flag("--read-only".into());
        }
        if security.allow_privilege_escalation == Some(false) {
            flag("--security-opt=no-new-privileges".into());
        }
        if let Some(user) = security.run_as_user {
            flag(format!("--user={user}"));
        }
        match security.seccomp_profile.as_ref().map(|profile| profile.type_.as_str()) {
            // podman's default profile stands in for the runtime's default.
            None | Some("RuntimeDefault") => {}
            Some("Unconfined") => flag("--security-opt=seccomp=unconfined".into()),
            Some(other) => panic!("seccomp profile type {other} is not translated to podman"),
        }

        for env in container.env.iter().flatten() {
            let value = match (&env.value, &env.value_from) {
                (Some(value), None) => value.clone(),
                (None, Some(from)) => match from.field_ref.as_ref().map(|field| field.field_path.as_str()) {
                    Some("spec.nodeName") => node_name.to_string(),
                    _ => panic!("env {}: only the downward API's spec.nodeName is translated to podman", env.name),
                },
                _ => panic!("env {}: neither a value nor a field reference", env.name),
            };
            flag(format!("--env={}={value}", env.name));
        }

        let volumes = pod.volumes.as_deref().unwrap_or_default();
        for mount in container.volume_mounts.iter().flatten() {
            let volume = volumes
                .iter()
                .find(|volume| volume.name == mount.name)
                .unwrap_or_else(|| panic!("volume mount {} names no volume of the pod", mount.name));
            let host_path = volume
                .host_path
                .as_ref()
                .unwrap_or_else(|| panic!("volume {}: only hostPath volumes are translated to podman", volume.name));
            let mode = if mount.read_only == Some(true) { "ro" } else { "rw" };
            flag(format!("--volume={}:{}:{mode}", host_path.path, mount.mount_path));
        }

        if let Some(resources) = &container.resources {
            let limits = resources.limits.clone().unwrap_or_default();
            if let Some(memory) = limits.get("memory") {
                flag(format!("--memory={}", bytes(memory)));
            }
            if let Some(cpu) = limits.get("cpu") {
                flag(format!("--cpus={}", millicores(cpu) as f64 / 1000.0));
            }
            if let Some(cpu) = resources.requests.as_ref().and_then(|requests| requests.get("cpu")) {
                // The kubelet's translation of a CPU request into cgroup shares.
                flag(format!("--cpu-shares={}", (millicores(cpu) * 1024 / 1000).max(2)));
            }
        }

        if let Some(command) = &container.command {
            let [entrypoint] = command.as_slice() else { panic!("a multi-word command is not translated to podman") };
            flags.push(format!("--entrypoint={entrypoint}"));
        }
        Self {
            flags,
            image: container.image.clone().expect("the container names its image"),
            args: container.args.clone().unwrap_or_default(),
        }
    }
}

/// A memory quantity in bytes (`512Mi`, `1Gi`, `128M`, `1000`).
#[track_caller]
pub fn bytes(quantity: &Quantity) -> u64 {
    let text = quantity.0.as_str();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: u64 = number.parse().unwrap_or_else(|_| panic!("memory quantity {text:?}: not a whole number"));
    let unit: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => panic!("memory quantity {text:?}: unit {suffix:?} is not translated"),
    };
    number * unit
}

/// A CPU quantity in millicores (`100m`, `1`, `2`).
#[track_caller]
pub fn millicores(quantity: &Quantity) -> u64 {
    let text = quantity.0.as_str();
    match text.strip_suffix('m') {
        Some(milli) => milli.parse().unwrap_or_else(|_| panic!("cpu quantity {text:?}: not whole millicores")),
        None => text.parse::<u64>().unwrap_or_else(|_| panic!("cpu quantity {text:?}: not whole cores")) * 1000,
    }
}

/// `localhost/leaktrace:<version>`, built by `cargo xtask image` (the same command a user runs)
/// at the first call of a test process; later calls return the same name.
#[track_caller]
pub fn leaktrace_image() -> String {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let output = Command::new(cargo)
                .args(["run", "--quiet", "--package", "xtask", "--", "image"])
                .current_dir(workspace_root())
                .output()
                .unwrap_or_else(|err| panic!("cannot run `cargo xtask image`: {err}"));
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success(),
                "`cargo xtask image` failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
            stdout.lines().last().unwrap_or_default().trim().to_string()
        })
        .clone()
}

/// The `version` of leaktrace's Cargo.toml: what the image is tagged with.
pub fn leaktrace_version() -> String {
    let manifest = workspace_root().join("leaktrace/Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap_or_else(|err| panic!("cannot read {}: {err}", manifest.display()));
    text.lines()
        .find_map(|line| line.strip_prefix("version = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_else(|| panic!("{} has no version line", manifest.display()))
        .to_string()
}
