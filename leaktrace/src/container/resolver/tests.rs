//! The resolver: processes read once at first sight, found again by a start time a few clock
//! ticks off, named from the pod index (and still named after their pod is gone), bounded.
use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;

use super::*;
use crate::container::{Runtime, WorkloadFilter, kubernetes::PodIndex};

const CHECKOUT_APP: &str = "123beec1446e73544a838df719244e188ea8f7bd60b4531a75f9844d954ae3c3";
const S: u64 = 1_000_000_000;

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/container/fixtures").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn listed_pods() -> Vec<Pod> {
    serde_json::from_str::<k8s_openapi::List<Pod>>(&fixture("pods-list.json")).unwrap().items
}

fn checkout_cgroup() -> String {
    format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f6b1c9e_2a4d_4c1e_9f0a_6f7e3b2d1a55.slice/\
         cri-containerd-{CHECKOUT_APP}.scope\n"
    )
}

/// A resolver whose "/proc" holds `cgroups` (pid, cgroup text); other pids are gone.
fn resolver(pods: Option<PodIndex>, cgroups: Vec<(u32, String)>) -> Containers {
    Containers::spawn_reading(pods, move |key: ProcessKey| match cgroups.iter().find(|(pid, _)| *pid == key.pid) {
        Some((_, text)) => Read::Found(cgroup::parse(text).map(Arc::new)),
        None => Read::Gone,
    })
}

#[test]
fn a_process_is_read_at_first_sight_and_named_from_its_pod() {
    let pods = PodIndex::default();
    pods.apply(watcher::Event::Apply(listed_pods()[0].clone()));
    let containers = resolver(Some(pods.clone()), vec![(10, checkout_cgroup()), (11, fixture("host-v1-hybrid.cgroup"))]);
    containers.note_process(10, 5 * S, 7);
    containers.note_process(11, 5 * S, 1);
    containers.flush();
    let workload = containers.workload(10, 5 * S).expect("in a container");
    assert_eq!(
        workload,
        Workload {
            id: CHECKOUT_APP.into(),
            runtime: Runtime::Containerd,
            name: Some("app".into()),
            pod: Some("checkout-7d9f8b6c4-x2kqp".into()),
            namespace: Some("shop".into()),
            image: Some("registry.example.com/shop/checkout:1.4.2".into()),
        }
    );
    assert_eq!(workload.short(), "checkout-7d9f8b6c4-x2kqp/app");
    assert_eq!(containers.workload(11, 5 * S), None, "on the host");
    assert_eq!(containers.workload(12, 5 * S), None, "never noted");
    // The same process through an inventory's start time (clock ticks), not another one.
    assert_eq!(containers.workload(10, 5 * S + 10_000_000).as_ref(), Some(&workload));
    assert_eq!(containers.workload(10, 9 * S), None, "a reused pid is another process");

    // The pod is deleted: the process, gone too, keeps the names it was reported with.
    pods.apply(watcher::Event::Delete(listed_pods()[0].clone()));
    assert_eq!(containers.workload(10, 5 * S), Some(workload));
}

#[test]
fn a_layout_that_names_no_runtime_takes_the_pod_s() {
    let pods = PodIndex::default();
    pods.apply(watcher::Event::Apply(listed_pods()[0].clone()));
    let cgroupfs = format!("11:memory:/kubepods/burstable/pod0f6b1c9e-2a4d-4c1e-9f0a-6f7e3b2d1a55/{CHECKOUT_APP}\n0::/\n");
    let containers = resolver(Some(pods), vec![(10, cgroupfs)]);
    containers.note_process(10, S, 5);
    containers.flush();
    let workload = containers.workload(10, S).unwrap();
    assert_eq!((workload.runtime, workload.name.as_deref()), (Runtime::Containerd, Some("app")));
}

#[test]
fn a_container_its_pod_does_not_list_yet_is_named_by_the_pod_its_cgroup_is_in() {
    let pods = PodIndex::default();
    pods.apply(watcher::Event::Apply(listed_pods()[1].clone()));
    let id = "f".repeat(64);
    let starting = format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod7c2e9a41_8b3f_4d6e_a1c5_2e4f6a8b0c13.slice/\
         cri-containerd-{id}.scope\n"
    );
    let containers = resolver(Some(pods), vec![(10, starting)]);
    containers.note_process(10, S, 5);
    containers.flush();
    let workload = containers.workload(10, S).unwrap();
    let named = (workload.pod.as_deref(), workload.namespace.as_deref(), workload.name.as_deref());
    assert_eq!(named, (Some("payments-5c8d7f9b6-q7wzn"), Some("shop"), None));
    assert_eq!(workload.short(), "ffffffffffff", "no container name: the id");
}

#[test]
fn without_kubernetes_a_container_is_its_id_and_runtime() {
    let containers = resolver(None, vec![(20, fixture("podman-cgroupfs-v1-hybrid.cgroup"))]);
    containers.note_process(20, S, 3);
    containers.flush();
    let workload = containers.workload(20, S).unwrap();
    assert_eq!((workload.runtime, workload.short().as_str()), (Runtime::Podman, "5e687ed3797e"));
    assert_eq!((workload.name, workload.pod, workload.namespace, workload.image), (None, None, None, None));
    // The report's shape: every field present, null when unknown.
    let json = serde_json::to_value(containers.workload(20, S)).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"id": "5e687ed3797e47bcc2db462f91ea9781cd370b770310841c917a8828d2a495cd", "runtime": "podman",
                           "name": null, "pod": null, "namespace": null, "image": null})
    );
}

#[test]
fn a_process_gone_before_its_read_takes_its_cgroup_s_container_when_that_is_unambiguous() {
    let podman = fixture("podman-cgroupfs-v1-hybrid.cgroup");
    let containers = resolver(
        None,
        vec![
            (30, podman.clone()),
            (40, fixture("host-v1-hybrid.cgroup")),
            (41, fixture("docker-cgroupfs-v1.cgroup")),
            (50, podman),
        ],
    );
    containers.note_process(30, S, 77);
    containers.note_process(31, S, 77); // gone
    // cgroup id 1 holds a host process and a container (v1 without a unified hierarchy).
    containers.note_process(40, S, 1);
    containers.note_process(41, S, 1);
    containers.note_process(42, S, 1); // gone
    // An inventory's owner whose cgroup id is unknown (0), gone: nothing to go by.
    containers.note_process(50, S, 0);
    containers.note_process(51, S, 0); // gone
    containers.flush();
    assert_eq!(containers.workload(31, S).unwrap().id, containers.workload(30, S).unwrap().id);
    assert!(containers.workload(41, S).is_some());
    assert_eq!(containers.workload(42, S), None);
    assert!(containers.workload(50, S).is_some());
    assert_eq!(containers.workload(51, S), None);
}

#[test]
fn memory_is_bounded() {
    let mut table = ProcessTable { by_pid: FastMap::default(), order: VecDeque::new(), capacity: 2 };
    assert!(table.add(ProcessKey { pid: 1, start_ns: S }).is_some());
    assert!(table.add(ProcessKey { pid: 1, start_ns: S + 1000 }).is_none(), "the same process");
    assert!(table.add(ProcessKey { pid: 1, start_ns: 9 * S }).is_some(), "pid reused");
    assert!(table.add(ProcessKey { pid: 2, start_ns: S }).is_some());
    assert!(table.find(1, S).is_none(), "the oldest is forgotten");
    assert!(table.find(1, 9 * S).is_some() && table.find(2, S).is_some());
    assert_eq!(table.by_pid.values().map(Vec::len).sum::<usize>(), 2);

    let mut names = Bounded::new(2);
    for key in ["a", "b", "a", "c"] {
        names.insert(key, ());
    }
    assert_eq!((names.get(&"a"), names.get(&"b"), names.get(&"c")), (None, Some(&()), Some(&())));
}

#[test]
fn filters_match_ids_names_pods_and_namespaces() {
    let named = Workload {
        id: CHECKOUT_APP.into(),
        runtime: Runtime::Containerd,
        name: Some("app".into()),
        pod: Some("checkout-1".into()),
        namespace: Some("shop".into()),
        image: None,
    };
    let unnamed = Workload { name: None, pod: None, namespace: None, ..named.clone() };
    let filter = |containers: &[&str], pods: &[&str], namespaces: &[&str]| WorkloadFilter {
        containers: containers.iter().map(|s| s.to_string()).collect(),
        pods: pods.iter().map(|s| s.to_string()).collect(),
        namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
    };
    assert!(filter(&[], &[], &[]).wants(None), "no filter keeps the host");
    assert!(!filter(&["123b"], &[], &[]).wants(None), "a filter drops the host");
    assert!(filter(&["123beec1"], &[], &[]).wants(Some(&unnamed)));
    assert!(!filter(&["23beec1"], &[], &[]).wants(Some(&unnamed)), "a prefix, not a substring");
    assert!(filter(&["app"], &[], &[]).wants(Some(&named)));
    assert!(!filter(&["app"], &[], &[]).wants(Some(&unnamed)));
    assert!(filter(&[], &["checkout-1"], &["shop"]).wants(Some(&named)));
    assert!(!filter(&[], &["checkout-1"], &["other"]).wants(Some(&named)), "every flag must match");
    assert!(!filter(&[], &[], &["shop"]).wants(Some(&unnamed)));
}
