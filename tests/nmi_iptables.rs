//! The `aad-metadata` redirect, tested inside two network namespaces this test creates and
//! removes: a "pod" namespace joined to a "node" namespace by a veth pair, so traffic takes the
//! real PREROUTING path. The metadata address is a stand-in from TEST-NET-1 (192.0.2.254) that
//! exists only inside the node namespace; nothing leaves the namespaces.
//!
//! Needs root, `ip`, `iptables`, `conntrack` and `setpriv` (Debian: `apt-get install iptables
//! iproute2 conntrack util-linux`); skipped with the reason printed otherwise (fails in CI).
//!
//! The node-gate test adds an in-process Kubernetes simulator on loopback (the node object whose
//! taint NMI lifts) and makes iptables fail on demand the way it fails on a real node that lost
//! `NET_ADMIN`: while a flag file exists, every command the reconciler runs in the node
//! namespace runs without that capability.

use aad_pod_identity::actors::nmi::gate::{self, GateInputs};
use aad_pod_identity::actors::nmi::iptables::{
    Backend, CHAIN, Iptables, ROUTE_LOCALNET, ReconcileSettings, Redirect, RulesState, reconcile,
};
use aad_pod_identity_sim::kube::{KubeSim, KubeSimConfig};
use aad_pod_identity_sim::topology::Topology;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
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

/// The two namespaces, the listeners and a scratch directory; removed on drop.
struct Lab {
    node: String,
    pod: String,
    listeners: Option<Child>,
    dir: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.listeners.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = sh(&["ip", "netns", "del", &self.node]);
        let _ = sh(&["ip", "netns", "del", &self.pod]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Lab {
    /// `args` run inside the node namespace.
    fn node_cmd(&self, args: &[&str]) -> std::process::Output {
        let mut v = vec!["ip", "netns", "exec", self.node.as_str()];
        v.extend(args);
        sh(&v)
    }

    /// Commands prefixed to run in the node namespace with full privileges.
    fn prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.node]
            .map(String::from)
            .to_vec()
    }

    /// Commands prefixed to run in the node namespace, without `NET_ADMIN` while the file
    /// [`Lab::deny_flag`] exists (as on a node where NMI lost the capability).
    fn deniable_prefix(&self) -> Vec<String> {
        let script = format!(
            "if [ -e '{}' ]; then exec setpriv --inh-caps=-net_admin --bounding-set=-net_admin -- \"$@\"; fi; exec \"$@\"",
            self.deny_flag().display()
        );
        let mut p = self.prefix();
        p.extend(["sh".into(), "-c".into(), script, "sh".into()]);
        p
    }

    fn deny_flag(&self) -> PathBuf {
        self.dir.join("deny")
    }

    fn deny(&self, on: bool) {
        if on {
            std::fs::write(self.deny_flag(), b"").unwrap();
        } else {
            std::fs::remove_file(self.deny_flag()).unwrap();
        }
    }

    fn iptables(&self, target_ip: &str, prefix: Vec<String>) -> Iptables {
        Iptables::new(Redirect {
            metadata_ip: METADATA.parse().unwrap(),
            metadata_port: 80,
            target_ip: target_ip.parse().unwrap(),
            target_port: 2579,
        })
        .with_prefix(prefix)
    }

    /// `iptables -t nat -S <chain>` in the node namespace, rule lines only.
    fn rules(&self, chain: &str) -> Vec<String> {
        let out = self.node_cmd(&["iptables", "-t", "nat", "-S", chain]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("-A "))
            .map(str::to_string)
            .collect()
    }
}

const LISTENERS: &str = r#"
import http.server, threading, sys
def make(text):
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            body = text.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a): pass
    return H
servers = [http.server.ThreadingHTTPServer((sys.argv[1], 2579), make("nmi")),
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
    for tool in [
        "ip",
        "iptables",
        "python3",
        "conntrack",
        "setpriv",
        "sysctl",
    ] {
        if Command::new(tool).arg("--version").output().is_err()
            && Command::new(tool).arg("-V").output().is_err()
        {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

fn lab(tag: &str) -> Result<Lab, String> {
    let id = std::process::id();
    let dir = std::env::temp_dir().join(format!("nmi-lab{tag}-{id}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let lab = Lab {
        node: format!("nmi-node{tag}-{id}"),
        pod: format!("nmi-pod{tag}-{id}"),
        listeners: None,
        dir,
    };
    let out = sh(&["ip", "netns", "add", &lab.node]);
    if !out.status.success() {
        return Err(format!(
            "cannot create network namespaces: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    must(&["ip", "netns", "add", &lab.pod]);
    let (vn, vp) = (format!("vn{tag}{id}"), format!("vp{tag}{id}"));
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

/// Creates the lab with the listeners ("nmi" on `nmi_ip`:2579, "metadata" on the stand-in).
/// Skips (printing why) on a developer machine that cannot run the lab; fails in CI (`CI` is
/// set there), where root, iproute2 and iptables are always available.
fn skip(reason: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "the iptables lab must run in CI, but: {reason}"
    );
    println!("SKIPPED: {reason}");
}

fn lab_with_listeners(tag: &str, nmi_ip: &str) -> Option<Lab> {
    if let Some(reason) = skip_reason() {
        skip(&reason);
        return None;
    }
    let mut lab = match lab(tag) {
        Ok(l) => l,
        Err(reason) => {
            skip(&reason);
            return None;
        }
    };
    let mut child = Command::new("ip")
        .args([
            "netns", "exec", &lab.node, "python3", "-c", LISTENERS, nmi_ip,
        ])
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
    Some(lab)
}

/// A running reconciler: its shutdown, its published state, its task.
struct Reconciler {
    shutdown: CancellationToken,
    state: watch::Receiver<RulesState>,
    ready: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<(), aad_pod_identity::actors::nmi::iptables::Error>>,
}

impl Reconciler {
    fn spawn(ipt: &Iptables, interval: Duration, delete_conntrack: bool) -> Self {
        let shutdown = CancellationToken::new();
        let ready = Arc::new(AtomicBool::new(false));
        let (tx, state) = watch::channel(RulesState::Unknown);
        let task = tokio::spawn(reconcile(
            ipt.clone(),
            ReconcileSettings {
                interval,
                delete_conntrack,
            },
            Arc::clone(&ready),
            tx,
            shutdown.clone(),
        ));
        Self {
            shutdown,
            state,
            ready,
            task,
        }
    }

    /// Waits (on the published state, 10 s at most) until it is `want`.
    async fn until(&mut self, want: RulesState) {
        tokio::time::timeout(Duration::from_secs(10), self.state.wait_for(|s| *s == want))
            .await
            .unwrap_or_else(|_| panic!("the rules never became {want:?}"))
            .unwrap();
    }

    /// Stops it (it removes the rules) and fails on its error.
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nmi_on_loopback_is_reached_through_route_localnet() {
    // The default listen address is 127.0.0.1: the DNAT target is then loopback, which works
    // only with route_localnet, which ensure() turns on.
    let Some(lab) = lab_with_listeners("l", "127.0.0.1") else {
        return;
    };
    assert_eq!(fetch_from(&lab.pod), "metadata");
    let ipt = Iptables::new(Redirect {
        metadata_ip: METADATA.parse().unwrap(),
        metadata_port: 80,
        target_ip: "127.0.0.1".parse().unwrap(),
        target_port: 2579,
    })
    .with_prefix(vec![
        "ip".into(),
        "netns".into(),
        "exec".into(),
        lab.node.clone(),
    ]);
    ipt.ensure().await.unwrap();
    assert_eq!(fetch_from(&lab.pod), "nmi");
    assert_eq!(fetch_from(&lab.node), "metadata");
    ipt.remove().await.unwrap();
    assert!(!chain_exists(&lab.node));
    assert_eq!(fetch_from(&lab.pod), "metadata");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_traffic_to_the_metadata_address_reaches_nmi_and_host_traffic_does_not() {
    let Some(lab) = lab_with_listeners("", NODE_IP) else {
        return;
    };

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
    let mut r = Reconciler::spawn(&ipt, Duration::from_millis(100), false);
    r.until(RulesState::InPlace).await;
    assert!(r.ready.load(Ordering::Acquire));
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

    let ready = Arc::clone(&r.ready);
    r.stop().await;
    assert!(!ready.load(Ordering::Acquire));
    assert!(!chain_exists(&lab.node), "the chain is removed on shutdown");
    assert_eq!(
        fetch_from(&lab.pod),
        "metadata",
        "after shutdown pods reach the metadata service again"
    );
    ipt.remove().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jump_is_first_in_prerouting_and_the_chain_has_the_originals_shape() {
    let Some(lab) = lab_with_listeners("j", NODE_IP) else {
        return;
    };
    // Something already in PREROUTING that would take the pod's metadata traffic before an
    // appended jump could (here: accept it untranslated).
    let divert = ["-p", "tcp", "-d", METADATA, "--dport", "80", "-j", "ACCEPT"];
    let mut append = vec!["iptables", "-t", "nat", "-A", "PREROUTING"];
    append.extend(divert);
    assert!(lab.node_cmd(&append).status.success());
    assert_eq!(fetch_from(&lab.pod), "metadata");

    let ipt = lab.iptables(NODE_IP, lab.prefix());
    ipt.ensure().await.unwrap();
    assert_eq!(
        fetch_from(&lab.pod),
        "nmi",
        "the jump comes before the rule already there"
    );
    let prerouting = lab.rules("PREROUTING");
    assert_eq!(prerouting[0], format!("-A PREROUTING -j {CHAIN}"));
    assert_eq!(
        lab.rules(CHAIN),
        vec![
            format!(
                "-A {CHAIN} ! -s 127.0.0.1/32 -d {METADATA}/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination {NODE_IP}:2579"
            ),
            format!("-A {CHAIN} -j RETURN"),
        ]
    );

    // Someone inserts a rule above the jump: the next pass puts the jump back on top.
    let mut insert = vec!["iptables", "-t", "nat", "-I", "PREROUTING", "1"];
    insert.extend(divert);
    assert!(lab.node_cmd(&insert).status.success());
    assert_eq!(fetch_from(&lab.pod), "metadata");
    assert!(!ipt.in_place().await.unwrap());
    assert!(ipt.ensure().await.unwrap());
    assert!(ipt.in_place().await.unwrap());
    let prerouting = lab.rules("PREROUTING");
    assert_eq!(prerouting[0], format!("-A PREROUTING -j {CHAIN}"));
    assert_eq!(
        prerouting
            .iter()
            .filter(|r| r.ends_with(&format!("-j {CHAIN}")))
            .count(),
        1,
        "exactly one jump: {prerouting:?}"
    );
    assert_eq!(fetch_from(&lab.pod), "nmi");

    // A chain with an extra rule is rewritten to exactly its two rules.
    assert!(
        lab.node_cmd(&["iptables", "-t", "nat", "-I", CHAIN, "1", "-j", "RETURN"])
            .status
            .success()
    );
    assert!(!ipt.in_place().await.unwrap());
    assert!(ipt.ensure().await.unwrap());
    assert_eq!(lab.rules(CHAIN).len(), 2);
    ipt.remove().await.unwrap();
    assert!(!chain_exists(&lab.node));
    assert_eq!(
        lab.rules("PREROUTING").len(),
        2,
        "only the two diverting rules stay"
    );
}

fn route_localnet(lab: &Lab) -> String {
    let out = lab.node_cmd(&["sysctl", "-n", ROUTE_LOCALNET]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_localnet_is_put_back_as_nmi_found_it_when_the_rules_are_removed() {
    let Some(lab) = lab_with_listeners("r", "127.0.0.1") else {
        return;
    };
    let set = |v: &str| {
        let kv = format!("{ROUTE_LOCALNET}={v}");
        assert!(lab.node_cmd(&["sysctl", "-q", "-w", &kv]).status.success());
    };
    set("0");
    let ipt = lab.iptables("127.0.0.1", lab.prefix());
    ipt.ensure().await.unwrap();
    assert_eq!(route_localnet(&lab), "1", "needed for DNAT to loopback");
    assert_eq!(fetch_from(&lab.pod), "nmi");
    // A second pass finds its own 1 and must still restore the 0 found first.
    ipt.ensure().await.unwrap();
    ipt.remove().await.unwrap();
    assert_eq!(route_localnet(&lab), "0", "restored when NMI stops");

    // Already on before NMI: left on.
    set("1");
    let ipt = lab.iptables("127.0.0.1", lab.prefix());
    ipt.ensure().await.unwrap();
    ipt.remove().await.unwrap();
    assert_eq!(route_localnet(&lab), "1");
}

/// A pod process holding one keep-alive connection to the metadata address: it answers the
/// first request, waits for a line on stdin, then sends a second request on the same
/// connection. Prints one line per answer (the body, or `error: <kind>`).
const KEEPALIVE_CLIENT: &str = r#"
import http.client, sys
c = http.client.HTTPConnection("192.0.2.254", 80, timeout=3)
def get():
    try:
        c.request("GET", "/")
        return c.getresponse().read().decode()
    except Exception as e:
        return "error: " + type(e).__name__
print(get(), flush=True)
sys.stdin.readline()
print(get(), flush=True)
"#;

/// Opens the pod's keep-alive connection; returns the process and the first answer.
fn open_keepalive(lab: &Lab) -> (Child, std::io::BufReader<std::process::ChildStdout>, String) {
    use std::io::BufRead as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.pod, "python3", "-c", KEEPALIVE_CLIENT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    (child, out, first.trim().to_string())
}

/// Lets the keep-alive client send its second request; returns its answer.
fn second_request(
    mut child: Child,
    mut out: std::io::BufReader<std::process::ChildStdout>,
) -> String {
    use std::io::{BufRead as _, Write as _};
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let _ = child.wait();
    line.trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_opened_before_the_rules_stop_reaching_the_metadata_service_when_they_go_in() {
    let Some(lab) = lab_with_listeners("c", NODE_IP) else {
        return;
    };
    // A real node already tracks connections before NMI starts (kube-proxy's and the CNI's
    // stateful rules); without such a rule this kernel would not track the pod's connection.
    assert!(
        lab.node_cmd(&[
            "iptables",
            "-A",
            "INPUT",
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED",
            "-j",
            "ACCEPT",
        ])
        .status
        .success()
    );
    let ipt = lab.iptables(NODE_IP, lab.prefix());

    // Without deletion: the connection opened before the redirect keeps its old destination.
    let (child, out, first) = open_keepalive(&lab);
    assert_eq!(first, "metadata");
    let mut r = Reconciler::spawn(&ipt, Duration::from_secs(60), false);
    r.until(RulesState::InPlace).await;
    assert_eq!(
        fetch_from(&lab.pod),
        "nmi",
        "new connections are redirected"
    );
    assert_eq!(
        second_request(child, out),
        "metadata",
        "the old connection bypasses NMI: the race conntrack deletion closes"
    );
    r.stop().await;

    // With deletion, when the rules go in: the old connection cannot reach the metadata
    // service any more (its next packet is translated to NMI, which knows no such connection).
    let (child, out, first) = open_keepalive(&lab);
    assert_eq!(first, "metadata");
    let mut r = Reconciler::spawn(&ipt, Duration::from_secs(60), true);
    r.until(RulesState::InPlace).await;
    let second = second_request(child, out);
    assert!(
        second.starts_with("error"),
        "old connection answered: {second}"
    );
    assert_eq!(fetch_from(&lab.pod), "nmi");
    r.stop().await;

    // And whenever they go in again: the rules vanish, a pod connects directly meanwhile, and
    // the reconciler's repair deletes that connection's entry too. (NMI is kept from repairing
    // until the connection is open by taking NET_ADMIN away meanwhile.)
    let ipt = lab.iptables(NODE_IP, lab.deniable_prefix());
    let mut r = Reconciler::spawn(&ipt, Duration::from_millis(100), true);
    r.until(RulesState::InPlace).await;
    lab.deny(true);
    assert!(
        lab.node_cmd(&["iptables", "-t", "nat", "-D", "PREROUTING", "-j", CHAIN])
            .status
            .success()
    );
    let (child, out, first) = open_keepalive(&lab);
    assert_eq!(first, "metadata", "the window while the rules are missing");
    r.until(RulesState::Broken).await;
    lab.deny(false);
    r.until(RulesState::InPlace).await;
    let second = second_request(child, out);
    assert!(
        second.starts_with("error"),
        "a connection opened while the rules were missing still answered: {second}"
    );
    assert_eq!(fetch_from(&lab.pod), "nmi");
    r.stop().await;
}

/// The keys of a node's taints.
fn taint_keys(n: &Node) -> Vec<String> {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|t| t.iter().map(|t| t.key.clone()).collect())
        .unwrap_or_default()
}

/// Waits (on the node watch) until `pred` holds for the node's taint keys; returns the
/// resourceVersion of the node version that satisfied it.
async fn node_taints_until(
    nodes: &Api<Node>,
    name: &str,
    what: &str,
    pred: impl Fn(&[String]) -> bool,
) -> String {
    use futures::StreamExt as _;
    use kube::runtime::watcher;
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher::watcher(nodes.clone(), cfg);
    let mut stream = std::pin::pin!(stream);
    let wait = async {
        while let Some(ev) = stream.next().await {
            if let Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) = ev {
                let keys = taint_keys(&n);
                if pred(&keys) {
                    return n.metadata.resource_version.unwrap_or_default();
                }
            }
        }
        panic!("node watch ended");
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting until {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_taint_is_lifted_only_once_the_rules_are_verified_and_put_back_when_they_cannot_be_restored()
 {
    let Some(lab) = lab_with_listeners("g", NODE_IP) else {
        return;
    };
    let topology = Topology::sized(1, 1, 0, 0);
    let node = topology.nodes()[0].name.clone();
    let sim = KubeSim::start(KubeSimConfig {
        topology,
        run_cluster: false,
        ..KubeSimConfig::default()
    })
    .await
    .unwrap();
    let client = sim.client().await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let key = gate::DEFAULT_TAINT_KEY;
    // The node joins tainted, as its node pool's configuration says.
    nodes
        .patch(
            &node,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"taints": [
                {"key": key, "value": "true", "effect": "NoSchedule"},
                {"key": "dedicated", "value": "identity", "effect": "NoSchedule"},
            ]}})),
        )
        .await
        .unwrap();

    // NMI cannot install its rules at first (no NET_ADMIN).
    lab.deny(true);
    let ipt = lab.iptables(NODE_IP, lab.deniable_prefix());
    let mut r = Reconciler::spawn(&ipt, Duration::from_millis(100), true);
    let shutdown = r.shutdown.clone();
    let gate_task = tokio::spawn(gate::run(
        client.clone(),
        node.clone(),
        key.to_string(),
        GateInputs {
            caches_synced: Arc::new(|| true),
            synced_changed: Arc::new(Notify::new()),
            rules: r.state.clone(),
        },
        None,
        shutdown.clone(),
    ));
    let checker = lab.iptables(NODE_IP, lab.prefix());
    r.until(RulesState::Broken).await;
    // Two more failed passes (the gate has seen each state change by now).
    for _ in 0..2 {
        r.state.changed().await.unwrap_or(());
    }
    let keys = taint_keys(&nodes.get(&node).await.unwrap());
    assert!(
        keys.iter().any(|k| k == key),
        "taint kept while the rules fail: {keys:?}"
    );
    assert!(!checker.in_place().await.unwrap());
    assert_eq!(fetch_from(&lab.pod), "metadata");

    // NMI gets its capability: the rules go in, are verified, and only then the taint goes.
    lab.deny(false);
    node_taints_until(&nodes, &node, "the taint is lifted", |k| {
        !k.iter().any(|k| k == key)
    })
    .await;
    assert!(
        checker.in_place().await.unwrap(),
        "the rules were verified before the taint went"
    );
    assert_eq!(fetch_from(&lab.pod), "nmi");
    let keys = taint_keys(&nodes.get(&node).await.unwrap());
    assert_eq!(keys, ["dedicated"], "other taints are left alone");

    // The rules are removed and NMI cannot put them back: the taint returns.
    lab.deny(true);
    assert!(
        lab.node_cmd(&["iptables", "-t", "nat", "-D", "PREROUTING", "-j", CHAIN])
            .status
            .success()
    );
    assert!(
        lab.node_cmd(&["iptables", "-t", "nat", "-F", CHAIN])
            .status
            .success()
    );
    assert_eq!(fetch_from(&lab.pod), "metadata");
    node_taints_until(&nodes, &node, "the taint is put back", |k| {
        k.iter().any(|k| k == key)
    })
    .await;
    assert_eq!(*r.state.borrow(), RulesState::Broken);

    // Restorable again: the rules return and the taint goes once more.
    lab.deny(false);
    node_taints_until(&nodes, &node, "the taint is lifted again", |k| {
        !k.iter().any(|k| k == key)
    })
    .await;
    assert!(checker.in_place().await.unwrap());
    assert_eq!(fetch_from(&lab.pod), "nmi");

    r.stop().await;
    gate_task.await.unwrap();
    assert!(!chain_exists(&lab.node));
    sim.shutdown().await;
}

/// On a node whose kubelet (and kube-proxy) use iptables-legacy, rules written with
/// iptables-nft would sit in tables the packets never pass. NMI finds the backend where the
/// kubelet created its canary chain and redirects through that one: the pod's request reaches
/// NMI, and the chain exists in legacy and not in nft.
#[tokio::test]
async fn on_a_legacy_node_the_redirect_goes_into_the_legacy_tables() {
    let Some(lab) = lab_with_listeners("l", NODE_IP) else {
        return;
    };
    for tool in ["iptables-legacy", "iptables-nft"] {
        if !lab.node_cmd(&[tool, "--version"]).status.success() {
            skip(&format!("{tool} is not installed"));
            return;
        }
    }
    // What the kubelet creates at start (Kubernetes 1.17 and later), in the legacy backend.
    assert!(
        lab.node_cmd(&[
            "iptables-legacy",
            "-t",
            "mangle",
            "-N",
            "KUBE-KUBELET-CANARY"
        ])
        .status
        .success()
    );
    let ipt = lab.iptables(NODE_IP, lab.prefix());
    assert_eq!(ipt.backend().await, Backend::Legacy);
    ipt.ensure().await.unwrap();
    assert!(ipt.in_place().await.unwrap());
    assert_eq!(fetch_from(&lab.pod), "nmi", "the pod's request reaches NMI");
    let has_chain = |tool: &str| {
        let out = lab.node_cmd(&[tool, "-t", "nat"]);
        String::from_utf8_lossy(&out.stdout).contains(&format!("\n:{CHAIN} "))
    };
    assert!(has_chain("iptables-legacy-save"), "rules in legacy");
    assert!(!has_chain("iptables-nft-save"), "nothing in nft");
    ipt.remove().await.unwrap();
    assert!(!has_chain("iptables-legacy-save"));
    // The legacy tables are the kernel's, not the namespace's nft state: clean them up.
    let _ = lab.node_cmd(&[
        "iptables-legacy",
        "-t",
        "mangle",
        "-X",
        "KUBE-KUBELET-CANARY",
    ]);
}

/// A node with the kubelet's canary chain in nft (today's default) gets its rules in nft.
#[tokio::test]
async fn on_an_nft_node_the_redirect_goes_into_the_nft_tables() {
    let Some(lab) = lab_with_listeners("f", NODE_IP) else {
        return;
    };
    for tool in ["iptables-legacy", "iptables-nft"] {
        if !lab.node_cmd(&[tool, "--version"]).status.success() {
            skip(&format!("{tool} is not installed"));
            return;
        }
    }
    assert!(
        lab.node_cmd(&["iptables-nft", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT"])
            .status
            .success()
    );
    let ipt = lab
        .iptables(NODE_IP, lab.prefix())
        .with_backend(Backend::Auto);
    assert_eq!(ipt.backend().await, Backend::Nft);
    ipt.ensure().await.unwrap();
    assert_eq!(fetch_from(&lab.pod), "nmi");
    let out = lab.node_cmd(&["iptables-nft-save", "-t", "nat"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("\n:{CHAIN} ")));
    ipt.remove().await.unwrap();
}
