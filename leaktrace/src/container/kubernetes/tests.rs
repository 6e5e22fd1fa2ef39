//! The pod watch against recorded API responses: a loopback HTTP server answers kube's real
//! client with a recorded pod list, then (when the test says so) a recorded watch stream.
use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

use super::*;

const CHECKOUT_APP: &str = "123beec1446e73544a838df719244e188ea8f7bd60b4531a75f9844d954ae3c3";
const CHECKOUT_MIGRATE: &str = "772efdec21aae275635930c8f20c4348a3d2f56362f0d05fd879c01c5ab6bec8";
const PAYMENTS_APP: &str = "740aa6984df8459495ab89e330bbf0aece4b6424f3c3082b2d46997fa4dbb0e5";
const CACHE_REDIS: &str = "d9730e223238744819b7b6149768e22288eb60450ad5464946124aa025f5aea8";

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/container/fixtures").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// A recorded API server: the pod list for any list request, the watch stream once released.
struct RecordedApi {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
    release_watch: watch::Sender<bool>,
}

impl RecordedApi {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (release_watch, released) = watch::channel(false);
        let seen = Arc::clone(&requests);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(serve(stream, Arc::clone(&seen), released.clone()));
            }
        });
        Self { url, requests, release_watch }
    }

    fn client(&self) -> Client {
        let config = kube::Config::new(self.url.parse().unwrap());
        Client::try_from(config).unwrap()
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

async fn serve(mut stream: TcpStream, requests: Arc<Mutex<Vec<String>>>, mut released: watch::Receiver<bool>) {
    loop {
        let Some(request_line) = read_request(&mut stream).await else { return };
        requests.lock().unwrap().push(request_line.clone());
        if !request_line.contains("watch=true") {
            let body = fixture("pods-list.json");
            let head = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
            stream.write_all((head + &body).as_bytes()).await.unwrap();
            continue;
        }
        let first_watch = requests.lock().unwrap().iter().filter(|line| line.contains("watch=true")).count() == 1;
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        if first_watch {
            let _ = released.wait_for(|go| *go).await;
            for line in fixture("pods-watch.jsonl").lines() {
                let chunk = format!("{line}\n");
                let framed = format!("{:x}\r\n{chunk}\r\n", chunk.len());
                if stream.write_all(framed.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
        // A watch stays open until the server times it out; this one never does.
        std::future::pending::<()>().await;
    }
}

/// The request line of the next request on the connection (its head is read and dropped).
async fn read_request(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    Some(text.lines().next().unwrap_or_default().to_string())
}

/// Waits until `index` satisfies `done` (a guard against a hang, not a timing assertion).
async fn until(index: &PodIndex, what: &str, done: impl Fn(&PodIndex) -> bool) {
    for _ in 0..3000 {
        if done(index) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the pod index never reached: {what}");
}

#[tokio::test]
async fn the_watch_mirrors_this_node_s_pods_from_the_api() {
    let api = RecordedApi::start().await;
    let index = start_with(api.client(), "node-1".into());

    until(&index, "the listed pods", |index| index.pods() == 2).await;
    let app = index.lookup(CHECKOUT_APP).expect("the running pod's container");
    assert_eq!(
        app,
        PodContainer {
            pod: "checkout-7d9f8b6c4-x2kqp".into(),
            namespace: "shop".into(),
            name: "app".into(),
            image: Some("registry.example.com/shop/checkout:1.4.2".into()),
            runtime: Runtime::Containerd,
            pod_uid: "0f6b1c9e-2a4d-4c1e-9f0a-6f7e3b2d1a55".into(),
        }
    );
    assert_eq!(index.lookup(CHECKOUT_MIGRATE).unwrap().name, "migrate", "init containers count");
    assert_eq!(index.lookup(PAYMENTS_APP), None, "a container still being created has no id yet");

    api.release_watch.send(true).unwrap();
    until(&index, "the watch's events applied", |index| {
        index.lookup(CACHE_REDIS).is_some() && index.lookup(CHECKOUT_APP).is_none()
    })
    .await;
    let payments = index.lookup(PAYMENTS_APP).expect("the pod's container started (MODIFIED)");
    assert_eq!((payments.pod.as_str(), payments.name.as_str()), ("payments-5c8d7f9b6-q7wzn", "app"));
    let redis = index.lookup(CACHE_REDIS).unwrap();
    assert_eq!((redis.namespace.as_str(), redis.image.as_deref()), ("infra", Some("docker.io/library/redis:7.2")));
    assert_eq!(index.lookup(CHECKOUT_MIGRATE), None, "a deleted pod's containers are forgotten");
    assert_eq!(index.pods(), 2);

    // Only this node's pods were asked for, by list and then watch from the list's version.
    let requests = api.requests();
    assert!(requests.len() >= 2, "{requests:?}");
    for request in &requests {
        assert!(request.starts_with("GET /api/v1/pods?"), "{request}");
        assert!(request.contains("fieldSelector=spec.nodeName%3Dnode-1"), "{request}");
    }
    assert!(!requests[0].contains("watch=true"), "{requests:?}");
    assert!(requests[1].contains("watch=true") && requests[1].contains("resourceVersion=123456"), "{requests:?}");
}

#[test]
fn a_relist_forgets_pods_deleted_while_the_watch_was_down() {
    let index = PodIndex::default();
    let list: k8s_openapi::List<Pod> = serde_json::from_str(&fixture("pods-list.json")).unwrap();
    index.apply(watcher::Event::Init);
    for pod in list.items.clone() {
        index.apply(watcher::Event::InitApply(pod));
    }
    index.apply(watcher::Event::InitDone);
    assert!(index.lookup(CHECKOUT_APP).is_some());
    // The watch restarts; the checkout pod is no longer listed.
    index.apply(watcher::Event::Init);
    assert!(index.lookup(CHECKOUT_APP).is_some(), "kept until the new list is complete");
    index.apply(watcher::Event::InitApply(list.items[1].clone()));
    index.apply(watcher::Event::InitDone);
    assert_eq!((index.lookup(CHECKOUT_APP), index.pods()), (None, 1));
}

#[tokio::test]
async fn an_in_cluster_https_client_builds_with_the_cluster_s_ca() {
    // The API server as a pod sees it: https, trusted through the service account's ca.crt. The
    // TLS setup (rustls with ring, no OpenSSL) happens when the client is made.
    let mut config = kube::Config::new("https://10.96.0.1:443".parse().unwrap());
    config.root_cert_file = Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/container/fixtures/cluster-ca.crt"));
    Client::try_from(config).expect("a client for the in-cluster API server");
}
