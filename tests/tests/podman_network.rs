//! The podman helper of the image tests (tests/src/containers.rs): a static program runs as a container
//! without any image, and a server listening only in a container's own network namespace is
//! reached from a thread or a process entering it, not from the host's.
use std::{net::TcpStream, time::Duration};

use leaktrace_tests::{
    containers::{self, Container},
    go::{GoBuild, go_program},
};

#[test]
fn a_server_in_a_container_is_reached_through_its_network_namespace_only() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped a_server_in_a_container_is_reached_through_its_network_namespace_only: rootful podman needs root");
        return;
    }
    if let Some(reason) = containers::unavailable() {
        eprintln!("skipped a_server_in_a_container_is_reached_through_its_network_namespace_only: {reason}");
        return;
    }
    let rootfs = containers::rootfs(&go_program("grpcleak", GoBuild::Normal)).display().to_string();
    let server = Container::run(
        "grpcleak server",
        &["--network=none", "--rootfs", &rootfs, "/grpcleak", "-mode", "server", "-listen", "127.0.0.1:50052"].map(String::from),
    );
    let line = server.wait_for_line("listening ", Duration::from_secs(20));
    assert_eq!(line, "listening 127.0.0.1:50052");
    assert_ne!(server.host_pid(), 0);

    let inside = server.in_network(|| TcpStream::connect("127.0.0.1:50052").map(|_| ()));
    assert!(inside.is_ok(), "from the container's network namespace: {inside:?}");
    // The host's loopback is another one (the port may be in use there by something else, so
    // only a refusal proves the point; anything listening would not be the container).
    if let Err(err) = TcpStream::connect("127.0.0.1:50052") {
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    }
    let listening = server.command_in_network("cat").arg("/proc/net/tcp").output().expect("nsenter runs");
    assert!(listening.status.success(), "{}", String::from_utf8_lossy(&listening.stderr));
    // 127.0.0.1:50052 (0xC384), state 0A (LISTEN), as the kernel lists it in that namespace.
    let table = String::from_utf8_lossy(&listening.stdout);
    assert!(table.lines().any(|line| line.contains("0100007F:C384") && line.contains(" 0A ")), "{table}");

    let id = server.id().to_string();
    drop(server);
    let exists = containers::podman().args(["container", "exists", &id]).status().unwrap();
    assert_eq!(exists.code(), Some(1), "removed on drop");
}

#[test]
fn a_container_that_cannot_start_is_not_left_behind() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 || containers::unavailable().is_some() {
        eprintln!("skipped a_container_that_cannot_start_is_not_left_behind: needs root and podman");
        return;
    }
    let rootfs = containers::rootfs(&go_program("grpcleak", GoBuild::Normal)).display().to_string();
    let failed = std::panic::catch_unwind(|| {
        Container::run("a missing program", &["--network=none", "--rootfs", &rootfs, "/no-such-program"].map(String::from))
    });
    let message = *failed.expect_err("podman cannot start a program that is not there").downcast::<String>().unwrap();
    assert!(message.contains("a missing program") && message.contains("no-such-program"), "{message}");
    // The runtime created it before failing to start it; the helper removed it by its name.
    let name = message.split("--name ").nth(1).and_then(|rest| rest.split(' ').next()).expect("the command names it");
    let exists = containers::podman().args(["container", "exists", name]).status().unwrap();
    assert_eq!(exists.code(), Some(1), "{name} was left behind");
}
