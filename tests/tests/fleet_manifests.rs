//! deploy/kubernetes/ read as Kubernetes objects and held to what the agent needs
//! (`leaktrace::host_access`): granting more or less than that fails here, before any cluster.
//! No cluster runs here; the image running with these grants is fleet_image.rs.
use std::collections::BTreeSet;

use leaktrace::host_access::{API_ACCESS, CAPABILITIES, DOWNWARD_API_ENV, HOST_NAMESPACES, HOST_PATHS};
use leaktrace_tests::deploy::{Manifests, PodmanPod, bytes, leaktrace_version, millicores};

use k8s_openapi::{
    api::core::v1::{Container, Probe},
    apimachinery::pkg::util::intstr::IntOrString,
};

fn the_container(manifests: &Manifests) -> &Container {
    let containers = &manifests.pod().containers;
    assert_eq!(containers.len(), 1, "one container in the DaemonSet's pod");
    &containers[0]
}

fn set<'a>(items: impl IntoIterator<Item = &'a str>) -> BTreeSet<&'a str> {
    items.into_iter().collect()
}

#[test]
fn every_manifest_is_a_known_kubernetes_object_applied_in_an_order_that_works() {
    let manifests = Manifests::load();
    let kinds: Vec<&str> = manifests.order.iter().map(|(_, kind)| kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet", "PodMonitor", "PrometheusRule"],
        "kubectl applies files by name: the namespace first, then what lives in it"
    );
    // Without the Prometheus operator its kinds are unknown to the cluster: they live in a
    // subdirectory that `kubectl apply -f deploy/kubernetes/` (not -R) leaves out.
    for (file, kind) in &manifests.order {
        let in_subdirectory = file.contains('/');
        let operator_kind = ["PodMonitor", "PrometheusRule"].contains(&kind.as_str());
        assert_eq!(in_subdirectory, operator_kind, "{file}: {kind}");
    }
    let namespace = manifests.namespace.metadata.name.as_deref().unwrap();
    for (what, object_namespace) in [
        ("ServiceAccount", manifests.service_account.metadata.namespace.as_deref()),
        ("DaemonSet", manifests.daemon_set.metadata.namespace.as_deref()),
        ("PodMonitor", manifests.pod_monitor["metadata"]["namespace"].as_str()),
        ("PrometheusRule", manifests.prometheus_rule["metadata"]["namespace"].as_str()),
    ] {
        assert_eq!(object_namespace, Some(namespace), "the {what} lives in leaktrace's namespace");
    }
    // Pod Security Admission would refuse hostPID and these capabilities at "baseline".
    let labels = manifests.namespace.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("pod-security.kubernetes.io/enforce").map(String::as_str), Some("privileged"));
}

#[test]
fn the_daemonset_grants_exactly_the_capabilities_the_agent_needs() {
    let manifests = Manifests::load();
    let security = the_container(&manifests).security_context.clone().expect("a securityContext");
    let capabilities = security.capabilities.expect("capabilities are set explicitly");
    assert_eq!(capabilities.drop.as_deref(), Some(&["ALL".to_string()][..]), "every capability is dropped first");
    let added = capabilities.add.unwrap_or_default();
    let granted = set(added.iter().map(String::as_str));
    assert_eq!(granted.len(), added.len(), "a capability is added twice: {added:?}");
    let needed = set(CAPABILITIES.iter().map(|cap| cap.name));
    assert_eq!(granted, needed, "granted (left) vs needed (leaktrace::host_access::CAPABILITIES, right)");
    assert_ne!(security.privileged, Some(true), "never privileged: the capabilities say what it may do");
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true), "leaktrace writes nothing in its container");
    assert_eq!(security.run_as_user, Some(0), "root in the container, with only the capabilities above");
}

#[test]
fn the_daemonset_shares_only_the_host_namespaces_the_agent_needs() {
    let manifests = Manifests::load();
    let pod = manifests.pod();
    let needs = |name: &str| HOST_NAMESPACES.iter().any(|namespace| namespace.name == name);
    assert_eq!(pod.host_pid.unwrap_or(false), needs("pid"), "hostPID");
    assert_eq!(pod.host_network.unwrap_or(false), needs("net"), "hostNetwork");
    assert_eq!(pod.host_ipc.unwrap_or(false), needs("ipc"), "hostIPC");
    assert_eq!(pod.host_users, None, "user namespaces would take the capabilities' effect on the host away");
}

#[test]
fn the_daemonset_mounts_exactly_the_host_paths_the_agent_needs_read_only() {
    let manifests = Manifests::load();
    let pod = manifests.pod();
    let mounts = the_container(&manifests).volume_mounts.clone().unwrap_or_default();
    let volumes = pod.volumes.clone().unwrap_or_default();
    assert_eq!(mounts.len(), volumes.len(), "every volume is mounted once: {mounts:?} {volumes:?}");
    let mut mounted = BTreeSet::new();
    for mount in &mounts {
        let volume = volumes.iter().find(|volume| volume.name == mount.name).expect("a mount names a volume");
        let host_path = volume.host_path.as_ref().unwrap_or_else(|| panic!("volume {} is not a hostPath", volume.name));
        assert_eq!(mount.mount_path, host_path.path, "{}: mounted where it is on the host", volume.name);
        assert_eq!(mount.read_only, Some(true), "{}: read-only", volume.name);
        assert_eq!(host_path.type_.as_deref(), Some("Directory"), "{}: must exist on the node", volume.name);
        mounted.insert(host_path.path.as_str());
    }
    assert_eq!(mounted, set(HOST_PATHS.iter().map(|path| path.path)), "mounted (left) vs needed (right)");
}

#[test]
fn rbac_grants_only_reading_pods_to_the_daemonsets_service_account() {
    let manifests = Manifests::load();
    let rules = manifests.cluster_role.rules.clone().unwrap_or_default();
    assert_eq!(rules.len(), API_ACCESS.len(), "{rules:?}");
    for (rule, needed) in rules.iter().zip(API_ACCESS) {
        assert_eq!(rule.api_groups.as_deref(), Some(&[needed.api_group.to_string()][..]));
        assert_eq!(rule.resources.as_deref(), Some(&[needed.resource.to_string()][..]));
        assert_eq!(set(rule.verbs.iter().map(String::as_str)), set(needed.verbs.iter().copied()), "verbs");
        assert_eq!(rule.verbs.len(), needed.verbs.len(), "no verb twice");
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none(), "{rule:?}");
    }
    assert!(manifests.cluster_role.aggregation_rule.is_none());

    let binding = &manifests.cluster_role_binding;
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), manifests.cluster_role.metadata.name.as_ref());
    let subjects = binding.subjects.clone().unwrap_or_default();
    let account = &manifests.service_account.metadata;
    assert_eq!(subjects.len(), 1, "{subjects:?}");
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), account.name.as_ref());
    assert_eq!(subjects[0].namespace, account.namespace);
    assert_eq!(manifests.pod().service_account_name, account.name, "the pod runs as that account");
    assert_ne!(manifests.service_account.automount_service_account_token, Some(false), "the pod watch needs its token");
}

#[test]
fn the_daemonset_runs_the_agent_of_this_version_on_every_node() {
    let manifests = Manifests::load();
    let container = the_container(&manifests);
    assert_eq!(container.image.as_deref(), Some(format!("localhost/leaktrace:{}", leaktrace_version()).as_str()));
    let args = container.args.clone().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("agent"), "{args:?}");
    let port = container.ports.clone().unwrap_or_default();
    let [port] = port.as_slice() else { panic!("one container port: {port:?}") };
    let listen = args.iter().position(|arg| arg == "--listen").map(|at| args[at + 1].clone());
    assert_eq!(listen, Some(format!("0.0.0.0:{}", port.container_port)), "the agent listens on the declared port");

    let probe_path = |probe: &Option<Probe>| {
        let http = probe.as_ref().and_then(|probe| probe.http_get.clone()).expect("an HTTP probe");
        let named = IntOrString::String(port.name.clone().expect("the port has a name"));
        assert!(http.port == named || http.port == IntOrString::Int(port.container_port), "{http:?}");
        http.path.unwrap_or_default()
    };
    assert_eq!(probe_path(&container.liveness_probe), "/healthz");
    assert_eq!(probe_path(&container.readiness_probe), "/readyz");

    let env: Vec<(String, String)> = container
        .env
        .iter()
        .flatten()
        .map(|var| {
            let field = var.value_from.as_ref().and_then(|from| from.field_ref.as_ref()).expect("from the downward API");
            (var.name.clone(), field.field_path.clone())
        })
        .collect();
    let needed: Vec<(String, String)> = DOWNWARD_API_ENV.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    assert_eq!(env, needed);

    // A toleration with operator Exists and no key tolerates every taint.
    let pod = manifests.pod();
    let tolerations = pod.tolerations.clone().unwrap_or_default();
    assert!(
        tolerations.iter().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()),
        "{tolerations:?}"
    );
    assert!(pod.node_selector.is_none() && pod.affinity.is_none(), "every node, none selected away");

    let daemon_set = manifests.daemon_set.spec.as_ref().unwrap();
    let template_labels = daemon_set.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    for (key, value) in daemon_set.selector.match_labels.clone().unwrap_or_default() {
        assert_eq!(template_labels.get(&key), Some(&value), "the selector matches the pods it makes");
    }
}

#[test]
fn the_daemonset_requests_less_than_its_limits() {
    let manifests = Manifests::load();
    let resources = the_container(&manifests).resources.clone().expect("requests and limits");
    let requests = resources.requests.unwrap_or_default();
    let limits = resources.limits.unwrap_or_default();
    assert!(bytes(&requests["memory"]) <= bytes(&limits["memory"]));
    assert!(millicores(&requests["cpu"]) <= millicores(&limits["cpu"]));
    // The BPF maps alone (8 MiB ring buffer, a 131072-entry socket map) are charged to the pod's
    // memory cgroup: a limit below them fails at load.
    assert!(bytes(&limits["memory"]) >= 64 << 20);
}

#[test]
fn prometheus_scrapes_the_agents_port_and_alerts_on_a_leak_verdict() {
    let manifests = Manifests::load();
    let container = the_container(&manifests);
    let port = &container.ports.as_ref().unwrap()[0];
    let monitor = &manifests.pod_monitor;
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    let endpoints = monitor["spec"]["podMetricsEndpoints"].as_array().expect("podMetricsEndpoints");
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0]["port"].as_str(), port.name.as_deref(), "scrapes the container's named port");
    assert_eq!(endpoints[0]["path"], "/metrics");
    let template = manifests.daemon_set.spec.as_ref().unwrap().template.metadata.clone().unwrap();
    let pod_labels = template.labels.unwrap_or_default();
    let selected = monitor["spec"]["selector"]["matchLabels"].as_object().expect("matchLabels");
    for (key, value) in selected {
        assert_eq!(pod_labels.get(key).map(String::as_str), value.as_str(), "the PodMonitor selects the agent's pods");
    }
    let namespace = manifests.namespace.metadata.name.clone().unwrap();
    assert_eq!(monitor["spec"]["namespaceSelector"]["matchNames"], serde_json::json!([namespace]));
    let annotations = template.annotations.unwrap_or_default();
    assert_eq!(annotations.get("prometheus.io/port"), Some(&port.container_port.to_string()));

    let rule = &manifests.prometheus_rule;
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    let rules: Vec<&serde_json::Value> =
        rule["spec"]["groups"].as_array().expect("groups").iter().flat_map(|g| g["rules"].as_array().unwrap()).collect();
    let leak = rules.iter().find(|r| r["alert"] == "ConnectionLeak").expect("a ConnectionLeak alert");
    let expr = leak["expr"].as_str().unwrap();
    assert!(expr.contains("leaktrace_call_site_verdict{verdict=\"leak\"}"), "{expr}");
    assert!(leak["annotations"]["summary"].as_str().unwrap().contains("$labels.pod"), "the alert names the pod");
}

/// promtool (Debian's prometheus package) checks the PrometheusRule's rules the way Prometheus
/// loads them: PromQL syntax, templates, durations.
#[test]
fn promtool_accepts_the_alerting_rules() {
    if std::process::Command::new("promtool").arg("--version").output().is_err() {
        eprintln!("skipped promtool_accepts_the_alerting_rules: promtool not installed (`cargo xtask setup --test-deps`)");
        return;
    }
    let manifests = Manifests::load();
    let dir = std::env::temp_dir().join(format!("leaktrace-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A rules file is YAML; JSON is YAML.
    let file = dir.join("rules.yaml");
    std::fs::write(&file, serde_json::to_string_pretty(&manifests.prometheus_rule["spec"]).unwrap()).unwrap();
    let output = std::process::Command::new("promtool").arg("check").arg("rules").arg(&file).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool check rules: {said}");
    assert!(said.contains("SUCCESS: 2 rules found"), "{said}");
}

#[test]
fn the_pod_translates_to_podman_flags_granting_the_same() {
    let manifests = Manifests::load();
    let pod = PodmanPod::from_pod(manifests.pod(), "node-1");
    let cgroupns = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() { "private" } else { "host" };
    let expected: Vec<String> = [
        "--pid=host".to_string(),
        format!("--cgroupns={cgroupns}"),
        "--cap-drop=all".into(),
        "--cap-add=BPF".into(),
        "--cap-add=PERFMON".into(),
        "--cap-add=SYS_ADMIN".into(),
        "--cap-add=SYS_PTRACE".into(),
        "--cap-add=DAC_READ_SEARCH".into(),
        "--read-only".into(),
        "--security-opt=no-new-privileges".into(),
        "--user=0".into(),
        "--env=NODE_NAME=node-1".into(),
        "--volume=/sys/kernel/tracing:/sys/kernel/tracing:ro".into(),
        "--memory=536870912".into(),
        "--cpus=1".into(),
        "--cpu-shares=102".into(),
    ]
    .into();
    assert_eq!(pod.flags, expected);
    assert_eq!(pod.image, format!("localhost/leaktrace:{}", leaktrace_version()));
    assert_eq!(pod.args, ["agent", "--listen", "0.0.0.0:10528"]);
}
