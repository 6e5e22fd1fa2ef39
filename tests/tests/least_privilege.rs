//! leaktrace run as a user would run it without root: an unprivileged user (`nobody`) holding
//! only the capabilities the README lists, as ambient capabilities (`setpriv`, util-linux). With
//! them it finds a leak of that user's own process and names its function; with any one of them
//! fewer it stops at once with exit 2 and a message naming the capability that is missing.
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use leaktrace_tests::{
    Puppet,
    cli::{JSONL_ARGS, LiveTrace, leaktrace_binary, site_of},
    puppet::sockpuppet_binary,
    require_privileges,
};

/// The README's list: CAP_BPF and CAP_PERFMON load and attach the probes, CAP_DAC_READ_SEARCH
/// reads tracefs (root's only, mode 0700).
const LEAST: [&str; 3] = ["bpf", "perfmon", "dac_read_search"];

/// A copy of `binary` that user `nobody` may execute (the build tree may not be reachable).
fn reachable_copy(binary: &Path, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.join(binary.file_name().unwrap());
    std::fs::copy(binary, &copy).unwrap_or_else(|err| panic!("copying {}: {err}", binary.display()));
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

/// `setpriv` running `program` as `nobody` with exactly `caps` (ambient, so they survive the
/// exec), nothing else in its bounding set.
fn as_nobody(caps: &[&str], program: &Path) -> Command {
    let set = std::iter::once("-all".to_string()).chain(caps.iter().map(|cap| format!("+{cap}"))).collect::<Vec<_>>().join(",");
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(format!("--inh-caps={set}"))
        .arg(format!("--ambient-caps={set}"))
        .arg(format!("--bounding-set={set}"))
        .arg("--")
        .arg(program);
    command
}

struct Binaries {
    dir: PathBuf,
    leaktrace: PathBuf,
    sockpuppet: PathBuf,
}

impl Binaries {
    fn copy(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("leaktrace-{test}-{}", std::process::id()));
        Self { leaktrace: reachable_copy(&leaktrace_binary(), &dir), sockpuppet: reachable_copy(&sockpuppet_binary(), &dir), dir }
    }
}

impl Drop for Binaries {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn the_capabilities_the_readme_lists_find_an_unprivileged_users_leak_by_its_function() {
    let Some(_guard) = require_privileges("the_capabilities_the_readme_lists_find_an_unprivileged_users_leak_by_its_function") else {
        return;
    };
    let binaries = Binaries::copy("least");
    let mut server = Puppet::spawn();
    let (listener, port) = server.listen("127.0.0.1");
    let mut client = Puppet::spawn_command(as_nobody(&[], &binaries.sockpuppet));
    let mut command = as_nobody(&LEAST, &binaries.leaktrace);
    command.args(JSONL_ARGS).args(["--pid", &client.pid().to_string()]);
    let mut trace = LiveTrace::start_command(command);
    // Ten connections a second, never closed: a leak in a few seconds.
    let report = trace.wait_for("the unprivileged client's leak", Duration::from_secs(45), |report| {
        for _ in 0..10 {
            client.connect("127.0.0.1", port);
            server.accept(listener);
        }
        std::thread::sleep(Duration::from_millis(500));
        site_of(report, client.pid(), "connect").is_some_and(|site| site["verdict"] == "leak")
    });
    let site = site_of(&report, client.pid(), "connect").unwrap();
    let functions: Vec<&str> = site["frames"].as_array().unwrap().iter().filter_map(|frame| frame["function"].as_str()).collect();
    assert!(functions.contains(&"new_client"), "the client's own stack, symbolized: {site:#}");
    assert_eq!(report["events"]["lost"], 0, "{:#}", report["events"]);
    let (_, status, stderr) = trace.interrupt();
    assert_eq!(status.code(), Some(1), "{stderr}");
    // What it cannot see without the optional capabilities, said once at start.
    assert!(stderr.contains("without CAP_SYS_ADMIN, connections opened before start in other network namespaces"), "{stderr}");
    assert!(stderr.contains("without CAP_SYS_PTRACE, processes of other users"), "{stderr}");
}

#[test]
fn one_capability_fewer_stops_at_once_naming_the_one_missing() {
    let Some(_guard) = require_privileges("one_capability_fewer_stops_at_once_naming_the_one_missing") else { return };
    let binaries = Binaries::copy("fewer");
    let tracefs_open_to_all =
        std::fs::metadata("/sys/kernel/tracing").is_ok_and(|meta| meta.permissions().mode() & 0o005 == 0o005);
    for dropped in LEAST {
        let caps: Vec<&str> = LEAST.into_iter().filter(|cap| *cap != dropped).collect();
        let output = as_nobody(&caps, &binaries.leaktrace).args(["--duration", "1s", "--format", "json"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let name = format!("CAP_{}", dropped.to_uppercase());
        if dropped == "dac_read_search" && tracefs_open_to_all {
            eprintln!("tracefs is readable by everyone on this machine: CAP_DAC_READ_SEARCH is not needed here");
            assert_eq!(output.status.code(), Some(0), "{stderr}");
            continue;
        }
        assert_eq!(output.status.code(), Some(2), "without {name}: {stderr}");
        let error = &stderr[stderr.find("leaktrace: ").unwrap_or_else(|| panic!("no error: {stderr}"))..];
        assert!(error.contains(&name), "without {name}, the error names it: {stderr}");
        assert!(error.lines().count() <= 2, "an error and its hint: {stderr}");
        assert!(!error.contains("Device or resource busy"), "a tracefs for root only is not an unmounted one: {stderr}");
        assert!(output.stdout.is_empty(), "no report is half-written: {}", String::from_utf8_lossy(&output.stdout));
    }
}
