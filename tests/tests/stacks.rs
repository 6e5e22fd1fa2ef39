//! The user stack taken at connect() is the connecting program's: in a C program built with
//! frame pointers, its return addresses fall in the program's own functions, caller after
//! caller, as `nm` places them.
use std::{process::Command, time::Duration};

use leaktrace::kernel::TracerOptions;
use leaktrace_tests::{Puppet, TraceSession, puppet::sockpuppet_binary, require_privileges, sockets_of};

/// `(start, end, name)` of every function symbol in `binary`.
fn functions(binary: &std::path::Path) -> Vec<(u64, u64, String)> {
    let output = Command::new("nm").args(["--defined-only", "-S"]).arg(binary).output().expect("nm (binutils)");
    assert!(output.status.success());
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields[..] {
                [start, size, kind, name] if kind.eq_ignore_ascii_case("t") => {
                    let start = u64::from_str_radix(start, 16).ok()?;
                    Some((start, start + u64::from_str_radix(size, 16).ok()?, name.to_string()))
                }
                _ => None,
            }
        })
        .collect()
}

#[test]
fn connect_stack_holds_the_callers_return_addresses() {
    let Some(_guard) = require_privileges("connect_stack_holds_the_callers_return_addresses") else { return };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let session = TraceSession::start(TracerOptions { ports: vec![port], ..Default::default() });
    let mut client = Puppet::spawn();
    client.connect("127.0.0.1", port);
    assert!(session.wait_for(Duration::from_secs(10), |events| sockets_of(events, client.pid()).len() == 1));
    let done = session.stop();
    let connect = done.events.iter().find_map(|e| e.open().filter(|o| o.owner.pid == client.pid())).unwrap();

    let symbols = functions(&sockpuppet_binary());
    let in_program: Vec<&str> = connect
        .stack
        .iter()
        .filter_map(|&address| {
            symbols.iter().find(|(start, end, _)| (*start..*end).contains(&address)).map(|(_, _, name)| name.as_str())
        })
        .collect();
    // libc's connect() is a leaf without a frame of its own, so the walk starting at the
    // syscall skips its caller (open_conn) and resumes at open_conn's return into dial:
    // the frame-pointer limitation the field notes describe, pinned here.
    assert_eq!(in_program, ["dial", "new_client", "run_command", "main"], "stack {:x?}", connect.stack);
    assert!(connect.stack_error.is_none());
}
