//! Pod, namespace, container name and image for a container id, from the Kubernetes API: a
//! watch of the pods scheduled on this node (`spec.nodeName=<node>`), mirrored in a
//! [`PodIndex`] keyed by the container ids of `status.containerStatuses[].containerID`
//! (`containerd://<id>`, `cri-o://<id>`, `docker://<id>`), init and ephemeral containers
//! included. A deleted pod's containers leave the index with it.
//!
//! Only `get`, `list` and `watch` on pods are used. kube's watcher lists, then watches from the
//! list's resource version, relists when the watch expires, and backs off on errors; the first
//! error is logged as a warning (a missing RBAC rule, an unreachable API server), later ones at
//! debug level.
use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};

use super::cgroup::Runtime;

/// One container of a pod on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodContainer {
    pub pod: String,
    pub namespace: String,
    /// The container's name in the pod spec.
    pub name: String,
    /// The image the runtime reports running (`status.containerStatuses[].image`).
    pub image: Option<String>,
    /// From the `containerID`'s scheme.
    pub runtime: Runtime,
    pub pod_uid: String,
}

/// This node's pods, by container id; cheap to clone, shared with the watch task.
#[derive(Clone, Default)]
pub struct PodIndex {
    inner: Arc<RwLock<Pods>>,
}

struct PodEntry {
    pod: String,
    namespace: String,
    container_ids: Vec<String>,
}

#[derive(Default)]
struct Pods {
    by_container: HashMap<String, PodContainer>,
    /// Each pod, by UID: its name and namespace, and its container ids (to forget them with it).
    by_pod: HashMap<String, PodEntry>,
    /// Pods listed since the watch (re)started, installed at once when the list is complete.
    relisting: Option<Vec<Pod>>,
}

impl PodIndex {
    /// The pod container whose runtime id is `container_id` (64 hex digits).
    pub fn lookup(&self, container_id: &str) -> Option<PodContainer> {
        self.read().by_container.get(container_id).cloned()
    }

    /// A pod's name and namespace by its UID: for a container whose id its pod's status does
    /// not list yet (it has just started).
    pub fn pod_of(&self, uid: &str) -> Option<(String, String)> {
        self.read().by_pod.get(uid).map(|entry| (entry.pod.clone(), entry.namespace.clone()))
    }

    /// How many pods are known.
    pub fn pods(&self) -> usize {
        self.read().by_pod.len()
    }

    /// Applies one event of the watch.
    pub fn apply(&self, event: watcher::Event<Pod>) {
        let mut pods = self.inner.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        match event {
            watcher::Event::Apply(pod) => pods.upsert(&pod),
            watcher::Event::Delete(pod) => pods.remove(&uid(&pod)),
            watcher::Event::Init => pods.relisting = Some(Vec::new()),
            watcher::Event::InitApply(pod) => pods.relisting.get_or_insert_with(Vec::new).push(pod),
            watcher::Event::InitDone => {
                // Pods deleted while the watch was down are not in the new list: start afresh.
                let listed = pods.relisting.take().unwrap_or_default();
                pods.by_container.clear();
                pods.by_pod.clear();
                for pod in &listed {
                    pods.upsert(pod);
                }
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Pods> {
        self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Pods {
    fn upsert(&mut self, pod: &Pod) {
        let uid = uid(pod);
        self.remove(&uid);
        let containers = containers_of(pod);
        let container_ids = containers.iter().map(|(id, _)| id.clone()).collect();
        self.by_container.extend(containers);
        let entry = PodEntry {
            pod: pod.metadata.name.clone().unwrap_or_default(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            container_ids,
        };
        self.by_pod.insert(uid, entry);
    }

    fn remove(&mut self, uid: &str) {
        for id in self.by_pod.remove(uid).map(|entry| entry.container_ids).unwrap_or_default() {
            self.by_container.remove(&id);
        }
    }
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// Every container of `pod` that has a runtime id, with what the index keeps of it.
pub fn containers_of(pod: &Pod) -> Vec<(String, PodContainer)> {
    let Some(status) = &pod.status else { return Vec::new() };
    let statuses = [&status.container_statuses, &status.init_container_statuses, &status.ephemeral_container_statuses];
    statuses
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|container| {
            let (runtime, id) = container_id(container)?;
            let entry = PodContainer {
                pod: pod.metadata.name.clone().unwrap_or_default(),
                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                name: container.name.clone(),
                image: Some(container.image.clone()).filter(|image| !image.is_empty()),
                runtime,
                pod_uid: uid(pod),
            };
            Some((id, entry))
        })
        .collect()
}

/// `containerd://<id>` as (runtime, id); absent until the container was created.
fn container_id(status: &ContainerStatus) -> Option<(Runtime, String)> {
    let (scheme, id) = status.container_id.as_deref()?.split_once("://")?;
    (!id.is_empty()).then(|| (Runtime::from_scheme(scheme), id.to_string()))
}

/// Mirrors the pods of `node` into `index` until the task is dropped.
pub async fn watch(client: Client, node: String, index: PodIndex) {
    let pods: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = watcher(pods, config).default_backoff().boxed();
    let mut failures = 0u64;
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => index.apply(event),
            Err(err) => {
                failures += 1;
                if failures == 1 {
                    log::warn!(
                        "watching the pods of node {node} through the Kubernetes API: {err}; container names \
                         are unknown until it works (is the API server reachable, and may leaktrace's service \
                         account get, list and watch pods?)"
                    );
                } else {
                    log::debug!("watching the pods of node {node}: {err}");
                }
            }
        }
    }
}

/// Connects to the cluster leaktrace runs in (the service account's token and the API server
/// from `KUBERNETES_SERVICE_HOST`), or to the current kubeconfig context, and starts the watch
/// on the current tokio runtime.
pub async fn start(node: String) -> Result<PodIndex, kube::Error> {
    let client = Client::try_default().await?;
    Ok(start_with(client, node))
}

/// Starts the watch with a given client (tests point one at a recorded API server).
pub fn start_with(client: Client, node: String) -> PodIndex {
    let index = PodIndex::default();
    tokio::spawn(watch(client, node, index.clone()));
    index
}

#[cfg(test)]
mod tests;
