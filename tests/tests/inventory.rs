//! The socket inventory against the real kernel: real sockets in this process, in child
//! processes and in a network namespace of their own come back from sock_diag with their
//! exact tuple, state, cookie (the one `SO_COOKIE` and the probes give), owner and idle times.
//! Each check looks only at its own ports, sockets and pids: other tests make loopback
//! traffic on this machine at the same time.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::{Child, ChildStdin, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use leaktrace::{
    event::{Event, EventBody},
    inventory::{
        Connection, Direction, Inventory, InventoryError, OwnerScanStats, Snapshot, SockKind,
        SocketOwners,
    },
    kernel::TracerOptions,
    tcp::TcpState,
};
use leaktrace_tests::{Puppet, TraceSession, require_privileges};

const WAIT: Duration = Duration::from_secs(10);

/// `getsockopt(SO_COOKIE)`: the cookie as the socket's holder reads it.
fn so_cookie(socket: &impl AsRawFd) -> u64 {
    const SO_COOKIE: libc::c_int = 57;
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid fd, and a buffer of the length passed.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    assert_eq!(
        rc,
        0,
        "getsockopt(SO_COOKIE): {}",
        std::io::Error::last_os_error()
    );
    cookie
}

/// An address as the inventory reports it: v4-mapped IPv6 reads as IPv4.
fn normalised(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

fn boottime_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) },
        0
    );
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

#[track_caller]
fn inventory() -> Inventory {
    Inventory::new().unwrap_or_else(|err| panic!("opening the inventory: {err}"))
}

#[track_caller]
fn take(inventory: &mut Inventory) -> Snapshot {
    inventory
        .take()
        .unwrap_or_else(|err| panic!("taking the inventory: {err}"))
}

/// Takes inventories until `done` holds for one: the kernel finishes a close in softirq, a
/// moment after close() returns. Fails the test after [`WAIT`].
#[track_caller]
fn take_until(inventory: &mut Inventory, what: &str, done: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let deadline = Instant::now() + WAIT;
    loop {
        let snapshot = take(inventory);
        if done(&snapshot) {
            return snapshot;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[track_caller]
fn by_cookie(snapshot: &Snapshot, cookie: u64) -> &Connection {
    snapshot
        .connection(cookie)
        .unwrap_or_else(|| panic!("no connection with cookie {cookie} in the inventory"))
}

/// A loopback connection inside this process.
struct Pair {
    listener: TcpListener,
    client: TcpStream,
    server: TcpStream,
}

impl Pair {
    fn open(listen: &str, connect: &str) -> Self {
        let listener = TcpListener::bind((listen, 0)).unwrap();
        let client = TcpStream::connect((connect, listener.local_addr().unwrap().port())).unwrap();
        let (server, _) = listener.accept().unwrap();
        Self {
            listener,
            client,
            server,
        }
    }
}

#[test]
fn in_process_connections_come_with_exact_tuples_cookies_owner_and_direction() {
    let Some(_guard) = require_privileges(
        "in_process_connections_come_with_exact_tuples_cookies_owner_and_direction",
    ) else {
        return;
    };
    let mut inventory = inventory();
    // IPv4, IPv6, and IPv4 through a dual-stack listener (its accepted socket is AF_INET6).
    for (listen, connect) in [
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
        ("::", "127.0.0.1"),
    ] {
        let pair = Pair::open(listen, connect);
        let snapshot = take(&mut inventory);
        let me = std::process::id();

        let client = by_cookie(&snapshot, so_cookie(&pair.client));
        assert_eq!(
            client.socket.local,
            normalised(pair.client.local_addr().unwrap()),
            "{listen}"
        );
        assert_eq!(
            client.socket.remote,
            normalised(pair.client.peer_addr().unwrap()),
            "{listen}"
        );
        assert_eq!(
            (client.socket.state, client.socket.kind),
            (TcpState::Established, SockKind::Full)
        );
        assert_eq!(client.socket.netns, inventory.own_netns());
        assert_ne!(client.socket.inode, 0);
        assert_eq!(
            client.owners.iter().map(|p| p.pid).collect::<Vec<_>>(),
            [me]
        );
        assert_eq!(client.direction, Direction::Connect);

        let server = by_cookie(&snapshot, so_cookie(&pair.server));
        assert_eq!(
            server.socket.local,
            normalised(pair.server.local_addr().unwrap()),
            "{listen}"
        );
        assert_eq!(server.socket.remote, client.socket.local);
        assert_eq!(server.socket.state, TcpState::Established);
        assert_eq!(
            server.owners.iter().map(|p| p.pid).collect::<Vec<_>>(),
            [me]
        );
        assert_eq!(server.direction, Direction::Accept, "{listen}");

        let listener_cookie = so_cookie(&pair.listener);
        let listener = snapshot
            .listeners
            .iter()
            .find(|l| l.socket.cookie == listener_cookie)
            .unwrap_or_else(|| panic!("listener {listen} missing"));
        assert_eq!(listener.socket.local, pair.listener.local_addr().unwrap());
        assert_eq!(listener.socket.state, TcpState::Listen);
        assert_eq!(
            listener.owners.iter().map(|p| p.pid).collect::<Vec<_>>(),
            [me]
        );
        assert!(
            snapshot.connection(listener_cookie).is_none(),
            "a listener is not a connection"
        );
    }
}

#[test]
fn close_wait_after_the_peer_closes_then_gone_after_the_close() {
    let Some(_guard) =
        require_privileges("close_wait_after_the_peer_closes_then_gone_after_the_close")
    else {
        return;
    };
    let mut inventory = inventory();
    let Pair {
        listener: _listener,
        client,
        server,
    } = Pair::open("127.0.0.1", "127.0.0.1");
    let (client_cookie, server_cookie) = (so_cookie(&client), so_cookie(&server));
    let (server_local, server_remote) = (server.local_addr().unwrap(), server.peer_addr().unwrap());
    assert!(take(&mut inventory).is_live(client_cookie));

    drop(client);
    // The client's socket lingers in FIN_WAIT1 (a full socket, still live) until the server's
    // ACK turns it into a time-wait socket.
    let snapshot = take_until(
        &mut inventory,
        "CLOSE_WAIT on the server side, the client's socket closed",
        |snapshot| {
            snapshot
                .connection(server_cookie)
                .is_some_and(|c| c.socket.state == TcpState::CloseWait)
                && !snapshot.is_live(client_cookie)
        },
    );
    assert!(
        snapshot.is_live(server_cookie),
        "CLOSE_WAIT is a live connection: the classic server leak"
    );
    // The time-wait socket keeps the cookie: present, but no longer a connection.
    if let Some(closed) = snapshot.connection(client_cookie) {
        assert_eq!(closed.socket.kind, SockKind::TimeWait, "{closed:?}");
        assert!(closed.owners.is_empty());
    }

    drop(server);
    let snapshot = take_until(&mut inventory, "the server socket gone", |snapshot| {
        snapshot.connection(server_cookie).is_none()
    });
    assert!(!snapshot.is_live(server_cookie));
    assert_eq!(
        inventory
            .lookup(server_local, server_remote, server_cookie)
            .unwrap(),
        None
    );
}

#[test]
fn idle_times_grow_while_silent_and_drop_after_a_send() {
    let Some(_guard) = require_privileges("idle_times_grow_while_silent_and_drop_after_a_send")
    else {
        return;
    };
    let mut inventory = inventory();
    let Pair {
        listener: _listener,
        mut client,
        mut server,
    } = Pair::open("127.0.0.1", "127.0.0.1");
    let (client_cookie, server_cookie) = (so_cookie(&client), so_cookie(&server));
    let idle = |snapshot: &Snapshot| {
        let client = &by_cookie(snapshot, client_cookie).socket;
        let server = &by_cookie(snapshot, server_cookie).socket;
        (
            client.last_data_sent_ms.unwrap(),
            server.last_data_recv_ms.unwrap(),
            server.last_ack_recv_ms.unwrap(),
        )
    };
    client.write_all(b"first").unwrap();
    server.read_exact(&mut [0u8; 5]).unwrap();
    let before = idle(&take(&mut inventory));
    // More than a jiffy at any HZ: the idle times must have moved on.
    thread::sleep(Duration::from_millis(300));
    let silent = idle(&take(&mut inventory));
    assert!(
        silent.0 > before.0 && silent.1 > before.1,
        "idle times grow while silent: {before:?} then {silent:?}"
    );

    client.write_all(b"again").unwrap();
    server.read_exact(&mut [0u8; 5]).unwrap();
    server.write_all(b"reply").unwrap();
    client.read_exact(&mut [0u8; 5]).unwrap();
    let after = idle(&take(&mut inventory));
    assert!(
        after.0 < silent.0,
        "a send resets the sender's last_data_sent: {silent:?} then {after:?}"
    );
    assert!(
        after.1 < silent.1,
        "and the receiver's last_data_recv: {silent:?} then {after:?}"
    );
    assert!(
        after.2 < silent.2,
        "and the ACK of the reply reaches the server: {silent:?} then {after:?}"
    );
}

/// The first connect or accept event of `pid`, and the socket's cookie from its events.
fn opened_by(events: &[Event], pid: u32, accept: bool) -> Option<(&Event, u64)> {
    let open = events.iter().find(|event| match &event.body {
        EventBody::Connect(open) => !accept && open.owner.pid == pid,
        EventBody::Accept(open) => accept && open.owner.pid == pid,
        EventBody::State(_) => false,
    })?;
    let cookie = events
        .iter()
        .filter(|event| event.socket == open.socket)
        .map(|event| event.cookie)
        .find(|&c| c != 0)?;
    Some((open, cookie))
}

#[test]
fn a_child_process_socket_has_the_probes_cookie_and_owner() {
    let Some(_guard) = require_privileges("a_child_process_socket_has_the_probes_cookie_and_owner")
    else {
        return;
    };
    let mut server = Puppet::spawn();
    let mut client = Puppet::spawn();
    let (listener, port) = server.listen("127.0.0.1");
    let session = TraceSession::start(TracerOptions {
        ports: vec![port],
        ..Default::default()
    });
    let client_fd = client.connect("127.0.0.1", port);
    server.accept(listener);
    session.expect(WAIT, "the connect and the accept, with cookies", |events| {
        opened_by(events, client.pid(), false).is_some()
            && opened_by(events, server.pid(), true).is_some()
    });
    let events = session.stop().events;
    let mut inventory = inventory();
    let snapshot = take(&mut inventory);

    for (puppet, accept, direction) in [
        (&client, false, Direction::Connect),
        (&server, true, Direction::Accept),
    ] {
        let (event, cookie) = opened_by(&events, puppet.pid(), accept).unwrap();
        let owner = &event.open().unwrap().owner;
        // bpf_get_socket_cookie() and the inet_diag cookie are one number.
        let connection = by_cookie(&snapshot, cookie);
        assert_eq!(connection.direction, direction);
        assert_eq!(connection.socket.state, TcpState::Established);
        let expected_port = if accept {
            connection.socket.local.port()
        } else {
            connection.socket.remote.port()
        };
        assert_eq!(expected_port, port);
        let [process] = &connection.owners[..] else {
            panic!("one owner expected: {connection:?}")
        };
        assert_eq!(
            (process.pid, process.comm.as_str()),
            (puppet.pid(), "sockpuppet")
        );
        // /proc's start (boottime ticks) and the probes' (monotonic ns) name the same process.
        assert!(
            snapshot.same_process(process, owner.pid, owner.process_start_ns),
            "/proc start {} ns vs kernel start {} ns (tick {} ns, suspended {} ns)",
            process.start_time_ns,
            owner.process_start_ns,
            snapshot.clock.tick_ns(),
            snapshot.clock.suspended_ns()
        );
    }

    // The client closes: the accepted side, still held by the server, sits in CLOSE_WAIT.
    let (_, server_cookie) = opened_by(&events, server.pid(), true).unwrap();
    client.close(client_fd);
    let snapshot = take_until(
        &mut inventory,
        "the server's socket in CLOSE_WAIT",
        |snapshot| {
            snapshot
                .connection(server_cookie)
                .is_some_and(|c| c.socket.state == TcpState::CloseWait)
        },
    );
    assert_eq!(
        by_cookie(&snapshot, server_cookie).owners[0].pid,
        server.pid()
    );
}

/// A python process in a network namespace of its own, holding one loopback connection.
struct NamespacedProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    listen_port: u16,
    client_port: u16,
}

const NAMESPACED_PYTHON: &str = r#"
import socket, sys
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
client = socket.create_connection(listener.getsockname())
server, _ = listener.accept()
print(listener.getsockname()[1], client.getsockname()[1], flush=True)
sys.stdin.readline()
"#;

/// The ephemeral port range set inside the namespace: disjoint from the host's default
/// (32768-60999), so a direction computed with the host's range would come out unknown.
const NAMESPACE_PORTS: std::ops::RangeInclusive<u16> = 20000..=20100;

impl NamespacedProcess {
    /// `unshare --net`, loopback up, its own port range, then python (each step exec()s: one
    /// pid throughout).
    fn spawn() -> Self {
        let setup = format!(
            "ip link set lo up && echo '{} {}' > /proc/sys/net/ipv4/ip_local_port_range && exec python3 -c \"$0\"",
            NAMESPACE_PORTS.start(),
            NAMESPACE_PORTS.end()
        );
        let mut child = Command::new("unshare")
            .args(["--net", "sh", "-c", &setup, NAMESPACED_PYTHON])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare (util-linux), ip (iproute2) and python3 are needed: cargo xtask setup --test-deps");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ports: Vec<u16> = line
            .split_whitespace()
            .filter_map(|word| word.parse().ok())
            .collect();
        let [listen_port, client_port] = ports[..] else {
            let _ = child.kill();
            panic!(
                "the namespaced process did not start: {line:?}, {:?}",
                child.wait()
            );
        };
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            listen_port,
            client_port,
        }
    }

    fn netns(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/{}/ns/net", self.child.id()))
            .unwrap()
            .ino()
    }

    /// Lets it exit (closing its sockets) and reaps it.
    fn finish(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for NamespacedProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_socket_in_another_network_namespace_is_found_and_attributed() {
    let Some(_guard) =
        require_privileges("a_socket_in_another_network_namespace_is_found_and_attributed")
    else {
        return;
    };
    let mut inventory = inventory();
    let before_spawn = boottime_ns();
    let mut process = NamespacedProcess::spawn();
    let after_spawn = boottime_ns();
    let netns = process.netns();
    assert_ne!(
        netns,
        inventory.own_netns(),
        "unshare --net made no namespace"
    );

    let snapshot = take(&mut inventory);
    assert!(
        snapshot.namespaces.contains(&netns),
        "namespace {netns} not dumped: {:?}",
        snapshot.namespace_failures
    );
    let local: SocketAddr = ([127, 0, 0, 1], process.client_port).into();
    let remote: SocketAddr = ([127, 0, 0, 1], process.listen_port).into();
    let client = snapshot
        .connections
        .iter()
        .find(|c| c.socket.netns == netns && c.socket.local == local && c.socket.remote == remote)
        .unwrap_or_else(|| panic!("{local} -> {remote} not found in namespace {netns}"));
    // Connect by the namespace's own port range, read inside it.
    assert!(
        NAMESPACE_PORTS.contains(&process.client_port),
        "port {}",
        process.client_port
    );
    assert_eq!(
        (client.socket.state, client.direction),
        (TcpState::Established, Direction::Connect)
    );
    let [owner] = &client.owners[..] else {
        panic!("one owner expected: {client:?}")
    };
    assert_eq!(owner.pid, process.child.id());
    // /proc's start time is boottime at tick granularity, so it is at most a tick before the
    // spawn began and no later than the process answering.
    let tick = snapshot.clock.tick_ns();
    assert!(
        (before_spawn.saturating_sub(tick)..=after_spawn).contains(&owner.start_time_ns),
        "start {} not within the spawn [{before_spawn}, {after_spawn}]",
        owner.start_time_ns
    );
    let server = snapshot
        .connections
        .iter()
        .find(|c| c.socket.netns == netns && c.socket.local == remote && c.socket.remote == local)
        .expect("the accepted side");
    assert_eq!(server.direction, Direction::Accept);
    // The same tuple on the host's loopback is another socket: only the namespace's answers.
    let found = inventory
        .lookup(local, remote, client.socket.cookie)
        .unwrap()
        .expect("lookup in the namespace");
    assert_eq!((found.netns, found.cookie), (netns, client.socket.cookie));

    process.finish();
    let snapshot = take(&mut inventory);
    assert!(
        !snapshot.namespaces.contains(&netns),
        "a namespace gone from /proc is dropped"
    );
    assert!(!snapshot.is_live(client.socket.cookie));
}

const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;

/// Drops `capability` from the calling thread's effective set (capabilities are per thread;
/// threads it spawns inherit them).
fn drop_capability_on_this_thread(capability: u32) {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: a v3 header and the two data words it describes.
    let got = unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) };
    assert_eq!(got, 0, "capget: {}", std::io::Error::last_os_error());
    data[(capability / 32) as usize].effective &= !(1 << (capability % 32));
    // SAFETY: as above.
    let set = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
    assert_eq!(set, 0, "capset: {}", std::io::Error::last_os_error());
}

#[test]
fn without_cap_sys_admin_other_namespaces_are_reported_and_our_own_still_dumped() {
    let Some(_guard) = require_privileges(
        "without_cap_sys_admin_other_namespaces_are_reported_and_our_own_still_dumped",
    ) else {
        return;
    };
    let process = NamespacedProcess::spawn();
    let netns = process.netns();
    let pair = Pair::open("127.0.0.1", "127.0.0.1");
    let client_cookie = so_cookie(&pair.client);
    let snapshot = thread::spawn(|| {
        drop_capability_on_this_thread(CAP_SYS_ADMIN);
        take(&mut inventory())
    })
    .join()
    .unwrap();
    assert!(
        snapshot.is_live(client_cookie),
        "our own namespace is dumped"
    );
    assert!(!snapshot.namespaces.contains(&netns));
    let failure = snapshot
        .namespace_failures
        .iter()
        .find(|failure| failure.netns == netns)
        .unwrap_or_else(|| panic!("no failure reported for namespace {netns}"));
    assert!(
        matches!(*failure.error, InventoryError::EnterNamespace { .. }),
        "{}",
        failure.error
    );
    assert!(
        failure.error.to_string().contains("CAP_SYS_ADMIN"),
        "{}",
        failure.error
    );
}

#[test]
fn a_process_we_may_not_inspect_is_counted_and_skipped() {
    let Some(_guard) = require_privileges("a_process_we_may_not_inspect_is_counted_and_skipped")
    else {
        return;
    };
    // Another user's process with a listening socket: without CAP_SYS_PTRACE its fds are
    // not ours to read.
    let mut nobody = Command::new("/usr/bin/python3")
        .args(["-c", "import socket, sys\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen()\nprint(s.getsockname()[1], flush=True)\nsys.stdin.readline()"])
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (Debian's python3), run as nobody");
    let mut line = String::new();
    BufReader::new(nobody.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("python as nobody: {line:?}"));

    let (with, without) = thread::spawn(|| {
        let mut inventory = inventory();
        let with = take(&mut inventory);
        drop_capability_on_this_thread(CAP_SYS_PTRACE);
        (with, take(&mut inventory))
    })
    .join()
    .unwrap();
    let _ = nobody.kill();
    let _ = nobody.wait();

    let owners_of = |snapshot: &Snapshot| {
        let listener = snapshot
            .listeners
            .iter()
            .find(|l| l.socket.local.port() == port)
            .expect("nobody's listener");
        listener.owners.iter().map(|p| p.pid).collect::<Vec<_>>()
    };
    assert_eq!(owners_of(&with), [nobody.id()]);
    assert_eq!(
        owners_of(&without),
        Vec::<u32>::new(),
        "its owner is unknown, not an error"
    );
    assert!(
        without.owner_scan.processes_denied > with.owner_scan.processes_denied,
        "denials are counted: {:?} then {:?}",
        with.owner_scan,
        without.owner_scan
    );
}

#[test]
fn hundreds_of_connections_come_back_from_a_multi_part_dump() {
    let Some(_guard) =
        require_privileges("hundreds_of_connections_come_back_from_a_multi_part_dump")
    else {
        return;
    };
    const CONNECTIONS: usize = 500;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let mut sockets = Vec::with_capacity(2 * CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let client = TcpStream::connect(address).unwrap();
        sockets.push(listener.accept().unwrap().0);
        sockets.push(client);
    }
    let mut inventory = inventory();
    let snapshot = take(&mut inventory);
    let me = std::process::id();
    for socket in &sockets {
        let connection = by_cookie(&snapshot, so_cookie(socket));
        assert_eq!(connection.socket.local, socket.local_addr().unwrap());
        assert_eq!(connection.socket.state, TcpState::Established);
        assert_eq!(
            connection.owners.iter().map(|p| p.pid).collect::<Vec<_>>(),
            [me]
        );
    }
    assert_eq!(snapshot.undecodable, 0);

    // Without the owner walk: the same connections, directions and idle times, no owners.
    let bare = inventory.take_without_owners().unwrap();
    for socket in &sockets {
        let connection = by_cookie(&bare, so_cookie(socket));
        assert!(connection.owners.is_empty());
        assert_eq!(
            connection.direction,
            by_cookie(&snapshot, so_cookie(socket)).direction
        );
        assert!(connection.socket.last_data_sent_ms.is_some());
    }
    assert_eq!(bare.owner_scan, OwnerScanStats::default());
}

/// The figures for the report: `cargo test -p leaktrace-tests --test inventory -- --ignored
/// --nocapture`. 10,000 connections (20,000 sockets: the clients here, the accepted side in a
/// python child) and 1,000 idle processes; `LEAKTRACE_BENCH_CONNECTIONS` and
/// `LEAKTRACE_BENCH_PROCESSES` change the numbers.
#[test]
#[ignore = "a benchmark: run with --ignored --nocapture"]
fn benchmark_inventory_of_twenty_thousand_sockets() {
    let Some(_guard) = require_privileges("benchmark_inventory_of_twenty_thousand_sockets") else {
        return;
    };
    let count = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let connections = count("LEAKTRACE_BENCH_CONNECTIONS", 10_000);
    let processes = count("LEAKTRACE_BENCH_PROCESSES", 1_000);

    let mut server = Command::new("python3")
        .args(["-c", BENCH_SERVER, &connections.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut stdout = BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let port: u16 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("bench server: {line:?}"));
    let clients: Vec<TcpStream> = (0..connections)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim(),
        "accepted",
        "the bench server accepted them all"
    );
    let mut sleepers: Vec<Child> = (0..processes)
        .map(|_| Command::new("sleep").arg("600").spawn().expect("sleep"))
        .collect();

    let mut inventory = inventory();
    let timed = |what: &str, run: &mut dyn FnMut() -> usize| {
        run();
        let runs = 5;
        let start = Instant::now();
        let mut found = 0;
        for _ in 0..runs {
            found = run();
        }
        eprintln!(
            "{what}: {:.2} ms per run ({found})",
            start.elapsed().as_secs_f64() * 1e3 / runs as f64
        );
    };
    timed("sock_diag dump, all namespaces", &mut || {
        inventory.dump_tcp().unwrap().len()
    });
    timed("/proc owner scan", &mut || {
        SocketOwners::scan().unwrap().len()
    });
    timed("take (dump + owner scan + join)", &mut || {
        take(&mut inventory).connections.len()
    });
    timed("take_without_owners (dump + join)", &mut || {
        inventory.take_without_owners().unwrap().connections.len()
    });

    let snapshot = take(&mut inventory);
    let mine = snapshot
        .connections
        .iter()
        .filter(|c| {
            c.socket.state == TcpState::Established
                && (c.socket.local.port() == port || c.socket.remote.port() == port)
        })
        .filter(|c| !c.owners.is_empty())
        .count();
    eprintln!(
        "sockets in the inventory: {} ({} of this benchmark, owned); processes scanned: {}",
        snapshot.connections.len() + snapshot.listeners.len(),
        mine,
        snapshot.owner_scan.processes
    );
    assert_eq!(mine, 2 * connections);
    for client in &clients {
        assert!(snapshot.is_live(so_cookie(client)));
    }
    for sleeper in &mut sleepers {
        let _ = sleeper.kill();
        let _ = sleeper.wait();
    }
    drop(server.stdin.take());
    let _ = server.wait();
}

/// Accepts argv[1] connections, says so, and holds them until stdin closes.
const BENCH_SERVER: &str = r#"
import socket, sys
count = int(sys.argv[1])
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(4096)
print(listener.getsockname()[1], flush=True)
held = [listener.accept()[0] for _ in range(count)]
print("accepted", flush=True)
sys.stdin.readline()
"#;
