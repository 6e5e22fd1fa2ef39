//! Container attribution end to end: the real `leaktrace` binary tracing a real leaking program
//! inside a real podman container (runc, cgroupfs, as these machines run them) names that
//! container's id and runtime in the JSON report, for its call site and its process, while a
//! host process beside it shows `null`; and `--container` keeps that container alone. leaktrace
//! itself in a container with a private cgroup namespace still names the other containers.
use std::{process::Command, time::Duration};

use leaktrace_tests::{
    cli::{LiveTrace, leaktrace_binary, site_of},
    go::{GoBuild, GoServer, go_program},
    containers::{self, Container},
    require_privileges,
};
use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(45);

/// The server on the host and the leaking client (a static Go binary) in a container sharing
/// the host's network, dialing the server per message and never closing.
fn leak_in_a_container() -> (GoServer, Container) {
    let server = GoServer::grpc(GoBuild::Normal);
    let rootfs = containers::rootfs(&go_program("grpcleak", GoBuild::Normal)).display().to_string();
    let target = server.addr.to_string();
    let container = Container::run(
        "grpcleak leak-tcp",
        &["--network", "host", "--rootfs", &rootfs, "/grpcleak", "-mode", "leak-tcp", "-target", &target, "-rate", "10"]
            .map(String::from),
    );
    (server, container)
}

fn can_run_containers(test: &str) -> bool {
    match containers::unavailable() {
        Some(reason) => {
            eprintln!("skipped {test}: {reason}");
            false
        }
        None => true,
    }
}

fn process(report: &Value, pid: u32) -> Option<&Value> {
    report["processes"].as_array()?.iter().find(|process| process["pid"] == pid)
}

#[test]
fn a_leak_in_a_podman_container_names_the_container_and_a_host_process_names_none() {
    let test = "a_leak_in_a_podman_container_names_the_container_and_a_host_process_names_none";
    let Some(_guard) = require_privileges(test) else { return };
    if !can_run_containers(test) {
        return;
    }
    let (server, container) = leak_in_a_container();
    let client = container.host_pid();
    let port = server.port().to_string();

    let mut trace = LiveTrace::start(&["--port", &port]);
    let report = trace.wait_for("the container's connects and the host's accepts", PATIENCE, |report| {
        site_of(report, client, "connect").is_some_and(|site| !site["container"].is_null())
            && site_of(report, server.pid(), "accept").is_some()
    });
    let site = site_of(&report, client, "connect").unwrap();
    let named = &site["container"];
    assert_eq!(named["id"], container.id(), "{site:#}\ncontainer logs: {}", container.logs().1);
    assert_eq!(named["runtime"], "podman");
    for field in ["name", "pod", "namespace", "image"] {
        assert!(named[field].is_null(), "{field}: no Kubernetes here, so no names: {named}");
    }
    assert_eq!(process(&report, client).expect("the client's process")["container"], *named);
    let host_site = site_of(&report, server.pid(), "accept").unwrap();
    assert!(host_site["container"].is_null(), "a host process: {host_site:#}");
    assert!(process(&report, server.pid()).unwrap()["container"].is_null());

    let (last, _, stderr) = trace.interrupt();
    assert_eq!(site_of(&last, client, "connect").unwrap()["container"]["id"], container.id());
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
        assert!(!stderr.to_lowercase().contains("kubernetes"), "no cluster, so not a word about it: {stderr}");
    }

    // `--container <id prefix>`: the container's call sites alone, the host's server gone.
    let mut filtered = LiveTrace::start(&["--port", &port, "--container", &container.id()[..12]]);
    let report =
        filtered.wait_for("the container's connects", PATIENCE, |report| site_of(report, client, "connect").is_some());
    for site in report["call_sites"].as_array().unwrap() {
        assert_eq!(site["container"]["id"], container.id(), "{site:#}");
    }
    let pids: Vec<&Value> = report["processes"].as_array().unwrap().iter().map(|process| &process["pid"]).collect();
    assert_eq!(pids, [client], "{report:#}");
    drop(filtered);

    // `leaktrace events --container`: the container's connections, from their open on.
    let output = Command::new(leaktrace_binary())
        .args(["events", "--port", &port, "--container", &container.id()[..12], "--duration", "3"])
        .output()
        .expect("running leaktrace events");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let events: Vec<Value> = stdout.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let opens: Vec<&Value> = events.iter().filter(|event| event["owner"].is_object()).collect();
    assert!(!opens.is_empty(), "no connect in the stream:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(opens.iter().all(|open| open["owner"]["pid"] == client && open["type"] == "connect"), "{stdout}");
    let sockets: Vec<&Value> = opens.iter().map(|open| &open["socket"]).collect();
    for change in events.iter().filter(|event| event["type"] == "state") {
        assert!(sockets.contains(&&change["socket"]), "a state change of another socket: {change}");
    }
}

#[test]
fn leaktrace_in_its_own_cgroup_namespace_still_names_the_other_containers() {
    let test = "leaktrace_in_its_own_cgroup_namespace_still_names_the_other_containers";
    let Some(_guard) = require_privileges(test) else { return };
    if !can_run_containers(test) {
        return;
    }
    let (server, container) = leak_in_a_container();
    // leaktrace in a privileged container with the host's pids but a cgroup namespace of its
    // own: it joins the host's where pid 1 lets it, else reads paths relative to its own.
    let rootfs = containers::rootfs_with_libraries(&leaktrace_binary()).display().to_string();
    let port = server.port().to_string();
    let output = Container::run_to_end(&[
        "--privileged", "--pid", "host", "--cgroupns", "private", "--network", "host", "--rootfs", &rootfs,
        "/leaktrace", "--port", &port, "--format", "json", "--duration", "4",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("leaktrace in a container wrote no JSON report ({err}); stderr:\n{stderr}"));
    let site = site_of(&report, container.host_pid(), "connect").unwrap_or_else(|| panic!("no connect site: {report:#}"));
    assert_eq!(site["container"]["id"], container.id(), "{site:#}\nstderr: {stderr}");
    assert_eq!(site["container"]["runtime"], "podman");
    assert!(site_of(&report, server.pid(), "accept").expect("the server's accepts")["container"].is_null());
}
