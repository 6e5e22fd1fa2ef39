//! TCP sockets as the kernel's sock_diag netlink interface (inet_diag) reports them: one
//! `SOCK_DIAG_BY_FAMILY` dump per address family, in the states asked for ([`DumpStates`]),
//! with `INET_DIAG_INFO` (`struct tcp_info`) for the idle times. A netlink socket answers for
//! the network namespace it was created in, whichever thread uses it later (see
//! [`super::netns`]).
//!
//! The messages are rust-netlink's: `netlink-packet-sock-diag` builds the `inet_diag_req_v2`
//! and parses each `inet_diag_msg` header, `netlink-packet-core` frames the messages and walks
//! the attributes, `netlink-sys` is the socket. What the crates leave to the caller is here:
//! reading a multi-part dump batch by batch (the kernel fills one buffer of at most 32 KiB
//! per `recv`, about a hundred sockets) until `NLMSG_DONE`, skipping replies to an earlier
//! request, and counting a message that does not decode instead of failing the whole dump.
//! `tcp_info` is read in place (the crate's `rich_nlas` struct is all-or-nothing across
//! kernel versions), only its idle fields, at libc's offsets of `struct tcp_info`.
//!
//! The cookie is `sock_gen_cookie()`, the same number as `getsockopt(SO_COOKIE)` and
//! `bpf_get_socket_cookie()` (kernels before 4.1 gave the socket's address instead). A
//! time-wait socket inherits the cookie of the socket it replaced, whose life as a connection
//! is over ([`SockKind::TimeWait`]).
use std::{
    io,
    mem::offset_of,
    net::{IpAddr, SocketAddr},
};

use netlink_packet_core::{
    DecodeError, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NetlinkBuffer,
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator, Parseable,
};
use netlink_packet_sock_diag::{
    SOCK_DIAG_BY_FAMILY, SockDiagMessage,
    constants::{AF_INET, AF_INET6, INET_DIAG_INFO, IPPROTO_TCP, TCP_SYN_RECV},
    inet::{
        ExtensionFlags, InetRequest, InetResponseBuffer, InetResponseHeader, SocketId, StateFlags,
        Timer,
    },
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

use super::InventoryError;
use crate::{event::normalise_addr, tcp::TcpState};

/// One TCP socket in the kernel's tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    /// The inode of the network namespace the socket lives in (`/proc/PID/ns/net`).
    pub netns: u64,
    /// The socket cookie: the key the kernel events carry.
    pub cookie: u64,
    /// The socket's inode (`socket:[INODE]` in `/proc/PID/fd`); 0 when no file refers to it
    /// (time-wait and request sockets, sockets already closed by their owner).
    pub inode: u64,
    pub uid: u32,
    pub state: TcpState,
    pub kind: SockKind,
    /// Normalised: an IPv4 peer of a dual-stack socket reads as IPv4.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Milliseconds since the last data sent, at the time of the dump (`tcpi_last_data_sent`);
    /// `None` where the kernel gives no `tcp_info` (time-wait and request sockets).
    pub last_data_sent_ms: Option<u32>,
    /// Milliseconds since the last data received (`tcpi_last_data_recv`).
    pub last_data_recv_ms: Option<u32>,
    /// Milliseconds since the last ACK received (`tcpi_last_ack_recv`).
    pub last_ack_recv_ms: Option<u32>,
}

/// What kind of kernel object answered for the tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SockKind {
    /// A full socket: a live connection (or one its owner closed that is still shutting down).
    Full,
    /// A time-wait mini socket (`TIME_WAIT`, or `FIN_WAIT2` after the owner closed): the
    /// connection's socket is gone; the kernel keeps its tuple and cookie for the timeout.
    TimeWait,
    /// A request socket: a handshake in a listener's queue, not yet a socket of its own.
    Request,
}

/// Which TCP states a dump asks the kernel for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DumpStates {
    /// Every state but TIME_WAIT. A time-wait socket is a connection already over for every
    /// use of the inventory (nothing to seed, nothing live to sweep, no `tcp_info`), and under
    /// churn they outnumber the live ones (a connection a second leaves 60 of them): the
    /// kernel skips them instead of filling, copying and us decoding each. Time-wait sockets
    /// in their FIN_WAIT2 phase still come (the kernel filters them by that state).
    #[default]
    WithoutTimeWait,
    /// Every state, TIME_WAIT included.
    All,
}

impl DumpStates {
    fn flags(self) -> StateFlags {
        match self {
            Self::All => StateFlags::all(),
            Self::WithoutTimeWait => StateFlags::all().difference(StateFlags::TIME_WAIT),
        }
    }
}

/// A netlink socket for sock_diag in one network namespace, with its receive buffer.
pub struct SockDiag {
    socket: Socket,
    netns: u64,
    seq: u32,
    buffer: Vec<u8>,
    undecodable: u64,
}

/// Big enough for any batch: the kernel caps a dump's buffers at 32 KiB.
const RECEIVE_BUFFER: usize = 64 * 1024;

/// The two requests a [`SockDiag`] sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Request {
    /// Every socket of a family, in several batches.
    Dump,
    /// The one socket a tuple and cookie name.
    Lookup,
}

impl Request {
    fn name(self) -> &'static str {
        match self {
            Self::Dump => "TCP dump",
            Self::Lookup => "TCP socket lookup",
        }
    }
}

impl SockDiag {
    /// A sock_diag socket in the calling thread's current network namespace, whose inode the
    /// caller gives as `netns` (it labels the sockets and the errors).
    pub fn open(netns: u64) -> Result<Self, InventoryError> {
        let open_error = |source| InventoryError::OpenSocket { netns, source };
        let socket = Socket::new(NETLINK_SOCK_DIAG).map_err(open_error)?;
        // Only the kernel (port 0) may answer.
        socket
            .connect(&NetlinkAddr::new(0, 0))
            .map_err(open_error)?;
        Ok(Self {
            socket,
            netns,
            seq: 0,
            buffer: vec![0; RECEIVE_BUFFER],
            undecodable: 0,
        })
    }

    pub fn netns(&self) -> u64 {
        self.netns
    }

    /// Replies that did not decode and were skipped, since this socket was opened.
    pub fn undecodable(&self) -> u64 {
        self.undecodable
    }

    /// Every TCP socket of this namespace in `states`, IPv4 then IPv6.
    pub fn dump_tcp(&mut self, states: DumpStates) -> Result<Vec<DiagSocket>, InventoryError> {
        let mut sockets = Vec::new();
        self.dump_tcp_into(states, &mut sockets)?;
        Ok(sockets)
    }

    /// [`dump_tcp`](Self::dump_tcp), appending to `out`.
    pub fn dump_tcp_into(
        &mut self,
        states: DumpStates,
        out: &mut Vec<DiagSocket>,
    ) -> Result<(), InventoryError> {
        let states = states.flags();
        self.exchange(
            Request::Dump,
            AF_INET,
            SocketId::new_v4(),
            states.clone(),
            out,
        )?;
        match self.exchange(Request::Dump, AF_INET6, SocketId::new_v6(), states, out) {
            // A kernel without IPv6 has no AF_INET6 handler: no IPv6 sockets.
            Err(InventoryError::Refused { source, .. })
                if source.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// The socket with this exact tuple and cookie, if it still exists in this namespace. A
    /// dump walks the hash table in batches and can miss a socket that moved while it ran;
    /// this asks for the one socket. A [`SockKind::TimeWait`] answer means the connection is
    /// over.
    pub fn lookup(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        cookie: u64,
    ) -> Result<Option<DiagSocket>, InventoryError> {
        let (family, source_address, destination_address) = match (local.ip(), remote.ip()) {
            // An IPv4 request also finds dual-stack sockets with IPv4 peers.
            (IpAddr::V4(l), IpAddr::V4(r)) => (AF_INET, IpAddr::V4(l), IpAddr::V4(r)),
            (l, r) => (AF_INET6, IpAddr::V6(to_v6(l)), IpAddr::V6(to_v6(r))),
        };
        let id = SocketId {
            source_port: local.port(),
            destination_port: remote.port(),
            source_address,
            destination_address,
            interface_id: 0,
            cookie: cookie_to_diag(cookie),
        };
        let mut found = Vec::with_capacity(1);
        match self.exchange(Request::Lookup, family, id, StateFlags::all(), &mut found) {
            Ok(()) => Ok(found.pop()),
            // ENOENT: no socket with that tuple; ESTALE: the tuple is another socket's now.
            Err(InventoryError::Refused { source, .. })
                if matches!(source.raw_os_error(), Some(libc::ENOENT | libc::ESTALE)) =>
            {
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    /// Sends one request and reads its replies into `out`.
    fn exchange(
        &mut self,
        request: Request,
        family: u8,
        id: SocketId,
        states: StateFlags,
        out: &mut Vec<DiagSocket>,
    ) -> Result<(), InventoryError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let dump = request == Request::Dump;
        let what = request.name();
        let netns = self.netns;
        let netlink_error = |source| InventoryError::Netlink {
            netns,
            request: what,
            source,
        };
        let bytes = encode_request(family, id, states, dump, seq);
        self.socket.send(&bytes, 0).map_err(netlink_error)?;
        loop {
            let len = self.receive(0).map_err(netlink_error)?;
            let mut batch = Batch {
                out,
                undecodable: 0,
            };
            let outcome = read_replies(&self.buffer[..len], seq, dump, self.netns, &mut batch);
            self.undecodable += batch.undecodable;
            match outcome {
                Ok(Progress::More) => continue,
                Ok(Progress::Done) => return Ok(()),
                Err(ReplyError::Refused(source)) => {
                    return Err(InventoryError::Refused {
                        netns,
                        request: what,
                        source,
                    });
                }
                Err(ReplyError::Malformed(reason)) => {
                    self.drain(seq);
                    return Err(InventoryError::Decode {
                        netns,
                        request: what,
                        reason,
                    });
                }
            }
        }
    }

    /// After a batch that could not be framed, reads and drops the rest of the request's
    /// replies: the kernel refuses a new dump (EBUSY) while one is unfinished.
    fn drain(&mut self, seq: u32) {
        loop {
            let Ok(len) = self.receive(libc::MSG_DONTWAIT) else {
                return;
            };
            let mut sink = Vec::new();
            let mut batch = Batch {
                out: &mut sink,
                undecodable: 0,
            };
            if !matches!(
                read_replies(&self.buffer[..len], seq, true, self.netns, &mut batch),
                Ok(Progress::More)
            ) {
                return;
            }
        }
    }

    fn receive(&mut self, flags: libc::c_int) -> io::Result<usize> {
        loop {
            match self.socket.recv(&mut &mut self.buffer[..], flags) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
}

/// The error a reply's negative errno stands for. Any i32 is taken, i32::MIN included (its
/// absolute value does not fit: it reads as i32::MAX, no errno).
fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(i32::try_from(code.unsigned_abs()).unwrap_or(i32::MAX))
}

/// One batch of replies to dump request `seq`, read as [`SockDiag`] reads the kernel's: the
/// sockets it holds, how many replies did not decode, and whether it ended the dump. For tests
/// and fuzzing: every byte of a reply is checked before it is used.
pub fn parse_dump_batch(bytes: &[u8], seq: u32, netns: u64) -> Result<(Vec<DiagSocket>, u64, bool), String> {
    let mut out = Vec::new();
    let mut batch = Batch { out: &mut out, undecodable: 0 };
    let done = match read_replies(bytes, seq, true, netns, &mut batch) {
        Ok(progress) => progress == Progress::Done,
        Err(ReplyError::Refused(source)) => return Err(format!("the kernel refused the dump: {source}")),
        Err(ReplyError::Malformed(reason)) => return Err(format!("a reply is malformed: {reason}")),
    };
    let undecodable = batch.undecodable;
    Ok((out, undecodable, done))
}

/// An `inet_diag_req_v2` for TCP sockets in `states`, asking for `tcp_info`: a dump of the
/// family, or the one socket `id` names.
fn encode_request(family: u8, id: SocketId, states: StateFlags, dump: bool, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = if dump {
        NLM_F_REQUEST | NLM_F_DUMP
    } else {
        NLM_F_REQUEST
    };
    header.sequence_number = seq;
    let request = InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::INFO,
        states,
        socket_id: id,
    };
    let mut message = NetlinkMessage::new(header, SockDiagMessage::InetRequest(request).into());
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    bytes
}

/// Where a request's replies stand after one batch.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    More,
    Done,
}

#[derive(Debug)]
enum ReplyError {
    /// The kernel answered with an error.
    Refused(io::Error),
    /// The batch could not be split into netlink messages.
    Malformed(String),
}

/// Where one batch's sockets go, and how many of its messages did not decode.
struct Batch<'a> {
    out: &'a mut Vec<DiagSocket>,
    undecodable: u64,
}

/// Reads one batch (one `recv`) of replies to request `seq`. A dump ends with `NLMSG_DONE`;
/// a lookup with its one answer. Replies to other requests are skipped.
fn read_replies(
    bytes: &[u8],
    seq: u32,
    dump: bool,
    netns: u64,
    batch: &mut Batch,
) -> Result<Progress, ReplyError> {
    let mut offset = 0;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        let framed = NetlinkBuffer::new_checked(rest)
            .map_err(|err| ReplyError::Malformed(err.to_string()))?;
        let length = framed.length() as usize;
        offset += length.next_multiple_of(4);
        if framed.sequence_number() != seq {
            continue;
        }
        match framed.message_type() {
            SOCK_DIAG_BY_FAMILY => match decode_socket(framed.payload(), netns) {
                Ok(socket) => {
                    batch.out.push(socket);
                    if !dump {
                        return Ok(Progress::Done);
                    }
                }
                Err(_) => batch.undecodable += 1,
            },
            NLMSG_DONE | NLMSG_ERROR => {
                let message = NetlinkMessage::<SockDiagMessage>::deserialize(&rest[..length])
                    .map_err(|err| ReplyError::Malformed(err.to_string()))?;
                match message.payload {
                    NetlinkPayload::Done(done) if done.code != 0 => {
                        return Err(ReplyError::Refused(errno(done.code)));
                    }
                    NetlinkPayload::Error(error) if error.code.is_some() => {
                        return Err(ReplyError::Refused(errno(error.raw_code())));
                    }
                    NetlinkPayload::Done(_) => return Ok(Progress::Done),
                    _ => {} // an ACK
                }
            }
            NLMSG_NOOP => {}
            _ => batch.undecodable += 1,
        }
    }
    Ok(Progress::More)
}

/// One `inet_diag_msg` and its attributes as a [`DiagSocket`]. The crate's header parser and
/// attribute iterator read it in place: a dump decodes without allocating per socket (its
/// `InetResponse` would box each reply and copy each attribute).
fn decode_socket(payload: &[u8], netns: u64) -> Result<DiagSocket, DecodeError> {
    let header = InetResponseHeader::parse(payload)?;
    let attributes = payload
        .get(size_of::<InetResponseBuffer>()..)
        .unwrap_or_default();
    let mut idle = None;
    for attribute in NlasIterator::new(attributes) {
        let attribute = attribute?;
        if attribute.kind() == INET_DIAG_INFO {
            idle = Some(IdleTimes::from_tcp_info(attribute.value()));
        }
    }
    let id = &header.socket_id;
    // The kernel marks time-wait sockets with timer 3; request sockets report SYN_RECV and,
    // unlike a full socket (TCP Fast Open) in SYN_RECV, no tcp_info.
    let kind = if header.timer == Some(Timer::TimeWait) {
        SockKind::TimeWait
    } else if header.state == TCP_SYN_RECV && idle.is_none() {
        SockKind::Request
    } else {
        SockKind::Full
    };
    let idle = idle.unwrap_or_default();
    Ok(DiagSocket {
        netns,
        cookie: cookie_from_diag(id.cookie),
        inode: u64::from(header.inode),
        uid: header.uid,
        state: TcpState::from_kernel(u32::from(header.state)),
        kind,
        local: normalise(id.source_address, id.source_port),
        remote: normalise(id.destination_address, id.destination_port),
        last_data_sent_ms: idle.last_data_sent_ms,
        last_data_recv_ms: idle.last_data_recv_ms,
        last_ack_recv_ms: idle.last_ack_recv_ms,
    })
}

/// The idle fields of a `struct tcp_info`, each where the kernel's copy is long enough.
#[derive(Default)]
struct IdleTimes {
    last_data_sent_ms: Option<u32>,
    last_data_recv_ms: Option<u32>,
    last_ack_recv_ms: Option<u32>,
}

impl IdleTimes {
    fn from_tcp_info(info: &[u8]) -> Self {
        let field = |offset: usize| {
            info.get(offset..offset + 4)
                .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
        };
        Self {
            last_data_sent_ms: field(offset_of!(libc::tcp_info, tcpi_last_data_sent)),
            last_data_recv_ms: field(offset_of!(libc::tcp_info, tcpi_last_data_recv)),
            last_ack_recv_ms: field(offset_of!(libc::tcp_info, tcpi_last_ack_recv)),
        }
    }
}

/// The crate decodes addresses by family; [`normalise_addr`] then folds v4-mapped IPv6 into
/// IPv4, exactly as for the kernel events.
fn normalise(ip: IpAddr, port: u16) -> SocketAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mut bytes = [0u8; 16];
            bytes[..4].copy_from_slice(&v4.octets());
            normalise_addr(leaktrace_common::AF_INET, &bytes, port)
        }
        IpAddr::V6(v6) => normalise_addr(leaktrace_common::AF_INET6, &v6.octets(), port),
    }
}

fn to_v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// `idiag_cookie` is `__u32[2]`, low word first, each in host order (`sock_diag_save_cookie`).
fn cookie_from_diag(raw: [u8; 8]) -> u64 {
    let low = u32::from_ne_bytes(raw[..4].try_into().unwrap());
    let high = u32::from_ne_bytes(raw[4..].try_into().unwrap());
    u64::from(low) | (u64::from(high) << 32)
}

fn cookie_to_diag(cookie: u64) -> [u8; 8] {
    let mut raw = [0u8; 8];
    raw[..4].copy_from_slice(&(cookie as u32).to_ne_bytes());
    raw[4..].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
    raw
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{DoneMessage, ErrorMessage, NLM_F_MULTIPART};
    use netlink_packet_sock_diag::{
        constants::{TCP_ESTABLISHED, TCP_LISTEN, TCP_TIME_WAIT},
        inet::{InetResponse, nlas::Nla},
    };

    use super::*;

    const SEQ: u32 = 7;
    const NETNS: u64 = 4026531840;

    fn tcp_info(sent: u32, recv: u32, ack: u32) -> Vec<u8> {
        let mut info = vec![0u8; size_of::<libc::tcp_info>()];
        info[offset_of!(libc::tcp_info, tcpi_last_data_sent)..][..4]
            .copy_from_slice(&sent.to_ne_bytes());
        info[offset_of!(libc::tcp_info, tcpi_last_data_recv)..][..4]
            .copy_from_slice(&recv.to_ne_bytes());
        info[offset_of!(libc::tcp_info, tcpi_last_ack_recv)..][..4]
            .copy_from_slice(&ack.to_ne_bytes());
        info
    }

    struct Reply {
        family: u8,
        state: u8,
        timer: Option<Timer>,
        local: (IpAddr, u16),
        remote: (IpAddr, u16),
        cookie: u64,
        inode: u32,
        nlas: Vec<Nla>,
    }

    impl Reply {
        fn established_v4() -> Self {
            Self {
                family: AF_INET,
                state: TCP_ESTABLISHED,
                timer: None,
                local: ("127.0.0.1".parse().unwrap(), 40000),
                remote: ("127.0.0.1".parse().unwrap(), 8080),
                cookie: 0x1_0000_2345,
                inode: 123456,
                nlas: vec![Nla::Shutdown(0), Nla::TcpInfo(tcp_info(1500, 2500, 30))],
            }
        }
    }

    fn encode(payload: NetlinkPayload<SockDiagMessage>, seq: u32) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_MULTIPART;
        header.sequence_number = seq;
        let mut message = NetlinkMessage::new(header, payload);
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        bytes
    }

    fn response(reply: Reply, seq: u32) -> Vec<u8> {
        let mut socket_id = if reply.family == AF_INET {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
        };
        socket_id.source_address = reply.local.0;
        socket_id.source_port = reply.local.1;
        socket_id.destination_address = reply.remote.0;
        socket_id.destination_port = reply.remote.1;
        socket_id.cookie = cookie_to_diag(reply.cookie);
        let header = InetResponseHeader {
            family: reply.family,
            state: reply.state,
            timer: reply.timer,
            socket_id,
            recv_queue: 0,
            send_queue: 0,
            uid: 1000,
            inode: reply.inode,
        };
        let response = InetResponse {
            header,
            nlas: reply.nlas.into_iter().collect(),
        };
        encode(
            SockDiagMessage::InetResponse(Box::new(response)).into(),
            seq,
        )
    }

    fn done(code: i32, seq: u32) -> Vec<u8> {
        let mut done = DoneMessage::default();
        done.code = code;
        encode(NetlinkPayload::Done(done), seq)
    }

    fn read(bytes: &[u8], dump: bool) -> (Result<Progress, ReplyError>, Vec<DiagSocket>, u64) {
        let mut out = Vec::new();
        let mut batch = Batch {
            out: &mut out,
            undecodable: 0,
        };
        let result = read_replies(bytes, SEQ, dump, NETNS, &mut batch);
        let undecodable = batch.undecodable;
        (result, out, undecodable)
    }

    #[test]
    fn an_error_reply_with_errno_i32_min_is_a_refusal_not_an_overflow() {
        // Found by the sock_diag fuzz target: NLMSG_ERROR whose error code is i32::MIN.
        let reply = [
            0x14, 0, 0, 0, 0x02, 0, 0, 0x03, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0x01,
        ];
        let err = parse_dump_batch(&reply, 1, 0).unwrap_err();
        assert!(err.starts_with("the kernel refused the dump"), "{err}");
    }

    #[test]
    fn an_established_socket_decodes_with_cookie_inode_and_idle_times() {
        let (result, sockets, _) = read(&response(Reply::established_v4(), SEQ), true);
        assert_eq!(result.unwrap(), Progress::More, "no NLMSG_DONE yet");
        assert_eq!(
            sockets,
            [DiagSocket {
                netns: NETNS,
                cookie: 0x1_0000_2345,
                inode: 123456,
                uid: 1000,
                state: TcpState::Established,
                kind: SockKind::Full,
                local: "127.0.0.1:40000".parse().unwrap(),
                remote: "127.0.0.1:8080".parse().unwrap(),
                last_data_sent_ms: Some(1500),
                last_data_recv_ms: Some(2500),
                last_ack_recv_ms: Some(30),
            }]
        );
    }

    #[test]
    fn a_multi_part_dump_spans_batches_until_done() {
        let mut first = Vec::new();
        for port in 0..3 {
            let mut reply = Reply::established_v4();
            reply.local.1 = 40000 + port;
            first.extend(response(reply, SEQ));
        }
        let (result, sockets, _) = read(&first, true);
        assert_eq!(result.unwrap(), Progress::More);
        assert_eq!(
            sockets.iter().map(|s| s.local.port()).collect::<Vec<_>>(),
            [40000, 40001, 40002]
        );

        let mut second = response(Reply::established_v4(), SEQ);
        second.extend(done(0, SEQ));
        let (result, sockets, _) = read(&second, true);
        assert_eq!(result.unwrap(), Progress::Done);
        assert_eq!(sockets.len(), 1);
    }

    #[test]
    fn replies_to_an_earlier_request_are_skipped() {
        let mut bytes = response(Reply::established_v4(), SEQ - 1);
        bytes.extend(done(0, SEQ - 1));
        let (result, sockets, _) = read(&bytes, true);
        assert_eq!(
            result.unwrap(),
            Progress::More,
            "the old DONE does not end this dump"
        );
        assert!(sockets.is_empty());
    }

    #[test]
    fn v4_mapped_addresses_of_dual_stack_sockets_read_as_ipv4() {
        let mut reply = Reply::established_v4();
        reply.family = AF_INET6;
        reply.local = ("::ffff:10.1.2.3".parse().unwrap(), 443);
        reply.remote = ("::ffff:10.9.8.7".parse().unwrap(), 51000);
        let (_, sockets, _) = read(&response(reply, SEQ), true);
        assert_eq!(sockets[0].local, "10.1.2.3:443".parse().unwrap());
        assert_eq!(sockets[0].remote, "10.9.8.7:51000".parse().unwrap());

        let mut reply = Reply::established_v4();
        reply.family = AF_INET6;
        reply.local = ("::1".parse().unwrap(), 443);
        reply.remote = ("::1".parse().unwrap(), 51000);
        let (_, sockets, _) = read(&response(reply, SEQ), true);
        assert_eq!(sockets[0].local, "[::1]:443".parse().unwrap());
    }

    #[test]
    fn time_wait_and_request_sockets_are_told_apart_and_have_no_idle_times() {
        let mut time_wait = Reply::established_v4();
        time_wait.state = TCP_TIME_WAIT;
        time_wait.timer = Some(Timer::TimeWait);
        time_wait.inode = 0;
        time_wait.nlas.clear();
        let mut request = Reply::established_v4();
        request.state = TCP_SYN_RECV;
        request.timer = Some(Timer::Retransmit(std::time::Duration::from_millis(200), 0));
        request.inode = 0;
        request.nlas.clear();
        let mut listener = Reply::established_v4();
        listener.state = TCP_LISTEN;
        listener.remote = ("0.0.0.0".parse().unwrap(), 0);

        let mut bytes = response(time_wait, SEQ);
        bytes.extend(response(request, SEQ));
        bytes.extend(response(listener, SEQ));
        let (_, sockets, _) = read(&bytes, true);
        let kinds: Vec<_> = sockets
            .iter()
            .map(|s| (s.state, s.kind, s.last_data_sent_ms))
            .collect();
        assert_eq!(
            kinds,
            [
                (TcpState::TimeWait, SockKind::TimeWait, None),
                (TcpState::SynRecv, SockKind::Request, None),
                (TcpState::Listen, SockKind::Full, Some(1500)),
            ]
        );
    }

    #[test]
    fn a_short_tcp_info_from_an_older_kernel_gives_the_fields_it_has() {
        let mut reply = Reply::established_v4();
        let cut = offset_of!(libc::tcp_info, tcpi_last_data_recv);
        reply.nlas = vec![Nla::TcpInfo(tcp_info(1500, 2500, 30)[..cut].to_vec())];
        let (_, sockets, _) = read(&response(reply, SEQ), true);
        assert_eq!(
            (
                sockets[0].last_data_sent_ms,
                sockets[0].last_data_recv_ms,
                sockets[0].last_ack_recv_ms
            ),
            (Some(1500), None, None)
        );
    }

    #[test]
    fn an_undecodable_socket_is_counted_and_the_dump_goes_on() {
        let mut bytes = response(Reply::established_v4(), SEQ);
        // An AF_INET reply too short for an inet_diag_msg.
        let mut header = NetlinkHeader::default();
        header.message_type = SOCK_DIAG_BY_FAMILY;
        header.sequence_number = SEQ;
        header.length = 16 + 8;
        let mut broken = vec![0u8; 24];
        netlink_packet_core::Emitable::emit(&header, &mut broken[..16]);
        broken[16] = AF_INET;
        bytes.extend(broken);
        bytes.extend(response(Reply::established_v4(), SEQ));
        bytes.extend(done(0, SEQ));
        let (result, sockets, undecodable) = read(&bytes, true);
        assert_eq!(result.unwrap(), Progress::Done);
        assert_eq!((sockets.len(), undecodable), (2, 1));
    }

    #[test]
    fn kernel_errors_are_refusals_with_their_errno() {
        let (result, _, _) = read(&done(-libc::EBUSY, SEQ), true);
        assert!(
            matches!(result, Err(ReplyError::Refused(err)) if err.raw_os_error() == Some(libc::EBUSY))
        );

        let mut error = ErrorMessage::default();
        error.code = std::num::NonZeroI32::new(-libc::ENOENT);
        let (result, _, _) = read(&encode(NetlinkPayload::Error(error), SEQ), false);
        assert!(
            matches!(result, Err(ReplyError::Refused(err)) if err.raw_os_error() == Some(libc::ENOENT))
        );
    }

    #[test]
    fn a_lookup_ends_with_its_one_answer() {
        let (result, sockets, _) = read(&response(Reply::established_v4(), SEQ), false);
        assert_eq!(result.unwrap(), Progress::Done);
        assert_eq!(sockets.len(), 1);
    }

    #[test]
    fn a_truncated_batch_is_malformed() {
        let bytes = response(Reply::established_v4(), SEQ);
        let (result, _, _) = read(&bytes[..bytes.len() - 8], true);
        assert!(
            matches!(result, Err(ReplyError::Malformed(_))),
            "{result:?}"
        );
    }

    #[test]
    fn requests_ask_for_tcp_info_in_the_states_wanted() {
        let bytes = encode_request(
            AF_INET6,
            SocketId::new_v6(),
            DumpStates::All.flags(),
            true,
            3,
        );
        let framed = NetlinkBuffer::new_checked(&bytes[..]).unwrap();
        assert_eq!(framed.length() as usize, bytes.len());
        assert_eq!(framed.flags(), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(framed.sequence_number(), 3);
        // The crate reads an AF_INET6 SOCK_DIAG_BY_FAMILY message as a response: parse the
        // payload as the request it is.
        let request = InetRequest::parse(framed.payload()).unwrap();
        assert_eq!((request.family, request.protocol), (AF_INET6, IPPROTO_TCP));
        assert_eq!(request.extensions, ExtensionFlags::INFO);
        assert_eq!(request.states, StateFlags::all());

        let without = DumpStates::WithoutTimeWait.flags();
        assert!(!without.contains(StateFlags::TIME_WAIT));
        assert!(
            without.contains(StateFlags::FIN_WAIT2 | StateFlags::CLOSE_WAIT | StateFlags::LISTEN)
        );
        assert_eq!(
            without.bits().count_ones() + 1,
            StateFlags::all().bits().count_ones()
        );
    }

    #[test]
    fn cookies_round_trip_through_the_two_words() {
        for cookie in [1, 0x1234_5678, 0xdead_beef_0000_0001, u64::MAX] {
            assert_eq!(cookie_from_diag(cookie_to_diag(cookie)), cookie);
        }
        // Low word first.
        assert_eq!(
            &cookie_to_diag(0x0000_0002_0000_0001)[..4],
            &1u32.to_ne_bytes()
        );
    }

    #[test]
    fn a_real_dump_batch_decodes_and_its_done_message_ends_it() {
        // Replies of a kernel 6.18 to a dump of IPv4 sockets (request 1), the fuzzer's seeds.
        let (sockets, undecodable, done) =
            parse_dump_batch(include_bytes!("../../../fuzz/corpus/sock_diag/dump-v4-0"), 1, 7).unwrap();
        assert!(!sockets.is_empty() && !done);
        assert_eq!(undecodable, 0);
        assert!(sockets.iter().all(|socket| socket.netns == 7 && socket.local.is_ipv4()), "{sockets:?}");
        let (sockets, _, done) = parse_dump_batch(include_bytes!("../../../fuzz/corpus/sock_diag/dump-v4-2"), 1, 7).unwrap();
        assert!(sockets.is_empty() && done);
        // Replies to another request are not this dump's.
        let (sockets, _, done) = parse_dump_batch(include_bytes!("../../../fuzz/corpus/sock_diag/dump-v4-0"), 2, 7).unwrap();
        assert!(sockets.is_empty() && !done);
    }
}
