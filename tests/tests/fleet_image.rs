//! The image of `cargo xtask image`, run the way deploy/kubernetes/'s DaemonSet runs it (its
//! pod translated into `podman run` flags: the same capabilities, host PID namespace, read-only
//! host paths, limits), finds a program leaking connections in *another* container, and does
//! not call a healthy one beside it a leak. No Kubernetes cluster can run here; podman (rootful,
//! runc) stands in for the node's runtime.
use std::{sync::MutexGuard, time::Duration};

use leaktrace_tests::{
    agent::{Prometheus, get},
    cli::sites_of,
    containers::{self, Container},
    deploy::{self, Manifests, PodmanPod},
    go::{GoBuild, go_program},
    require_privileges,
};
use serde_json::Value;

/// The gRPC server's port, inside the network namespace the test's containers share.
const PORT: &str = "50051";

/// The agent's port, as the DaemonSet's arguments and container port say.
const AGENT_PORT: u16 = 10528;

/// How long the agent may take to attach, see the leak, and be scraped.
const PATIENCE: Duration = Duration::from_secs(60);

/// The function a call site is named by.
fn function_of(site: &Value) -> &str {
    site["telling_frame"].as_u64().and_then(|index| site["frames"][index as usize]["function"].as_str()).unwrap_or("")
}

/// Polls `done` until it holds; panics after [`PATIENCE`] with `context()` and the agent
/// container's logs.
#[track_caller]
fn wait_until(what: &str, mut done: impl FnMut() -> bool, agent: &Container, context: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !done() {
        if std::time::Instant::now() >= deadline {
            let (_, stderr) = agent.logs();
            panic!("{what}: not within {PATIENCE:?}; {}\nthe agent's stderr:\n{stderr}", context());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A pid's call sites in a report, a line each: what a failure message needs.
fn summary(report: &Value, pid: u32) -> String {
    sites_of(report, pid)
        .iter()
        .map(|site| {
            format!(
                "{} {} opened {} live {} {} ancestry {}",
                site["direction"], function_of(site), site["opened"], site["live"], site["verdict"], site["go_ancestry"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

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
    let leaking = grpcleak("grpcleak leak", beside, &["-mode", "leak", "-target", &target, "-rate", "20", "-count", "800"]);
    healthy.wait_for_line("handled ", Duration::from_secs(20));
    leaking.wait_for_line("handled ", Duration::from_secs(20));

    // leaktrace as the DaemonSet's container, with its arguments (the agent), in a network
    // namespace of its own like a pod's; read the way a cluster reads it: its report API, its
    // /metrics and a Prometheus server scraping it, all inside that namespace.
    let mut run = pod.flags.clone();
    run.push("--network=none".into());
    run.push(image);
    run.extend(pod.args.iter().cloned());
    let tracer = Container::run("leaktrace agent", &run);
    let agent_url = |path: &str| format!("http://127.0.0.1:{AGENT_PORT}{path}");
    let prometheus = Prometheus::spawn(tracer.command_in_network("prometheus"), ([127, 0, 0, 1], AGENT_PORT).into());
    let (report, metrics, series) = tracer.in_network(|| {
        wait_until("the agent ready", || get(&agent_url("/readyz"), &[], None).0 == 200, &tracer, String::new);
        let leaking_pid = leaking.host_pid();
        let leaking_report = |report: &Value| {
            sites_of(report, leaking_pid).iter().any(|site| site["verdict"] == "leak" && function_of(site) == "main.dialGRPC")
        };
        let report = std::cell::RefCell::new(Value::Null);
        wait_until(
            "the leak named in /api/v1/report",
            || {
                let (status, body) = get(&agent_url("/api/v1/report"), &[], None);
                *report.borrow_mut() = serde_json::from_str(&body).unwrap_or(Value::Null);
                status == 200 && leaking_report(&report.borrow())
            },
            &tracer,
            || {
                format!(
                    "the leaking client's (pid {leaking_pid}) call sites:\n{}\nits stderr: {}",
                    summary(&report.borrow(), leaking_pid),
                    leaking.logs().1
                )
            },
        );
        let report = report.into_inner();
        let (status, metrics) = get(&agent_url("/metrics"), &[], None);
        assert_eq!(status, 200, "{metrics}");
        prometheus.wait_ready(Duration::from_secs(60));
        let short_id = &leaking.id()[..12];
        let promql = format!("leaktrace_call_site_verdict{{verdict=\"leak\",container=\"{short_id}\"}}");
        let series = prometheus.wait_query(&promql, Duration::from_secs(60), |result| !result.is_empty());
        (report, metrics, series)
    });
    // The exposition names the leak's container and call site, and so does Prometheus.
    let short_id = &leaking.id()[..12];
    assert!(
        metrics.lines().any(|line| line.starts_with("leaktrace_call_site_verdict{")
            && line.contains(&format!("container=\"{short_id}\""))
            && line.contains("call_site=\"main.dialGRPC")
            && line.contains("verdict=\"leak\"")),
        "no leak series for the container in /metrics:\n{metrics}"
    );
    assert!(
        series.iter().any(|sample| sample["metric"]["call_site"].as_str().is_some_and(|site| site.starts_with("main.dialGRPC"))),
        "{series:#?}"
    );

    // The pids are the host's: the DaemonSet's hostPID.
    let (leaking_pid, healthy_pid) = (leaking.host_pid(), healthy.host_pid());
    let show = || serde_json::to_string_pretty(&report["call_sites"]).unwrap();
    // Goroutine ancestry (uprobes on the binary inside the other container) names the
    // application's function behind gRPC's own dial goroutine; the connections dialed before
    // it attached form a call site of their own.
    let leak = sites_of(&report, leaking_pid)
        .into_iter()
        .find(|site| site["direction"] == "connect" && function_of(site) == "main.dialGRPC")
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
