//! One connection's protocol, both halves in one place: the client sends a request and reads the
//! response, the server reads the request and answers; then the client closes (FIN, or RST with
//! SO_LINGER 0) and the server closes once it reads the end.
use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use socket2::SockRef;

#[derive(Clone, Copy, Debug)]
pub struct Exchange {
    pub request_bytes: usize,
    pub response_bytes: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseMode {
    /// The client closes first (FIN); the server closes after reading the end of the stream.
    Normal,
    /// The client aborts with SO_LINGER 0 (RST); both sockets go straight to CLOSE.
    Rst,
}

/// The client's half: connect, request, response, close. A refused connect is an error.
pub fn client_connection(
    target: SocketAddr,
    exchange: Exchange,
    close: CloseMode,
) -> io::Result<()> {
    let mut stream = TcpStream::connect(target)?;
    if close == CloseMode::Rst {
        SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
    }
    write_bytes(&mut stream, exchange.request_bytes)?;
    read_bytes(&mut stream, exchange.response_bytes)?;
    drop(stream);
    Ok(())
}

/// The server's half on an accepted stream: request, response, then wait for the client to
/// end the stream (EOF, or a reset in RST mode), and close.
pub fn serve_connection(mut stream: TcpStream, exchange: Exchange) -> io::Result<()> {
    read_bytes(&mut stream, exchange.request_bytes)?;
    write_bytes(&mut stream, exchange.response_bytes)?;
    let mut rest = [0u8; 256];
    loop {
        match stream.read(&mut rest) {
            Ok(0) => return Ok(()),
            Ok(_) => continue,
            // The client's RST: the expected end in RST mode.
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
    }
}

fn write_bytes(stream: &mut TcpStream, mut count: usize) -> io::Result<()> {
    let chunk = [b'x'; 4096];
    while count > 0 {
        let n = count.min(chunk.len());
        stream.write_all(&chunk[..n])?;
        count -= n;
    }
    Ok(())
}

fn read_bytes(stream: &mut TcpStream, mut count: usize) -> io::Result<()> {
    let mut buffer = [0u8; 4096];
    while count > 0 {
        let n = count.min(buffer.len());
        stream.read_exact(&mut buffer[..n])?;
        count -= n;
    }
    Ok(())
}
