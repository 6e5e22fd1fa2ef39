//! dialer: a Rust program whose connections the symbolizer tests name. One command per line on
//! stdin, one answer per line on stdout:
//!
//!   connect PORT   -> "ok" | "err MESSAGE"   (opens a TCP connection to 127.0.0.1:PORT and keeps it)
//!
//! End of stdin ends the program. The connect path is
//! main -> dialer::pool::Pool::open_connection -> dialer::pool::connect_to::<..> -> std's connect;
//! built by the tests with frame pointers and debug information.
use std::io::{BufRead, Write};

mod pool {
    use std::net::{TcpStream, ToSocketAddrs};

    /// Connections opened and never closed.
    pub struct Pool {
        pub connections: Vec<TcpStream>,
    }

    impl Pool {
        #[inline(never)]
        pub fn open_connection(&mut self, port: u16) -> std::io::Result<()> {
            let stream = connect_to(("127.0.0.1", port))?;
            self.connections.push(stream);
            Ok(())
        }
    }

    #[inline(never)]
    pub fn connect_to<A: ToSocketAddrs>(address: A) -> std::io::Result<TcpStream> {
        TcpStream::connect(address)
    }
}

fn main() {
    let mut pool = pool::Pool {
        connections: Vec::new(),
    };
    let stdout = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let answer = match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["connect", port] => match port.parse() {
                Ok(port) => match pool.open_connection(port) {
                    Ok(()) => "ok".to_string(),
                    Err(err) => format!("err {err}"),
                },
                Err(err) => format!("err bad port: {err}"),
            },
            _ => format!("err unknown command {line:?}"),
        };
        let mut out = stdout.lock();
        let _ = writeln!(out, "{answer}");
        let _ = out.flush();
    }
}
