//! Keep-alive races with the metadata service: a server may close an idle pooled connection just
//! as NMI reuses it. The token client and the pass-through resend a GET (once, at once) when the
//! connection failed before any response; a POST, or a request that got a response, never is.
//!
//! The "metadata service" here is a bare loopback TCP server, so the test decides exactly what
//! each request on each connection gets.

mod nmi_support;

use aad_pod_identity::cloud::imds::{IdentitySelector, ImdsClient};
use nmi_support::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const BODY: &str = r#"{"access_token":"t0k3n","expires_in":"3599","expires_on":"4102444800","not_before":"1700000000","resource":"r","token_type":"Bearer"}"#;

/// What the server does with a request it has read.
#[derive(Clone, Copy, Debug)]
enum Action {
    /// A whole 200, connection kept open.
    Answer,
    /// Close the connection without answering.
    Close,
    /// Send the head and part of the body, then close.
    Partial,
}

struct Upstream {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
}

impl Upstream {
    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Starts the server; `act(n, k)` decides for the `n`th request overall (from 0) that is the
/// `k`th on its connection (from 0).
async fn upstream(act: fn(usize, usize) -> Action) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let (reqs, conns) = (requests.clone(), connections.clone());
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            conns.fetch_add(1, Ordering::SeqCst);
            let reqs = reqs.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for k in 0.. {
                    if !read_request(&mut sock, &mut buf).await {
                        return;
                    }
                    let n = reqs.fetch_add(1, Ordering::SeqCst);
                    match act(n, k) {
                        Action::Answer => {
                            let resp = format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
                                BODY.len()
                            );
                            sock.write_all(resp.as_bytes()).await.unwrap();
                        }
                        // The request was read whole, so dropping the socket sends a FIN.
                        Action::Close => return,
                        Action::Partial => {
                            let resp = format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
                                BODY.len(),
                                &BODY[..10]
                            );
                            sock.write_all(resp.as_bytes()).await.unwrap();
                            sock.flush().await.unwrap();
                            return;
                        }
                    }
                }
            });
        }
    });
    Upstream {
        addr,
        requests,
        connections,
    }
}

/// Reads one request (head and `Content-Length` body) from `sock`; false at end of stream.
async fn read_request(sock: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < head_end + len {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf.drain(..head_end + len);
    true
}

/// Answers the first request of each connection, closes on the second.
fn close_reused(_: usize, k: usize) -> Action {
    if k == 0 {
        Action::Answer
    } else {
        Action::Close
    }
}

fn imds(up: &Upstream) -> ImdsClient {
    ImdsClient::new(&up.addr.to_string())
        .unwrap()
        .with_timeout(Duration::from_secs(10))
}

#[tokio::test]
async fn imds_token_is_resent_once_when_a_reused_connection_is_closed() {
    let up = upstream(close_reused).await;
    let client = imds(&up);
    for _ in 0..2 {
        let got = client.token("r", &IdentitySelector::Node).await.unwrap();
        assert_eq!(got.status, 200);
        assert_eq!(got.token.unwrap().access_token, "t0k3n");
    }
    // The second call went out on the pooled connection, was dropped, and was resent on a
    // fresh one.
    assert_eq!((up.requests(), up.connections()), (3, 2));
}

#[tokio::test]
async fn imds_token_is_resent_only_once() {
    // Only the very first request is answered: the resend is closed too, and is not resent.
    let up = upstream(|n, _| {
        if n == 0 {
            Action::Answer
        } else {
            Action::Close
        }
    })
    .await;
    let client = imds(&up);
    client.token("r", &IdentitySelector::Node).await.unwrap();
    let err = client
        .token("r", &IdentitySelector::Node)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("transport"), "{err}");
    assert_eq!((up.requests(), up.connections()), (3, 2));
}

#[tokio::test]
async fn imds_token_is_not_resent_after_a_partial_response() {
    let up = upstream(|_, k| {
        if k == 0 {
            Action::Answer
        } else {
            Action::Partial
        }
    })
    .await;
    let client = imds(&up);
    client.token("r", &IdentitySelector::Node).await.unwrap();
    client
        .token("r", &IdentitySelector::Node)
        .await
        .expect_err("a cut-short body is an error, not resent");
    assert_eq!((up.requests(), up.connections()), (2, 1));
}

/// NMI relaying to `up`, and a pod's client.
fn nmi_to(up: &Upstream) -> (Served, reqwest::Client) {
    let mut s = settings(up.addr);
    s.token_fetch_timeout = Duration::from_secs(10);
    (
        serve(&s, FakeSource::new(Duration::ZERO)),
        client_from("127.0.0.2"),
    )
}

async fn send(c: &reqwest::Client, method: reqwest::Method, url: &str) -> (u16, String) {
    let resp = c
        .request(method, url)
        .header("Metadata", "true")
        .body("")
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_get_is_resent_once_when_a_reused_connection_is_closed() {
    let up = upstream(close_reused).await;
    let (nmi, pod) = nmi_to(&up);
    let url = format!(
        "{}/metadata/scheduledevents?api-version=2020-07-01",
        nmi.base
    );
    for _ in 0..2 {
        assert_eq!(
            send(&pod, reqwest::Method::GET, &url).await,
            (200, BODY.into())
        );
    }
    assert_eq!((up.requests(), up.connections()), (3, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_post_is_never_resent() {
    let up = upstream(close_reused).await;
    let (nmi, pod) = nmi_to(&up);
    let url = format!(
        "{}/metadata/scheduledevents?api-version=2020-07-01",
        nmi.base
    );
    assert_eq!(send(&pod, reqwest::Method::GET, &url).await.0, 200);
    let (status, body) = send(&pod, reqwest::Method::POST, &url).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!((up.requests(), up.connections()), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_get_is_not_resent_after_a_partial_response() {
    let up = upstream(|_, k| {
        if k == 0 {
            Action::Answer
        } else {
            Action::Partial
        }
    })
    .await;
    let (nmi, pod) = nmi_to(&up);
    let url = format!(
        "{}/metadata/scheduledevents?api-version=2020-07-01",
        nmi.base
    );
    assert_eq!(send(&pod, reqwest::Method::GET, &url).await.0, 200);
    let (status, body) = send(&pod, reqwest::Method::GET, &url).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!((up.requests(), up.connections()), (2, 1));
}
