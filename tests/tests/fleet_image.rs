//! The image of `cargo xtask image`, run the way deploy/kubernetes/'s DaemonSet runs it (its
//! pod translated into `podman run` flags: the same capabilities, host PID namespace, read-only
//! host paths, limits), finds a program leaking connections in *another* container, and does
//! not call a healthy one beside it a leak. No Kubernetes cluster can run here; podman (rootful,
//! runc) stands in for the node's runtime.
use std::{sync::MutexGuard, time::Duration};

use leaktrace_tests::{
    cli::sites_of,
    containers::{self, Container},
    deploy::{self, Manifests, PodmanPod},
    go::{GoBuild, go_program},
    require_privileges,
};
use serde_json::Value;

/// The gRPC server's port, inside the network namespace the test's containers share.
const PORT: &str = "50051";

/// The image, built by `cargo xtask image`, with the guard that serialises privileged tests; or
/// `None` (after saying why) where this machine cannot trace or run containers.
fn the_image(test: &str) -> Option<(MutexGuard<'static, ()>, String)> {
    let serial = require_privileges(test)?;
    if let Some(reason) = containers::unavailable() {
        eprintln!("skipped {test}: {reason}");
        return None;
    }
    Some((serial, deploy::leaktrace_image()))
}

#[test]
fn the_image_with_the_daemonsets_grants_finds_a_leak_in_another_container() {
    let Some((_serial, image)) = the_image("the_image_with_the_daemonsets_grants_finds_a_leak_in_another_container") else { return };
    let pod = PodmanPod::from_pod(Manifests::load().pod(), "leaktrace-test-node");
    assert_eq!(pod.image, image, "the DaemonSet runs the image `cargo xtask image` builds");

    // The Go programs, static (no cgo), each alone in a container without an image. The server
    // has a network namespace of its own (loopback only); the clients join it.
    let rootfs = containers::rootfs(&go_program("grpcleak", GoBuild::Normal)).display().to_string();
    let grpcleak = |what: &str, flags: String, args: &[&str]| {
        let mut run: Vec<String> = flags.split(' ').map(String::from).collect();
        run.extend(["--rootfs".into(), rootfs.clone(), "/grpcleak".into()]);
        run.extend(args.iter().map(|arg| arg.to_string()));
        Container::run(what, &run)
    };
    let target = format!("127.0.0.1:{PORT}");
    let server = grpcleak("grpcleak server", "--network=none".into(), &["-mode", "server", "-listen", &target]);
    server.wait_for_line("listening ", Duration::from_secs(20));
    let beside = format!("--network=container:{}", server.id());
    // Not root, as many pods: its /proc/PID/fd is its own (mode 0500), which leaktrace lists with
    // DAC_READ_SEARCH.
    let healthy = grpcleak(
        "grpcleak shared",
        format!("{beside} --user=65534:65534"),
        &["-mode", "shared", "-target", &target, "-rate", "20"],
    );
    let leaking = grpcleak("grpcleak leak", beside, &["-mode", "leak", "-target", &target, "-rate", "20", "-count", "400"]);
    healthy.wait_for_line("handled ", Duration::from_secs(20));
    leaking.wait_for_line("handled ", Duration::from_secs(20));

    // leaktrace as the DaemonSet's container, in a network namespace of its own like a pod's;
    // the one-shot JSON report instead of the agent's HTTP server.
    let mut run = pod.flags.clone();
    run.push("--network=none".into());
    run.push(image);
    run.extend(["--format", "json", "--duration", "6", "--port", PORT].map(String::from));
    let tracer = Container::run("leaktrace", &run);
    let status = tracer.wait();
    let (stdout, stderr) = tracer.logs();
    assert_eq!(status, 1, "leaktrace exits 1 when it found leaks; its stderr:\n{stderr}");
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|err| panic!("leaktrace's stdout is not one JSON report ({err}):\n{stdout}\nstderr:\n{stderr}"));

    // The pids are the host's: the DaemonSet's hostPID.
    let (leaking_pid, healthy_pid) = (leaking.host_pid(), healthy.host_pid());
    let show = || serde_json::to_string_pretty(&report["call_sites"]).unwrap();
    // Goroutine ancestry (uprobes on the binary inside the other container) names the
    // application's function behind gRPC's own dial goroutine; the connections dialed before
    // it attached form a call site of their own.
    let telling = |site: &Value| {
        let index = site["telling_frame"].as_u64()? as usize;
        site["frames"][index]["function"].as_str().map(str::to_string)
    };
    let leak = sites_of(&report, leaking_pid)
        .into_iter()
        .find(|site| site["direction"] == "connect" && telling(site).as_deref() == Some("main.dialGRPC"))
        .unwrap_or_else(|| panic!("no connect call site of the leaking container's pid {leaking_pid} at main.dialGRPC:\n{}", show()));
    assert_eq!(leak["verdict"], "leak", "{leak:#}");
    assert_eq!(leak["exe"], "/grpcleak", "its binary, read through /proc (SYS_PTRACE): {leak:#}");
    // Named by its container, from its cgroup (read in the host's cgroup namespace).
    assert_eq!(leak["container"]["id"], leaking.id(), "{leak:#}");
    assert_eq!(leak["container"]["runtime"], "podman", "{leak:#}");
    let functions: Vec<&str> = leak["frames"].as_array().unwrap().iter().filter_map(|f| f["function"].as_str()).collect();
    assert!(functions.contains(&"google.golang.org/grpc.DialContext.func2"), "symbolized in the other container: {functions:?}");
    assert!(leak["opened"].as_u64().unwrap() >= 20, "{leak:#}");

    // The healthy client's one connection predates leaktrace: the inventory found it in the
    // containers' network namespace (setns: SYS_ADMIN) and its owner (/proc/PID/fd of another
    // user: DAC_READ_SEARCH).
    let processes = report["processes"].as_array().expect("processes");
    let process = processes
        .iter()
        .find(|process| process["pid"] == healthy_pid)
        .unwrap_or_else(|| panic!("the healthy container's pid {healthy_pid} is not in the report:\n{}", show()));
    assert_eq!(process["verdict"], "ok", "{process:#}");
    assert_eq!(process["live"], 1, "one shared connection: {process:#}");
    for site in sites_of(&report, healthy_pid) {
        assert_ne!(site["verdict"], "leak", "{site:#}");
    }
}

/// The image holds one layer (the binary) and, run without arguments, does what the DaemonSet
/// asks for: the same command, on the port the pod declares.
#[test]
fn the_image_runs_the_daemonsets_command_by_default() {
    let Some((_serial, image)) = the_image("the_image_runs_the_daemonsets_command_by_default") else { return };
    let config: Value = serde_json::from_str(&containers::podman_ok(&["image", "inspect", "--format", "{{json .Config}}", &image]))
        .expect("podman prints the image's config as JSON");
    let layers = containers::podman_ok(&["image", "inspect", "--format", "{{len .RootFS.Layers}}", &image]);
    assert_eq!(layers, "1", "FROM scratch plus one COPY");
    let manifests = Manifests::load();
    let container = &manifests.pod().containers[0];
    assert_eq!(container.command, None, "the DaemonSet keeps the image's entrypoint");
    assert_eq!(config["Entrypoint"], serde_json::json!(["/leaktrace"]));
    assert_eq!(config["Cmd"], serde_json::json!(container.args), "the image's default arguments are the DaemonSet's");
    let port = container.ports.as_ref().expect("a port")[0].container_port;
    assert!(config["ExposedPorts"].get(format!("{port}/tcp")).is_some(), "the image exposes the pod's port: {config}");
}
