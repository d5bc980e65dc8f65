//! The `aad-metadata` redirect, tested inside two network namespaces this test creates and
//! removes: a "pod" namespace joined to a "node" namespace by a veth pair, so traffic takes the
//! real PREROUTING path. The metadata address is a stand-in from TEST-NET-1 (192.0.2.254) that
//! exists only inside the node namespace; nothing leaves the namespaces.
//!
//! Needs root, `ip` and `iptables` (Debian: `apt-get install iptables iproute2`); skipped with
//! the reason printed otherwise.

use aad_pod_identity::actors::nmi::iptables::{CHAIN, Iptables, Redirect, reconcile};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const METADATA: &str = "192.0.2.254";
const NODE_IP: &str = "10.251.0.1";
const POD_IP: &str = "10.251.0.2";

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap()
}

fn must(args: &[&str]) {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The two namespaces and the listeners; removed on drop.
struct Lab {
    node: String,
    pod: String,
    listeners: Option<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.listeners.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = sh(&["ip", "netns", "del", &self.node]);
        let _ = sh(&["ip", "netns", "del", &self.pod]);
    }
}

const LISTENERS: &str = r#"
import http.server, threading, sys
def make(text):
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(text.encode())
        def log_message(self, *a): pass
    return H
servers = [http.server.ThreadingHTTPServer(("10.251.0.1", 2579), make("nmi")),
           http.server.ThreadingHTTPServer(("192.0.2.254", 80), make("metadata"))]
for s in servers: threading.Thread(target=s.serve_forever, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"#;

fn skip_reason() -> Option<String> {
    let uid = sh(&["id", "-u"]);
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not running as root".into());
    }
    for tool in ["ip", "iptables", "python3"] {
        if Command::new(tool).arg("--version").output().is_err()
            && Command::new(tool).arg("-V").output().is_err()
        {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

fn lab() -> Result<Lab, String> {
    let id = std::process::id();
    let lab = Lab {
        node: format!("nmi-node-{id}"),
        pod: format!("nmi-pod-{id}"),
        listeners: None,
    };
    let out = sh(&["ip", "netns", "add", &lab.node]);
    if !out.status.success() {
        return Err(format!(
            "cannot create network namespaces: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    must(&["ip", "netns", "add", &lab.pod]);
    let (vn, vp) = (format!("vn{id}"), format!("vp{id}"));
    must(&[
        "ip", "link", "add", &vn, "type", "veth", "peer", "name", &vp,
    ]);
    must(&["ip", "link", "set", &vn, "netns", &lab.node]);
    must(&["ip", "link", "set", &vp, "netns", &lab.pod]);
    let n = |args: &[&str]| {
        let mut v = vec!["ip", "netns", "exec", lab.node.as_str()];
        v.extend(args);
        must(&v);
    };
    let p = |args: &[&str]| {
        let mut v = vec!["ip", "netns", "exec", lab.pod.as_str()];
        v.extend(args);
        must(&v);
    };
    n(&["ip", "link", "set", "lo", "up"]);
    n(&["ip", "addr", "add", &format!("{NODE_IP}/24"), "dev", &vn]);
    n(&["ip", "link", "set", &vn, "up"]);
    // The stand-in metadata address lives on the node only.
    n(&["ip", "addr", "add", &format!("{METADATA}/32"), "dev", "lo"]);
    p(&["ip", "link", "set", "lo", "up"]);
    p(&["ip", "addr", "add", &format!("{POD_IP}/24"), "dev", &vp]);
    p(&["ip", "link", "set", &vp, "up"]);
    p(&["ip", "route", "add", "default", "via", NODE_IP]);
    Ok(lab)
}

/// GET http://<metadata>/ from inside namespace `ns`; the body says who answered.
fn fetch_from(ns: &str) -> String {
    let out = sh(&[
        "ip",
        "netns",
        "exec",
        ns,
        "python3",
        "-c",
        "import urllib.request;print(urllib.request.urlopen('http://192.0.2.254/', timeout=3).read().decode())",
    ]);
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    } else {
        format!("error: {}", String::from_utf8_lossy(&out.stderr).trim())
    }
}

fn chain_exists(ns: &str) -> bool {
    sh(&[
        "ip", "netns", "exec", ns, "iptables", "-t", "nat", "-n", "-L", CHAIN,
    ])
    .status
    .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_traffic_to_the_metadata_address_reaches_nmi_and_host_traffic_does_not() {
    if let Some(reason) = skip_reason() {
        println!("SKIPPED: {reason}");
        return;
    }
    let mut lab = match lab() {
        Ok(l) => l,
        Err(reason) => {
            println!("SKIPPED: {reason}");
            return;
        }
    };
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.node, "python3", "-c", LISTENERS])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead as _;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
    }
    lab.listeners = Some(child);

    assert_eq!(
        fetch_from(&lab.pod),
        "metadata",
        "before the rules, pods reach the metadata service"
    );

    let ipt = Iptables::new(Redirect {
        metadata_ip: METADATA.parse().unwrap(),
        metadata_port: 80,
        target_ip: NODE_IP.parse().unwrap(),
        target_port: 2579,
    })
    .with_prefix(vec![
        "ip".into(),
        "netns".into(),
        "exec".into(),
        lab.node.clone(),
    ]);

    assert!(
        ipt.ensure().await.unwrap(),
        "first install changes something"
    );
    assert!(ipt.in_place().await.unwrap());
    assert!(
        !ipt.ensure().await.unwrap(),
        "a second pass changes nothing"
    );
    assert_eq!(
        fetch_from(&lab.pod),
        "nmi",
        "pod traffic is redirected to NMI"
    );
    assert_eq!(
        fetch_from(&lab.node),
        "metadata",
        "host traffic (OUTPUT) is not redirected"
    );

    // Someone flushes the chain: the next pass restores it.
    must(&[
        "ip", "netns", "exec", &lab.node, "iptables", "-t", "nat", "-F", CHAIN,
    ]);
    assert!(!ipt.in_place().await.unwrap());
    assert!(ipt.ensure().await.unwrap());
    assert_eq!(fetch_from(&lab.pod), "nmi");

    // The reconcile loop repairs a removed jump within an interval and cleans up on shutdown.
    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(reconcile(
        ipt.clone(),
        Duration::from_millis(100),
        false,
        Arc::clone(&ready),
        shutdown.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.load(Ordering::Acquire) {
        assert!(Instant::now() < deadline, "reconciler never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    must(&[
        "ip",
        "netns",
        "exec",
        &lab.node,
        "iptables",
        "-t",
        "nat",
        "-D",
        "PREROUTING",
        "-j",
        CHAIN,
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ipt.in_place().await.unwrap() {
        assert!(
            Instant::now() < deadline,
            "reconciler never restored the jump"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fetch_from(&lab.pod), "nmi");

    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert!(!ready.load(Ordering::Acquire));
    assert!(!chain_exists(&lab.node), "the chain is removed on shutdown");
    assert_eq!(
        fetch_from(&lab.pod),
        "metadata",
        "after shutdown pods reach the metadata service again"
    );
    ipt.remove().await.unwrap();
}
