//! `leaktrace events --container/--pod/--namespace`: the events of the connections that the
//! wanted containers' processes opened or accepted while tracing. The stream is written as it
//! comes, so an open event's container is looked up at once; a state change is kept when its
//! socket's open was (state changes carry no owner). Connections born before start, and the
//! handshake transitions an accepted socket goes through before its owner accepts it, have no
//! open to go by and are left out.
use super::{Containers, WorkloadFilter, bounded::Bounded};
use crate::{
    event::{Event, SocketId},
    tcp::TcpState,
};

pub struct EventFilter {
    containers: Containers,
    filter: WorkloadFilter,
    /// The sockets whose open was kept, until their CLOSE (bounded: a CLOSE no probe saw must
    /// not keep a socket forever).
    kept: Bounded<SocketId, ()>,
}

impl EventFilter {
    /// `capacity`: how many kept sockets are remembered at most (the kernel's socket map size
    /// is the natural bound).
    pub fn new(containers: Containers, filter: WorkloadFilter, capacity: usize) -> Self {
        Self { containers, filter, kept: Bounded::new(capacity) }
    }

    pub fn keep(&mut self, event: &Event) -> bool {
        if let Some(open) = event.open() {
            let owner = &open.owner;
            let workload = self.containers.workload_now(owner.pid, owner.process_start_ns, owner.cgroup_id);
            let wanted = self.filter.wants(workload.as_ref());
            if wanted {
                self.kept.insert(event.socket, ());
            }
            return wanted;
        }
        let kept = self.kept.get(&event.socket).is_some();
        if kept && event.state_change().is_some_and(|change| change.new_state == TcpState::Close) {
            self.kept.remove(&event.socket);
        }
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        container::{cgroup, resolver::Read},
        event::{ConnOpen, EventBody, Owner, StateChange},
    };

    fn open(sk: u64, pid: u32) -> Event {
        let open = ConnOpen {
            owner: Owner { pid, tid: pid, process_start_ns: 1_000, cgroup_id: 9, comm: "app".into() },
            local: "127.0.0.1:0".parse().unwrap(),
            remote: "127.0.0.1:9000".parse().unwrap(),
            state: TcpState::SynSent,
            stack: Vec::new(),
            stack_error: None,
            goroutine: None,
            python: vec![],
            python_status: None,
        };
        Event { ts_ns: 1, cpu: 0, socket: SocketId { sk, birth_ns: 1 }, cookie: sk, body: EventBody::Connect(open) }
    }

    fn state(sk: u64, old_state: TcpState, new_state: TcpState) -> Event {
        let change = StateChange {
            old_state,
            new_state,
            local: "127.0.0.1:40000".parse().unwrap(),
            remote: "127.0.0.1:9000".parse().unwrap(),
        };
        Event { ts_ns: 2, cpu: 0, socket: SocketId { sk, birth_ns: 1 }, cookie: sk, body: EventBody::State(change) }
    }

    #[test]
    fn a_container_s_connections_are_kept_from_their_open_to_their_close() {
        let podman = "0::/libpod_parent/libpod-5e687ed3797e47bcc2db462f91ea9781cd370b770310841c917a8828d2a495cd\n";
        let containers = Containers::spawn_reading(None, move |key| match key.pid {
            10 => Read::Found(cgroup::parse(podman).map(std::sync::Arc::new)),
            _ => Read::Found(None),
        });
        let filter = WorkloadFilter { containers: vec!["5e687ed3".into()], ..WorkloadFilter::default() };
        let mut events = EventFilter::new(containers, filter, 16);
        let stream = [
            open(1, 10),
            open(2, 20),
            state(1, TcpState::SynSent, TcpState::Established),
            state(2, TcpState::SynSent, TcpState::Established),
            state(3, TcpState::Established, TcpState::FinWait1),
            state(1, TcpState::FinWait2, TcpState::Close),
            state(1, TcpState::Close, TcpState::Close),
        ];
        let kept: Vec<bool> = stream.iter().map(|event| events.keep(event)).collect();
        assert_eq!(kept, [true, false, true, false, false, true, false], "after its CLOSE a socket is forgotten");
    }
}
