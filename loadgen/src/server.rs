//! The server side: one listener per port (backlog 4096, not std's 128: a full accept queue
//! drops the SYN and costs the client a 1 s retry), a few blocking threads per listener, each
//! serving one connection at a time. Stopping shuts the listeners down, which wakes the threads
//! blocked in accept().
use std::{
    net::{IpAddr, SocketAddr, TcpListener},
    os::fd::AsRawFd,
    sync::Arc,
    thread,
};

use anyhow::{Context, Result, bail};
use socket2::{Domain, Socket, Type};

use crate::exchange::{Exchange, serve_connection};

/// Backlog of each listener (the kernel caps it at `net.core.somaxconn`, 4096 by default).
pub const LISTEN_BACKLOG: i32 = 4096;

pub struct Server {
    listeners: Vec<Arc<TcpListener>>,
    ports: Vec<u16>,
    address: IpAddr,
    threads: Vec<thread::JoinHandle<ServerStats>>,
}

#[derive(Debug, Default)]
pub struct ServerStats {
    pub connections: u64,
    pub errors: u64,
    pub last_error: Option<String>,
}

impl Server {
    /// Listens on `ports` ephemeral ports of `address` and serves them with `threads` threads
    /// in all (at least one per port).
    pub fn start(
        address: IpAddr,
        ports: usize,
        threads: usize,
        exchange: Exchange,
    ) -> Result<Self> {
        if ports == 0 {
            bail!("--ports must be at least 1");
        }
        let listeners: Vec<Arc<TcpListener>> = (0..ports)
            .map(|_| listen(SocketAddr::new(address, 0)).map(Arc::new))
            .collect::<Result<_>>()?;
        let ports = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<Result<Vec<_>, _>>()?;
        let per_port = threads.div_ceil(listeners.len()).max(1);
        let threads = listeners
            .iter()
            .flat_map(|listener| std::iter::repeat_n(listener, per_port))
            .map(|listener| {
                let listener = Arc::clone(listener);
                thread::spawn(move || accept_loop(&listener, exchange))
            })
            .collect();
        Ok(Self {
            listeners,
            ports,
            address,
            threads,
        })
    }

    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.ports
            .iter()
            .map(|&port| SocketAddr::new(self.address, port))
            .collect()
    }

    /// Stops accepting, lets every thread finish the connection it serves, and sums up.
    pub fn stop(self) -> ServerStats {
        for listener in &self.listeners {
            // SAFETY: shutdown(2) on a listening socket we own; it wakes blocked accept()s.
            unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
        }
        let mut total = ServerStats::default();
        for thread in self.threads {
            let stats = thread.join().unwrap_or_else(|_| ServerStats {
                errors: 1,
                last_error: Some("a server thread panicked".into()),
                ..Default::default()
            });
            total.connections += stats.connections;
            total.errors += stats.errors;
            total.last_error = total.last_error.or(stats.last_error);
        }
        total
    }
}

/// A listening socket with [`LISTEN_BACKLOG`].
pub fn listen(address: SocketAddr) -> Result<TcpListener> {
    let socket =
        Socket::new(Domain::for_address(address), Type::STREAM, None).context("socket()")?;
    socket.set_reuse_address(true).context("SO_REUSEADDR")?;
    socket
        .bind(&address.into())
        .with_context(|| format!("bind {address}"))?;
    socket
        .listen(LISTEN_BACKLOG)
        .with_context(|| format!("listen on {address}"))?;
    Ok(socket.into())
}

fn accept_loop(listener: &TcpListener, exchange: Exchange) -> ServerStats {
    let mut stats = ServerStats::default();
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            // EINVAL once stop() shut the listener down.
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => return stats,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => {
                // Out of file descriptors, or a connection aborted in the queue: count it, give
                // the system a moment, keep serving.
                stats.errors += 1;
                stats.last_error = Some(format!("server: accept: {err}"));
                thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
        };
        match serve_connection(stream, exchange) {
            Ok(()) => stats.connections += 1,
            Err(err) => {
                stats.errors += 1;
                stats.last_error = Some(format!("server: {err}"));
            }
        }
    }
}
