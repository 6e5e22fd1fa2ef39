//! `leaktrace agent` as a node runs it, and what reads it: HTTP requests to its endpoints,
//! Debian's `promtool` checking its metrics, and Debian's `prometheus` server scraping it on
//! loopback, asked through its own HTTP API.
use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::cli::leaktrace_binary;

/// The line the agent logs once it listens, before the address.
const SERVING: &str = "/readyz on http://";

/// A plain-HTTP client that hands back every status (a 400 is an answer, not an error).
fn http() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(60))).build().into()
}

/// GET `url` with `query` pairs: the status and the body.
#[track_caller]
pub fn get(url: &str, query: &[(&str, &str)], accept: Option<&str>) -> (u16, String) {
    let mut request = http().get(url);
    for (key, value) in query {
        request = request.query(*key, *value);
    }
    if let Some(accept) = accept {
        request = request.header("Accept", accept);
    }
    let response = request.call().unwrap_or_else(|err| panic!("GET {url} {query:?}: {err}"));
    let status = response.status().as_u16();
    let body = response.into_body().read_to_string().unwrap_or_else(|err| panic!("GET {url}: reading the body: {err}"));
    (status, body)
}

/// A running `leaktrace agent --listen 127.0.0.1:0 ARGS`. Killed on drop.
pub struct Agent {
    child: Child,
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<thread::JoinHandle<()>>,
}

impl Agent {
    /// Starts the agent on a port the kernel picks, and returns once it listens.
    #[track_caller]
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(leaktrace_binary())
            .args(["agent", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "leaktrace=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting leaktrace agent");
        let pipe = child.stderr.take().expect("piped stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let collected = Arc::clone(&stderr);
        let (address, listening) = mpsc::channel();
        let stderr_reader = thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some((_, addr)) = line.split_once(SERVING) {
                    let _ = address.send(addr.trim().to_string());
                }
                let mut all = collected.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        let mut agent = Self { child, addr: SocketAddr::from(([127, 0, 0, 1], 0)), stderr, stderr_reader: Some(stderr_reader) };
        match listening.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => agent.addr = addr.parse().unwrap_or_else(|err| panic!("the agent logged {addr:?} as its address: {err}")),
            Err(_) => {
                let _ = agent.child.kill();
                panic!("leaktrace agent did not say where it listens within 60 s; its stderr:\n{}", agent.stderr());
            }
        }
        agent
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// GET a path of the agent.
    #[track_caller]
    pub fn get(&self, path: &str, query: &[(&str, &str)]) -> (u16, String) {
        get(&self.url(path), query, None)
    }

    /// `/api/v1/report` with `query`, parsed; panics on a status other than 200.
    #[track_caller]
    pub fn report(&self, query: &[(&str, &str)]) -> Value {
        let (status, body) = self.get("/api/v1/report", query);
        assert_eq!(status, 200, "/api/v1/report {query:?}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|err| panic!("/api/v1/report is not JSON ({err}): {body}"))
    }

    /// Polls `/api/v1/report` with `query` until `check` holds; panics after `timeout` with the
    /// last report and the agent's stderr.
    #[track_caller]
    pub fn wait_report(&self, query: &[(&str, &str)], what: &str, timeout: Duration, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let report = self.report(query);
            if check(&report) {
                return report;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the agent's report never showed {what} within {timeout:?}\nlast report: {report:#}\nstderr:\n{}",
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// Polls `/readyz` until it answers 200 (it answers 503 before).
    #[track_caller]
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = self.get("/readyz", &[]);
            match status {
                200 => return,
                503 if Instant::now() < deadline => thread::sleep(Duration::from_millis(100)),
                _ => panic!("/readyz answered {status} ({body}); stderr:\n{}", self.stderr()),
            }
        }
    }

    /// SIGTERM, as a DaemonSet's pod is stopped: the exit status and everything it logged.
    #[track_caller]
    pub fn terminate(mut self) -> (ExitStatus, String) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("waiting for the agent");
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        (status, self.stderr())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of an unlabeled sample in a Prometheus text exposition.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Whether a program is on PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// `promtool check metrics` on an exposition: `Err` with promtool's complaints.
pub fn promtool_check_metrics(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting promtool");
    child.stdin.take().expect("piped stdin").write_all(text.as_bytes()).expect("writing to promtool");
    let output = child.wait_with_output().expect("waiting for promtool");
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
    }
}

/// A free loopback port (bound, then released for the program that will take it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("binding a loopback port").port()
}

/// Debian's `prometheus` server on loopback, scraping one target every second, with its
/// configuration and data in a directory of its own (removed on drop).
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
    log: PathBuf,
}

impl Prometheus {
    /// Starts it scraping `target`'s `/metrics`, and returns once its API answers.
    #[track_caller]
    pub fn start(target: SocketAddr) -> Self {
        let prometheus = Self::spawn(Command::new("prometheus"), target);
        prometheus.wait_ready(Duration::from_secs(60));
        prometheus
    }

    /// Starts `prometheus` (the program `command` runs: e.g. `nsenter --net=... -- prometheus`
    /// to scrape inside a container's network namespace) scraping `target`'s `/metrics`, without
    /// waiting for it: see [`Prometheus::wait_ready`].
    #[track_caller]
    pub fn spawn(mut command: Command, target: SocketAddr) -> Self {
        let dir = std::env::temp_dir().join(format!("leaktrace-prometheus-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(dir.join("data")).unwrap_or_else(|err| panic!("creating {}: {err}", dir.display()));
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: leaktrace\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("writing the Prometheus configuration");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.join("prometheus.log");
        let child = command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("creating the Prometheus log"))
            .spawn()
            .expect("starting prometheus");
        Self { child, addr, dir, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its API answers (from the network namespace it listens in).
    #[track_caller]
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let url = format!("http://{}/-/ready", self.addr);
        while Instant::now() < deadline {
            if http().get(&url).call().is_ok_and(|response| response.status() == 200) {
                return;
            }
            thread::sleep(Duration::from_millis(200));
        }
        panic!("prometheus did not get ready within {timeout:?}; its log:\n{}", self.log());
    }

    /// An instant query through `/api/v1/query`: the result vector.
    #[track_caller]
    pub fn query(&self, promql: &str) -> Vec<Value> {
        let (status, body) = get(&format!("http://{}/api/v1/query", self.addr), &[("query", promql)], None);
        let answer: Value = serde_json::from_str(&body).unwrap_or_else(|err| panic!("prometheus answered {status} with no JSON ({err}): {body}"));
        assert_eq!(answer["status"], "success", "query {promql}: {answer:#}");
        answer["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Polls `query` until its result satisfies `check`; panics after `timeout` with the last
    /// result, the scrape targets' state and the log.
    #[track_caller]
    pub fn wait_query(&self, promql: &str, timeout: Duration, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let result = self.query(promql);
            if check(&result) {
                return result;
            }
            if Instant::now() >= deadline {
                let (_, targets) = get(&format!("http://{}/api/v1/targets", self.addr), &[], None);
                panic!("prometheus: {promql} never satisfied the test within {timeout:?}\nlast result: {result:#?}\ntargets: {targets}\nlog:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
