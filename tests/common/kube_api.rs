//! A fake Kubernetes API server for discovery tests: one Service's EndpointSlices in the real JSON
//! of `discovery.k8s.io/v1`, listed and watched (chunked, one event a line) over plain HTTP/1.1.
//! The client side is the real `kube` crate, pointed here by a kubeconfig.
//!
//! The test moves the endpoints (each move is a MODIFIED event to every open watch), and can answer
//! a watch with 410 Gone, drop every watch, refuse everything with 403, or stop answering.

use parking_lot::Mutex;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

pub const NAMESPACE: &str = "testns";
pub const SERVICE: &str = "pg-rw";

#[derive(Clone)]
enum Push {
    Line(String),
    Close,
}

struct State {
    /// (address, ready) of each endpoint; the slice's port is `port`.
    endpoints: Mutex<(Vec<(String, bool)>, u16)>,
    version: AtomicU64,
    forbidden: AtomicBool,
    down: AtomicBool,
    lists: AtomicUsize,
    watches: AtomicUsize,
    events: broadcast::Sender<Push>,
}

pub struct FakeApi {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl State {
    fn slice(&self) -> serde_json::Value {
        let (endpoints, port) = self.endpoints.lock().clone();
        let rv = self.version.load(Ordering::SeqCst).to_string();
        serde_json::json!({
            "kind": "EndpointSlice",
            "apiVersion": "discovery.k8s.io/v1",
            "metadata": {
                "name": format!("{SERVICE}-abcde"),
                "namespace": NAMESPACE,
                "resourceVersion": rv,
                "labels": {"kubernetes.io/service-name": SERVICE}
            },
            "addressType": "IPv4",
            "endpoints": endpoints.iter().map(|(a, ready)| serde_json::json!({
                "addresses": [a],
                "conditions": {"ready": ready, "serving": ready, "terminating": false},
                "targetRef": {"kind": "Pod", "name": format!("pg-{a}"), "namespace": NAMESPACE}
            })).collect::<Vec<_>>(),
            "ports": [{"name": "postgres", "port": port, "protocol": "TCP"}]
        })
    }
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await
}

async fn serve(stream: TcpStream, state: Arc<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request).await? == 0 {
            return Ok(());
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).await? == 0 || header == "\r\n" {
                break;
            }
        }
        let stream = reader.get_mut();
        if state.down.load(Ordering::SeqCst) {
            return Ok(()); // hang up, as an unreachable server would
        }
        let target = request.split(' ').nth(1).unwrap_or("").to_owned();
        let status = |code: u16, reason: &str| {
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": reason, "reason": reason, "code": code})
            .to_string()
        };
        if state.forbidden.load(Ordering::SeqCst) {
            respond(stream, "403 Forbidden", &status(403, "Forbidden")).await?;
            continue;
        }
        let path = format!("/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices");
        if !target.starts_with(&path) || !target.contains(&format!("service-name%3D{SERVICE}")) {
            respond(stream, "404 Not Found", &status(404, "NotFound")).await?;
            continue;
        }
        if !target.contains("watch=true") {
            state.lists.fetch_add(1, Ordering::SeqCst);
            let list = serde_json::json!({
                "kind": "EndpointSliceList",
                "apiVersion": "discovery.k8s.io/v1",
                "metadata": {"resourceVersion": state.version.load(Ordering::SeqCst).to_string()},
                "items": [state.slice()]
            });
            respond(stream, "200 OK", &list.to_string()).await?;
            continue;
        }
        // A watch: chunked, one JSON event per line, until told to close.
        state.watches.fetch_add(1, Ordering::SeqCst);
        let mut events = state.events.subscribe();
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await?;
        loop {
            match events.recv().await {
                Ok(Push::Line(line)) => {
                    let chunk = format!("{:x}\r\n{line}\n\r\n", line.len() + 1);
                    stream.write_all(chunk.as_bytes()).await?;
                }
                Ok(Push::Close) | Err(_) => {
                    stream.write_all(b"0\r\n\r\n").await?;
                    return Ok(());
                }
            }
        }
    }
}

impl FakeApi {
    /// Serves one Service whose slice lists `endpoints` (all ready) on `port`.
    pub async fn start(endpoints: &[&str], port: u16) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            endpoints: Mutex::new((
                endpoints.iter().map(|a| (a.to_string(), true)).collect(),
                port,
            )),
            version: AtomicU64::new(100),
            forbidden: AtomicBool::new(false),
            down: AtomicBool::new(false),
            lists: AtomicUsize::new(0),
            watches: AtomicUsize::new(0),
            events: broadcast::channel(64).0,
        });
        let task = {
            let state = state.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((s, _)) = listener.accept().await else {
                        return;
                    };
                    tokio::spawn(serve(s, state.clone()));
                }
            })
        };
        FakeApi { addr, state, task }
    }

    /// A kubeconfig that points kube at this server.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {NAMESPACE}\n\
                 current-context: fake\nusers:\n- name: fake\n  user:\n    token: test-token\n",
                self.addr
            ),
        )
        .unwrap();
        path
    }

    fn push(&self, kind: &str, object: serde_json::Value) {
        let line = serde_json::json!({"type": kind, "object": object}).to_string();
        let _ = self.state.events.send(Push::Line(line));
    }

    /// Moves the endpoints: `(address, ready)`; every open watch hears a MODIFIED event.
    pub fn set(&self, endpoints: &[(&str, bool)]) {
        self.state.endpoints.lock().0 =
            endpoints.iter().map(|(a, r)| (a.to_string(), *r)).collect();
        self.state.version.fetch_add(1, Ordering::SeqCst);
        self.push("MODIFIED", self.state.slice());
    }

    /// Changes the endpoints without telling the watches (a relist must find it).
    pub fn set_quietly(&self, endpoints: &[(&str, bool)]) {
        self.state.endpoints.lock().0 =
            endpoints.iter().map(|(a, r)| (a.to_string(), *r)).collect();
        self.state.version.fetch_add(1, Ordering::SeqCst);
    }

    pub fn bookmark(&self) {
        let rv = self.state.version.fetch_add(1, Ordering::SeqCst) + 1;
        self.push(
            "BOOKMARK",
            serde_json::json!({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                "metadata": {"resourceVersion": rv.to_string()}}),
        );
    }

    /// What a real API server says to a watch whose resourceVersion is too old: 200 + ERROR 410.
    pub fn gone(&self) {
        self.push(
            "ERROR",
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": "too old resource version", "reason": "Expired", "code": 410}),
        );
    }

    /// Ends every open watch (the client re-watches from its last resourceVersion).
    pub fn drop_watches(&self) {
        let _ = self.state.events.send(Push::Close);
    }

    pub fn forbid(&self) {
        self.state.forbidden.store(true, Ordering::SeqCst);
    }

    pub fn lists(&self) -> usize {
        self.state.lists.load(Ordering::SeqCst)
    }

    pub fn watches(&self) -> usize {
        self.state.watches.load(Ordering::SeqCst)
    }

    /// Stops answering: connections are hung up on and every watch ends, until [`FakeApi::resume`].
    pub fn stop(&self) {
        self.state.down.store(true, Ordering::SeqCst);
        self.drop_watches();
    }

    pub fn resume(&self) {
        self.state.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop();
        self.task.abort();
    }
}
