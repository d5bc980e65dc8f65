//! What NMI writes to its log when the metadata pass-through fails: the method, the path, the
//! kind of failure and the status answered, never the request's query (text a possibly hostile
//! pod chose: `client_id`, `resource`, anything) nor the upstream URL that carries it.
//!
//! The log is captured by a global subscriber writing to a buffer: actix-web serves on threads
//! of its own, so a thread-local subscriber would hear nothing.

mod nmi_support;

use aad_pod_identity::nmi::NmiSettings;
use nmi_support::*;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Everything logged by this test binary, at debug and above.
fn captured() -> Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buf);
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || Sink(Arc::clone(&sink)))
            .init();
        buf
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A loopback address nothing listens on: bound by the OS, then released.
fn closed_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// The log lines mentioning `marker` (each test uses its own path, so tests running in one
/// process do not read each other's lines).
fn lines_with(marker: &str) -> Vec<String> {
    let buf = captured();
    let text = String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| l.contains(marker))
        .map(str::to_string)
        .collect()
}

const QUERY: &str = "client_id=hostile-client-id-in-query&resource=https%3A%2F%2Fvault.example%2F&secret-looking=do-not-log";

fn assert_no_query(lines: &[String]) {
    for needle in [
        "hostile-client-id-in-query",
        "vault.example",
        "do-not-log",
        "client_id=",
        "resource=",
    ] {
        for l in lines {
            assert!(!l.contains(needle), "log line shows {needle:?}: {l}");
        }
    }
}

/// Sends `GET {path}?{QUERY}` from pod address 127.0.0.2 to an NMI with settings `s` (whose
/// metadata service fails), checks the answer is a 500 and no log line about `path` shows the
/// query, and returns the answer's body and the one warning logged about it.
async fn failed_pass_through(s: &NmiSettings, path: &str) -> (String, String) {
    let w = serve(s, FakeSource::new(Duration::ZERO));
    let resp = client_from("127.0.0.2")
        .get(format!("{}{path}?{QUERY}", w.base))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 500);
    let body = resp.text().await.unwrap();
    let lines = lines_with(path);
    assert_no_query(&lines);
    let warn: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("metadata pass-through failed"))
        .collect();
    assert_eq!(warn.len(), 1, "{lines:#?}");
    (body, warn[0].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pass_through_logs_path_kind_and_status_but_not_the_query() {
    captured();
    let (body, w) = failed_pass_through(&settings(closed_port()), "/metadata/refused-marker").await;
    // Nor does the pod's query come back in the answer's body.
    assert!(!body.contains("hostile-client-id-in-query"), "{body}");
    assert!(body.contains("cannot connect"), "{body}");
    assert!(w.contains("WARN"), "{w}");
    assert!(w.contains("method=GET"), "{w}");
    assert!(w.contains("failure=\"connect\""), "{w}");
    assert!(w.contains("status=500"), "{w}");
    // What the operator needs to know: the connection was refused.
    assert!(w.to_ascii_lowercase().contains("refused"), "{w}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_through_that_times_out_logs_a_timeout_and_not_the_query() {
    captured();
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let mut s = settings(addr);
    s.token_fetch_timeout = Duration::from_millis(300);
    let (_, w) = failed_pass_through(&s, "/metadata/silent-marker").await;
    assert!(w.contains("failure=\"timeout\""), "{w}");
    held.abort();
}
