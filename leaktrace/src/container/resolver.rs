//! The container resolver: a process's container read from its cgroup at its first sight, by a
//! thread of its own (the process may have exited by the time of the report), and named from
//! the pod index when a report asks (a container's status reaches the API after it started).
//! Names found are remembered, so a process whose pod is gone keeps them.
//!
//! **Whose view of cgroups.** `/proc/PID/cgroup` shows paths relative to the reader's cgroup
//! namespace. The reader thread first joins the host's (setns(2) on `/proc/1/ns/cgroup`, which
//! needs the host's pid namespace, CAP_SYS_ADMIN, and ptrace access to pid 1), so paths read as
//! on the host. Where that is refused it reads through its own namespace: paths of other
//! containers are then relative (`/../libpod-<id>`) but still name the container; only processes
//! in leaktrace's own cgroup and its ancestors read as `/` and show no container.
//!
//! Memory is bounded: at most [`MAX_PROCESSES`] processes, [`MAX_CGROUPS`] cgroup ids and
//! [`MAX_NAMED`] named containers are remembered, the oldest forgotten first.
use std::{
    collections::VecDeque,
    fs::File,
    os::fd::AsFd,
    sync::{Arc, Mutex, OnceLock, mpsc},
    thread,
};

use super::{
    Workload,
    bounded::Bounded,
    cgroup::{self, CgroupContainer},
    kubernetes::{PodContainer, PodIndex},
};
use crate::tracker::{ProcessKey, hash::FastMap};

/// How many processes' containers are remembered.
pub const MAX_PROCESSES: usize = 16_384;
/// How many cgroup ids' containers are remembered (for processes gone before their read).
pub const MAX_CGROUPS: usize = 4_096;
/// How many containers' names are remembered after their pod is gone from the API.
pub const MAX_NAMED: usize = 4_096;

/// Start times of one process read from `/proc` (clock ticks) and from the kernel (ns) differ
/// by less than this.
const SAME_START_NS: u64 = 30_000_000;

/// Filled once by the reader thread: the process's container, `None` on the host.
type Slot = OnceLock<Option<Arc<CgroupContainer>>>;

/// What processes in one cgroup id were found in: the same container for all, or not.
#[derive(Clone)]
enum CgroupAnswer {
    One(Option<Arc<CgroupContainer>>),
    /// Processes of this cgroup id were found in different containers (cgroup v1 without a
    /// unified hierarchy gives every task the root's id): it says nothing.
    Ambiguous,
}

struct Shared {
    processes: Mutex<ProcessTable>,
    by_cgroup: Mutex<Bounded<u64, CgroupAnswer>>,
    named: Mutex<Bounded<String, PodContainer>>,
    pods: Option<PodIndex>,
}

/// The processes noted, by pid then start time: the kernel's and `/proc`'s start times of one
/// process differ by up to a few clock ticks, so a process noted from an event is found from an
/// inventory's owner too. Bounded: past `capacity` the oldest noted is forgotten.
struct ProcessTable {
    by_pid: FastMap<u32, Vec<(u64, Arc<Slot>)>>,
    order: VecDeque<ProcessKey>,
    capacity: usize,
}

impl ProcessTable {
    fn find(&self, pid: u32, start_ns: u64) -> Option<&Arc<Slot>> {
        let starts = self.by_pid.get(&pid)?;
        starts.iter().find(|(start, _)| start.abs_diff(start_ns) <= SAME_START_NS).map(|(_, slot)| slot)
    }

    /// The slot of a process never noted before, or `None` if it was.
    fn add(&mut self, key: ProcessKey) -> Option<Arc<Slot>> {
        if self.find(key.pid, key.start_ns).is_some() {
            return None;
        }
        let slot = Arc::new(Slot::new());
        self.by_pid.entry(key.pid).or_default().push((key.start_ns, Arc::clone(&slot)));
        self.order.push_back(key);
        while self.order.len() > self.capacity {
            let Some(oldest) = self.order.pop_front() else { break };
            if let Some(starts) = self.by_pid.get_mut(&oldest.pid) {
                starts.retain(|(start, _)| *start != oldest.start_ns);
                if starts.is_empty() {
                    self.by_pid.remove(&oldest.pid);
                }
            }
        }
        Some(slot)
    }
}

enum Message {
    Read { key: ProcessKey, cgroup_id: u64, slot: Arc<Slot> },
    /// Answered once every read queued before it is done.
    Flush(mpsc::Sender<()>),
}

/// The container resolver: cheap to clone, Send + Sync; its reader thread ends with the last
/// handle.
#[derive(Clone)]
pub struct Containers {
    shared: Arc<Shared>,
    reads: mpsc::Sender<Message>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Containers {
    /// Starts the reader thread; `pods` names containers on a Kubernetes node.
    pub fn spawn(pods: Option<PodIndex>) -> Self {
        Self::spawn_reading(pods, read_container)
    }

    /// With `read` standing for the read of `/proc/PID/cgroup` (tests).
    pub(super) fn spawn_reading(pods: Option<PodIndex>, read: impl Fn(ProcessKey) -> Read + Send + 'static) -> Self {
        let shared = Arc::new(Shared {
            processes: Mutex::new(ProcessTable { by_pid: FastMap::default(), order: VecDeque::new(), capacity: MAX_PROCESSES }),
            by_cgroup: Mutex::new(Bounded::new(MAX_CGROUPS)),
            named: Mutex::new(Bounded::new(MAX_NAMED)),
            pods,
        });
        let (reads, requests) = mpsc::channel::<Message>();
        let reader = Arc::clone(&shared);
        thread::Builder::new()
            .name("leaktrace-cgroup".into())
            .spawn(move || {
                match join_host_cgroup_namespace() {
                    Ok(true) => log::debug!("reading cgroups in the host's cgroup namespace"),
                    Ok(false) => {}
                    Err(err) => log::debug!("reading cgroups in leaktrace's own cgroup namespace: {err}"),
                }
                for message in requests {
                    match message {
                        Message::Read { key, cgroup_id, slot } => {
                            let found = read(key);
                            let found = reader.remember_cgroup(cgroup_id, found);
                            let _ = slot.set(found);
                        }
                        Message::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })
            .expect("starting the container reader thread: the system is out of threads");
        Self { shared, reads }
    }

    /// At the first sight of a process (cheap on later calls): queues the read of its cgroup.
    /// `cgroup_id` is the event's, used when the process is gone before the read.
    pub fn note_process(&self, pid: u32, process_start_ns: u64, cgroup_id: u64) {
        let key = ProcessKey { pid, start_ns: process_start_ns };
        if let Some(slot) = lock(&self.shared.processes).add(key) {
            let _ = self.reads.send(Message::Read { key, cgroup_id, slot });
        }
    }

    /// Waits until every process noted so far has been read (tests, and a final report).
    pub fn flush(&self) {
        let (done, wait) = mpsc::channel();
        if self.reads.send(Message::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }

    /// The container of a process noted before; `None` on the host, or not read yet.
    pub fn workload(&self, pid: u32, process_start_ns: u64) -> Option<Workload> {
        let found = self.slot(pid, process_start_ns)?.get().cloned().flatten()?;
        let pod = self.pod(&found.id);
        let mut workload = Workload::new(&found, pod.as_ref());
        if pod.is_none()
            && let (Some(uid), Some(pods)) = (&found.pod_uid, &self.shared.pods)
            && let Some((name, namespace)) = pods.pod_of(uid)
        {
            // Its pod is known, its status does not list this container yet.
            workload.pod = Some(name);
            workload.namespace = Some(namespace);
        }
        Some(workload)
    }

    /// The container of a process, read now if it was not yet (a stream that writes each event
    /// as it comes cannot wait for the reader thread to get there).
    pub fn workload_now(&self, pid: u32, process_start_ns: u64, cgroup_id: u64) -> Option<Workload> {
        if self.slot(pid, process_start_ns).is_none_or(|slot| slot.get().is_none()) {
            self.note_process(pid, process_start_ns, cgroup_id);
            self.flush();
        }
        self.workload(pid, process_start_ns)
    }

    /// The pod container `id` belongs to: from the watch, or remembered from it.
    fn pod(&self, id: &str) -> Option<PodContainer> {
        let pods = self.shared.pods.as_ref()?;
        let mut named = lock(&self.shared.named);
        match pods.lookup(id) {
            Some(pod) => {
                named.insert(id.to_string(), pod.clone());
                Some(pod)
            }
            None => named.get(&id.to_string()).cloned(),
        }
    }

    fn slot(&self, pid: u32, start_ns: u64) -> Option<Arc<Slot>> {
        lock(&self.shared.processes).find(pid, start_ns).cloned()
    }
}

impl Shared {
    /// Records what `cgroup_id` says (when the read worked) or asks it (when the process was gone).
    /// Cgroup id 0 is unknown (an inventory taken without cgroups), and says nothing.
    fn remember_cgroup(&self, cgroup_id: u64, found: Read) -> Option<Arc<CgroupContainer>> {
        if cgroup_id == 0 {
            return match found {
                Read::Found(found) => found,
                Read::Gone => None,
            };
        }
        let mut by_cgroup = lock(&self.by_cgroup);
        match found {
            Read::Found(found) => {
                let answer = match by_cgroup.get(&cgroup_id) {
                    Some(CgroupAnswer::One(known)) if *known != found => CgroupAnswer::Ambiguous,
                    Some(CgroupAnswer::Ambiguous) => CgroupAnswer::Ambiguous,
                    _ => CgroupAnswer::One(found.clone()),
                };
                by_cgroup.insert(cgroup_id, answer);
                found
            }
            Read::Gone => match by_cgroup.get(&cgroup_id) {
                Some(CgroupAnswer::One(known)) => known.clone(),
                _ => None,
            },
        }
    }
}

pub(super) enum Read {
    Found(Option<Arc<CgroupContainer>>),
    /// The process exited (or its pid was reused) before its cgroup was read.
    Gone,
}

fn read_container(key: ProcessKey) -> Read {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{}/cgroup", key.pid)) else { return Read::Gone };
    // A pid reused since the event is another process.
    if let Some(start) = crate::symbolize::capture::process_start_ns(key.pid)
        && start.abs_diff(key.start_ns) > SAME_START_NS
    {
        return Read::Gone;
    }
    Read::Found(cgroup::parse(&text).map(Arc::new))
}

/// Moves the calling thread into pid 1's cgroup namespace when it is another one. `Ok(false)`:
/// already there.
fn join_host_cgroup_namespace() -> std::io::Result<bool> {
    let own = std::fs::read_link("/proc/thread-self/ns/cgroup")?;
    let host = std::fs::read_link("/proc/1/ns/cgroup")?;
    if own == host {
        return Ok(false);
    }
    let namespace = File::open("/proc/1/ns/cgroup")?;
    rustix::thread::move_into_link_name_space(namespace.as_fd(), Some(rustix::thread::LinkNameSpaceType::ControlGroup))?;
    Ok(true)
}


#[cfg(test)]
mod tests;
