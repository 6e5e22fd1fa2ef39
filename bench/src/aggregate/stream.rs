//! A synthetic but realistic event stream for the aggregator benchmark, built in memory before
//! anything is timed: a few hundred processes, a few thousand call sites (user stacks of 10-30
//! frames, connect or accept), and connections opened at a steady rate that live the way real
//! ones do. Most are short-lived churn closed by either end, some connects are refused, a few
//! sites hold long-lived pools, and a few leak (never closed, or stuck in CLOSE_WAIT). Socket
//! addresses are reused as the kernel's slab reuses them; cookies are unique; the events come
//! out in time order with the transitions the probes report.
use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use leaktrace::{
    event::{ConnOpen, Event, EventBody, Owner, SocketId, StateChange},
    tcp::TcpState,
};

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

/// The shape of the stream.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub processes: usize,
    pub sites: usize,
    /// Connections opened per second of stream time.
    pub conn_per_s: u64,
    pub seed: u64,
}

/// How the connections of one call site live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    /// A connection per request: closed within milliseconds, by either end.
    Churn,
    /// A pool: connections that live tens of seconds.
    Pool,
    /// Opened and never closed.
    Leak,
    /// The peer hangs up and the owner never closes: stuck in CLOSE_WAIT.
    CloseWaitLeak,
}

/// Of every 1000 connections opened, how many come from sites of each behaviour.
const SHARE_PER_MILLE: [(Behaviour, u32); 4] = [
    (Behaviour::Churn, 955),
    (Behaviour::Pool, 25),
    (Behaviour::Leak, 15),
    (Behaviour::CloseWaitLeak, 5),
];
/// Of every 1000 churn connects, how many are refused (SYN_SENT -> CLOSE).
const REFUSED_PER_MILLE: u64 = 20;

struct Process {
    pid: u32,
    start_ns: u64,
    cgroup_id: u64,
    comm: String,
}

struct Site {
    process: usize,
    accept: bool,
    stack: Vec<u64>,
    local: SocketAddr,
    /// The peers it talks to (connect) or that talk to it (accept, ports vary).
    peers: Vec<IpAddr>,
    peer_port: u16,
}

/// The processes and call sites the stream's connections come from.
pub struct World {
    processes: Vec<Process>,
    sites: Vec<Site>,
    /// Per behaviour: its sites, and their cumulative popularity (a few hot, a long tail).
    by_behaviour: Vec<(Behaviour, Vec<usize>, Vec<u64>)>,
}

/// splitmix64: a small, fast, seedable generator; the stream must be the same on every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `low..high`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low).max(1)
    }

    /// Log-uniform in `low..high`: as many lifetimes of 1-10 ms as of 10-100 ms.
    fn log_range(&mut self, low: u64, high: u64) -> u64 {
        let unit = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        let (low, high) = ((low.max(1)) as f64, high as f64);
        (low * (high / low).powf(unit)) as u64
    }

    fn chance_per_mille(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
}

impl World {
    pub fn new(shape: &Shape, rng: &mut Rng) -> Self {
        let processes: Vec<Process> = (0..shape.processes.max(1))
            .map(|i| Process {
                pid: 1000 + i as u32 * 7,
                start_ns: S + rng.range(0, 100 * S),
                cgroup_id: 4000 + (i as u64 % 40),
                comm: format!("svc-{i:03}"),
            })
            .collect();
        let mut sites = Vec::with_capacity(shape.sites);
        let mut by_behaviour: Vec<(Behaviour, Vec<usize>, Vec<u64>)> = SHARE_PER_MILLE
            .iter()
            .map(|&(behaviour, _)| (behaviour, Vec::new(), Vec::new()))
            .collect();
        for id in 0..shape.sites.max(SHARE_PER_MILLE.len()) {
            let process = rng.range(0, processes.len() as u64) as usize;
            // Frames of one process share its runtime's outer frames, as real stacks do.
            let base = 0x40_0000 + process as u64 * 0x100_0000;
            let depth = rng.range(10, 31) as usize;
            let mut stack: Vec<u64> = (0..depth)
                .map(|_| base + rng.range(0, 0x80_0000) / 16 * 16)
                .collect();
            let shared = depth / 2;
            for (frame, slot) in stack[depth - shared..].iter_mut().enumerate() {
                *slot = base + 0x10_0000 + frame as u64 * 0x40;
            }
            let accept = rng.chance_per_mille(300);
            let octets =
                |n: u64| IpAddr::V4(Ipv4Addr::new(10, (n >> 16) as u8, (n >> 8) as u8, n as u8));
            let peers = (0..rng.range(1, 9))
                .map(|_| octets(rng.range(1, 1 << 20)))
                .collect();
            let port = if accept {
                8000 + rng.range(0, 100) as u16
            } else {
                0
            };
            sites.push(Site {
                process,
                accept,
                stack,
                local: SocketAddr::new(octets(process as u64 + 1), port),
                peers,
                peer_port: if accept {
                    0
                } else {
                    [443, 5432, 6379, 9092, 8080][id % 5]
                },
            });
            // The first sites are one of each behaviour; then by share, so every kind exists.
            let behaviour = if id < SHARE_PER_MILLE.len() {
                SHARE_PER_MILLE[id].0
            } else {
                pick_behaviour(rng)
            };
            let entry = by_behaviour
                .iter_mut()
                .find(|(b, _, _)| *b == behaviour)
                .expect("every behaviour listed");
            entry.1.push(id);
        }
        for (_, members, cumulative) in &mut by_behaviour {
            // Zipf-like popularity: the k-th site of a kind is opened about 1/k as often.
            let mut total = 0u64;
            for rank in 0..members.len() {
                total += 1_000_000 / (rank as u64 + 1);
                cumulative.push(total);
            }
        }
        Self {
            processes,
            sites,
            by_behaviour,
        }
    }

    pub fn sites(&self) -> usize {
        self.sites.len()
    }

    pub fn processes(&self) -> usize {
        self.processes.len()
    }

    fn pick_site(&self, behaviour: Behaviour, rng: &mut Rng) -> usize {
        let (_, members, cumulative) = self
            .by_behaviour
            .iter()
            .find(|(b, _, _)| *b == behaviour)
            .expect("listed");
        let total = *cumulative.last().expect("every behaviour has a site");
        let point = rng.range(0, total);
        members[cumulative.partition_point(|&c| c <= point)]
    }

    /// Any site, popularity-weighted over all of them.
    fn pick_any_site(&self, rng: &mut Rng) -> usize {
        self.pick_site(pick_behaviour(rng), rng)
    }

    fn open_event(
        &self,
        site_id: usize,
        socket: SocketId,
        cookie: u64,
        ts_ns: u64,
        rng: &mut Rng,
    ) -> Event {
        let site = &self.sites[site_id];
        let process = &self.processes[site.process];
        let peer = site.peers[rng.range(0, site.peers.len() as u64) as usize];
        let ephemeral = 32768 + rng.range(0, 28000) as u16;
        let (local, remote) = if site.accept {
            (site.local, SocketAddr::new(peer, ephemeral))
        } else {
            (
                SocketAddr::new(site.local.ip(), ephemeral),
                SocketAddr::new(peer, site.peer_port),
            )
        };
        let open = ConnOpen {
            owner: Owner {
                pid: process.pid,
                tid: process.pid + rng.range(0, 8) as u32,
                process_start_ns: process.start_ns,
                cgroup_id: process.cgroup_id,
                comm: process.comm.clone(),
            },
            local,
            remote,
            state: if site.accept {
                TcpState::Established
            } else {
                TcpState::SynSent
            },
            stack: site.stack.clone(),
            stack_error: None,
            goroutine: None,
            python: vec![],
            python_status: None,
        };
        let body = if site.accept {
            EventBody::Accept(open)
        } else {
            EventBody::Connect(open)
        };
        Event {
            ts_ns,
            cpu: rng.range(0, 8) as u32,
            socket,
            cookie,
            body,
        }
    }
}

fn pick_behaviour(rng: &mut Rng) -> Behaviour {
    let mut point = rng.range(0, 1000) as u32;
    for &(behaviour, share) in &SHARE_PER_MILLE {
        if point < share {
            return behaviour;
        }
        point -= share;
    }
    Behaviour::Churn
}

/// Makes sockets as the kernel does: freed `struct sock` addresses come back first.
pub struct Sockets {
    next_sk: u64,
    free: Vec<u64>,
    next_cookie: u64,
}

impl Sockets {
    pub fn new() -> Self {
        Self {
            next_sk: 0xffff_8880_1000_0000,
            free: Vec::new(),
            next_cookie: 1 << 12,
        }
    }

    fn socket(&mut self, birth_ns: u64) -> (SocketId, u64) {
        let sk = self.free.pop().unwrap_or_else(|| {
            // struct tcp_sock is about 2 KiB; slabs hand out neighbours.
            self.next_sk += 0x900;
            self.next_sk
        });
        self.next_cookie += 1;
        (SocketId { sk, birth_ns }, self.next_cookie)
    }
}

/// The stream, produced in time order.
pub struct Stream<'w> {
    world: &'w World,
    rng: Rng,
    sockets: Sockets,
    /// Transitions not yet due: (time, order scheduled, slot in `scheduled`), soonest first.
    due: BinaryHeap<Reverse<(u64, u64, usize)>>,
    sequence: u64,
    scheduled: Vec<Option<Event>>,
    free_slots: Vec<usize>,
    next_open_ns: u64,
    interval_ns: u64,
    pub opened: u64,
}

impl<'w> Stream<'w> {
    pub fn new(world: &'w World, shape: &Shape, start_ns: u64) -> Self {
        Self {
            world,
            rng: Rng::new(shape.seed ^ 0x5eed),
            sockets: Sockets::new(),
            due: BinaryHeap::new(),
            sequence: 0,
            scheduled: Vec::new(),
            free_slots: Vec::new(),
            next_open_ns: start_ns,
            interval_ns: (S / shape.conn_per_s.max(1)).max(1),
            opened: 0,
        }
    }

    /// The next `count` events.
    pub fn take(&mut self, count: usize) -> Vec<Event> {
        let mut events = Vec::with_capacity(count);
        while events.len() < count {
            let next_due = self.due.peek().map(|Reverse((ts_ns, _, _))| *ts_ns);
            if next_due.is_some_and(|due| due <= self.next_open_ns) {
                let Reverse((_, _, slot)) = self.due.pop().expect("peeked");
                let event = self.scheduled[slot]
                    .take()
                    .expect("a scheduled slot holds its event");
                self.free_slots.push(slot);
                if event
                    .state_change()
                    .is_some_and(|c| c.new_state == TcpState::Close)
                {
                    // The address is free for reuse once the socket is gone.
                    self.sockets.free.push(event.socket.sk);
                }
                events.push(event);
            } else {
                let ts_ns = self.next_open_ns;
                // Arrivals a little irregular, as requests are.
                self.next_open_ns += self
                    .rng
                    .range(self.interval_ns / 2, self.interval_ns * 3 / 2 + 1);
                events.push(self.open_connection(ts_ns));
            }
        }
        events
    }

    fn open_connection(&mut self, ts_ns: u64) -> Event {
        let behaviour = pick_behaviour(&mut self.rng);
        let site_id = self.world.pick_site(behaviour, &mut self.rng);
        let (socket, cookie) = self.sockets.socket(ts_ns);
        let open = self
            .world
            .open_event(site_id, socket, cookie, ts_ns, &mut self.rng);
        self.opened += 1;
        let (local, remote, accept) = open
            .open()
            .map(|o| (o.local, o.remote, o.state != TcpState::SynSent))
            .expect("an open");
        let mut life = Life {
            socket,
            cookie,
            local,
            remote,
            at_ns: ts_ns,
        };
        use TcpState::*;
        if !accept {
            if behaviour == Behaviour::Churn && self.rng.chance_per_mille(REFUSED_PER_MILLE) {
                let after = self.rng.range(20_000, 200_000);
                self.schedule(&mut life, after, SynSent, Close);
                return open;
            }
            let after = self.rng.range(30_000, 400_000);
            self.schedule(&mut life, after, SynSent, Established);
        }
        let lifetime = match behaviour {
            Behaviour::Churn => self.rng.log_range(MS / 5, 50 * MS),
            Behaviour::Pool => self.rng.range(10 * S, 120 * S),
            Behaviour::Leak => return open,
            Behaviour::CloseWaitLeak => {
                let after = self.rng.range(MS, 500 * MS);
                self.schedule(&mut life, after, Established, CloseWait);
                return open;
            }
        };
        // Either end closes first. TIME_WAIT is not reported: FIN_WAIT2 -> CLOSE ends it.
        let path = if self.rng.chance_per_mille(500) {
            [Established, FinWait1, FinWait2, Close]
        } else {
            [Established, CloseWait, LastAck, Close]
        };
        self.schedule(&mut life, lifetime, path[0], path[1]);
        for step in 1..path.len() - 1 {
            let after = self.rng.range(20_000, 300_000);
            self.schedule(&mut life, after, path[step], path[step + 1]);
        }
        open
    }

    /// Schedules `old -> new` of a connection, `after_ns` after its previous event.
    fn schedule(&mut self, life: &mut Life, after_ns: u64, old: TcpState, new: TcpState) {
        life.at_ns += after_ns;
        let change = StateChange {
            old_state: old,
            new_state: new,
            local: life.local,
            remote: life.remote,
        };
        let cpu = self.rng.range(0, 8) as u32;
        let event = Event {
            ts_ns: life.at_ns,
            cpu,
            socket: life.socket,
            cookie: life.cookie,
            body: EventBody::State(change),
        };
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.scheduled[slot] = Some(event);
                slot
            }
            None => {
                self.scheduled.push(Some(event));
                self.scheduled.len() - 1
            }
        };
        self.sequence += 1;
        self.due.push(Reverse((life.at_ns, self.sequence, slot)));
    }
}

/// One connection's identity and the time of its latest scheduled event.
struct Life {
    socket: SocketId,
    cookie: u64,
    local: SocketAddr,
    remote: SocketAddr,
    at_ns: u64,
}

/// `count` opens that all stay live: distinct sockets over the world's call sites, each a
/// connect that reaches ESTABLISHED or an accept, `per_second` of them per second.
pub fn live_opens(
    world: &World,
    count: usize,
    per_second: u64,
    start_ns: u64,
    seed: u64,
) -> Vec<Event> {
    let mut rng = Rng::new(seed ^ 0x11fe);
    let mut sockets = Sockets::new();
    let interval = (S / per_second.max(1)).max(1);
    let mut events = Vec::with_capacity(count * 2);
    for i in 0..count as u64 {
        let ts_ns = start_ns + i * interval;
        let site_id = world.pick_any_site(&mut rng);
        let (socket, cookie) = sockets.socket(ts_ns);
        let open = world.open_event(site_id, socket, cookie, ts_ns, &mut rng);
        let connect = open
            .open()
            .filter(|o| o.state == TcpState::SynSent)
            .map(|o| (o.local, o.remote));
        events.push(open);
        if let Some((local, remote)) = connect {
            let change = StateChange {
                old_state: TcpState::SynSent,
                new_state: TcpState::Established,
                local,
                remote,
            };
            events.push(Event {
                ts_ns: ts_ns + interval / 2,
                cpu: 0,
                socket,
                cookie,
                body: EventBody::State(change),
            });
        }
    }
    events
}
