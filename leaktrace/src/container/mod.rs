//! Container and pod attribution: which container (id, runtime) a traced process runs in, and
//! on a Kubernetes node which pod, namespace, container name and image that is.
//!
//! - [`cgroup`]: the container id and runtime from `/proc/PID/cgroup` (every runtime and driver,
//!   cgroup v1 and v2), pure parsing.
//! - [`kubernetes`]: a watch of this node's pods, indexed by container id.
//! - [`Containers`] (`resolver.rs`): the handle the event loop and the reports share, reading
//!   each process's cgroup at its first sight and naming its container when a report asks; its
//!   caches are bounded (`bounded.rs`).
//! - [`events`]: the container filters of `leaktrace events`.
mod bounded;
pub mod cgroup;
pub mod events;
pub mod kubernetes;
mod resolver;

use serde::{Deserialize, Serialize};

pub use cgroup::{CgroupContainer, Runtime};
use kubernetes::PodContainer;
pub use resolver::{Containers, MAX_CGROUPS, MAX_NAMED, MAX_PROCESSES};

/// Where pod names come from, as the command line and the environment say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodNames {
    /// Not in a cluster: containers are named by id only.
    Off,
    /// Watch this node's pods.
    Watch { node: String },
    /// In a cluster, but the node is unknown: containers are named by id only.
    NodeUnknown,
}

/// The resolver of a tracing command, watching this node's pods when `names` says so. Off a
/// cluster it says nothing; in one, what keeps pods from being named is a warning.
pub async fn start(names: &PodNames) -> Containers {
    let pods = match names {
        PodNames::Off => None,
        PodNames::NodeUnknown => {
            log::warn!(
                "in a Kubernetes cluster, but NODE_NAME is not set: containers are named by id only \
                 (set NODE_NAME from the downward API's spec.nodeName, or pass --node)"
            );
            None
        }
        PodNames::Watch { node } => match kubernetes::start(node.clone()).await {
            Ok(index) => Some(index),
            Err(err) => {
                log::warn!("cannot use the Kubernetes API ({err}): containers are named by id only");
                None
            }
        },
    };
    Containers::spawn(pods)
}

/// A process's container, as the JSON report's `container` object shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    /// The container id: 64 hex digits.
    pub id: String,
    pub runtime: Runtime,
    /// The container's name in its pod (Kubernetes only).
    pub name: Option<String>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub image: Option<String>,
}

impl Workload {
    /// A container from its cgroup, named by its pod where one is known.
    pub fn new(found: &CgroupContainer, pod: Option<&PodContainer>) -> Self {
        let runtime = match (found.runtime, pod) {
            (Runtime::Unknown, Some(pod)) => pod.runtime,
            (runtime, _) => runtime,
        };
        Self {
            id: found.id.clone(),
            runtime,
            name: pod.map(|pod| pod.name.clone()),
            pod: pod.map(|pod| pod.pod.clone()),
            namespace: pod.map(|pod| pod.namespace.clone()),
            image: pod.and_then(|pod| pod.image.clone()),
        }
    }

    /// The table's short form: `pod/container` when named, else the id's first 12 digits.
    pub fn short(&self) -> String {
        match (&self.pod, &self.name) {
            (Some(pod), Some(name)) => format!("{pod}/{name}"),
            _ => self.short_id().to_string(),
        }
    }

    /// The id's first 12 digits, as `podman ps` and `docker ps` show it.
    pub fn short_id(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }
}

/// Which containers to keep (`--container`, `--pod`, `--namespace`): every given list must
/// match; a process on the host matches none of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadFilter {
    /// Container id prefixes or container names.
    pub containers: Vec<String>,
    pub pods: Vec<String>,
    pub namespaces: Vec<String>,
}

impl WorkloadFilter {
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.pods.is_empty() && self.namespaces.is_empty()
    }

    pub fn wants(&self, workload: Option<&Workload>) -> bool {
        if self.is_empty() {
            return true;
        }
        let Some(workload) = workload else { return false };
        let named = |wanted: &Vec<String>, value: &Option<String>| {
            wanted.is_empty() || value.as_ref().is_some_and(|value| wanted.contains(value))
        };
        let container_ok = self.containers.is_empty()
            || self.containers.iter().any(|wanted| {
                workload.id.starts_with(wanted.as_str()) || workload.name.as_ref() == Some(wanted)
            });
        container_ok && named(&self.pods, &workload.pod) && named(&self.namespaces, &workload.namespace)
    }
}
