//! A tracer running on its own thread (with its own tokio runtime) while the test drives
//! sockets, collecting every event; stopping it detaches the probes and balances the counts.
use std::{
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use leaktrace::{
    event::Event,
    kernel::{AttachedHook, KernelCounters, Tracer, TracerOptions},
};

pub struct TraceSession {
    events: Arc<Mutex<Vec<Event>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<KernelCounters>>,
    hooks: Vec<AttachedHook>,
}

/// What a stopped session saw.
pub struct Finished {
    pub events: Vec<Event>,
    pub counters: KernelCounters,
    pub hooks: Vec<AttachedHook>,
}

impl TraceSession {
    /// Loads and attaches the probes; returns once they are attached. Panics (with the
    /// loader's message) if they cannot be.
    #[track_caller]
    pub fn start(options: TracerOptions) -> Self {
        let events = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let shared = Arc::clone(&events);
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            runtime.block_on(async move {
                let mut tracer = match Tracer::start(options) {
                    Ok(tracer) => {
                        ready_tx.send(Ok(tracer.hooks().to_vec())).expect("test waits for readiness");
                        tracer
                    }
                    Err(err) => {
                        ready_tx.send(Err(format!("{err}"))).expect("test waits for readiness");
                        return KernelCounters::default();
                    }
                };
                let mut batch = Vec::new();
                loop {
                    tokio::select! {
                        read = tracer.next_batch(&mut batch) => read.expect("reading the ring buffer"),
                        _ = &mut stop_rx => break,
                    }
                    shared.lock().unwrap().append(&mut batch);
                }
                let counters = tracer.finish(&mut batch).expect("final counters");
                shared.lock().unwrap().append(&mut batch);
                counters
            })
        });
        let hooks = match ready_rx.recv() {
            Ok(Ok(hooks)) => hooks,
            Ok(Err(err)) => panic!("leaktrace failed to start: {err}"),
            Err(_) => panic!("tracer thread died: {:?}", thread.join().err()),
        };
        Self { events, stop: Some(stop_tx), thread: Some(thread), hooks }
    }

    pub fn hooks(&self) -> &[AttachedHook] {
        &self.hooks
    }

    /// A copy of the events so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// Waits (up to `timeout`) until `done` holds for the events so far. Returns whether it did.
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&[Event]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let events = self.events();
            if done(&events) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Like [`wait_for`](Self::wait_for), but a timeout fails the test with `what` and every
    /// event seen.
    #[track_caller]
    pub fn expect(&self, timeout: Duration, what: &str, done: impl Fn(&[Event]) -> bool) {
        if !self.wait_for(timeout, done) {
            panic!("timed out waiting for {what}; events so far: {:#?}", self.events());
        }
    }

    /// Detaches the probes, drains the buffer, and returns everything seen.
    pub fn stop(mut self) -> Finished {
        let _ = self.stop.take().expect("stopped once").send(());
        let counters = self.thread.take().expect("stopped once").join().expect("tracer thread panicked");
        let events = std::mem::take(&mut *self.events.lock().unwrap());
        Finished { events, counters, hooks: std::mem::take(&mut self.hooks) }
    }
}

impl Drop for TraceSession {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
