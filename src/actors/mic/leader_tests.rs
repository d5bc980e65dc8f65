//! Leader election under a stalled API connection, on a paused clock: each replica talks to one
//! shared in-memory Lease store through its own connection, which a test can make hang (every
//! request on it waits for good, as on a half-open TCP connection with no read timeout).

use super::*;
use crate::actors::mic::heartbeat::Heartbeat;
use http_body_util::BodyExt as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const NS: &str = "default";
const NAME: &str = "mic";

/// The Lease as the API server stores it: the object and its resourceVersion.
#[derive(Default)]
struct Store {
    lease: Option<serde_json::Value>,
    version: u64,
}

/// One replica's connection to the shared store.
struct Connection {
    store: Arc<Mutex<Store>>,
    hung: Arc<AtomicBool>,
}

fn status(code: u16, reason: &str) -> http::Response<kube::client::Body> {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": reason, "code": code, "message": reason,
    });
    http::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(kube::client::Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn ok(code: u16, v: &serde_json::Value) -> http::Response<kube::client::Body> {
    http::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(kube::client::Body::from(serde_json::to_vec(v).unwrap()))
        .unwrap()
}

/// Answers Lease GET, POST and PUT as the API server does (PUT is a compare-and-swap on the
/// resourceVersion; POST of an existing object is 409).
async fn serve(
    store: Arc<Mutex<Store>>,
    req: http::Request<kube::client::Body>,
) -> http::Response<kube::client::Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let base = format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases");
    let mut s = store.lock().unwrap();
    match (method.as_str(), path.as_str()) {
        ("GET", p) if p == format!("{base}/{NAME}") => match &s.lease {
            Some(l) => ok(200, l),
            None => status(404, "NotFound"),
        },
        ("POST", p) if p == base => {
            if s.lease.is_some() {
                return status(409, "AlreadyExists");
            }
            let mut l: serde_json::Value = serde_json::from_slice(&body).unwrap();
            s.version += 1;
            l["metadata"]["resourceVersion"] = s.version.to_string().into();
            s.lease = Some(l.clone());
            ok(201, &l)
        }
        ("PUT", p) if p == format!("{base}/{NAME}") => {
            let mut l: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let current = s
                .lease
                .as_ref()
                .map(|c| c["metadata"]["resourceVersion"].clone());
            if current != Some(l["metadata"]["resourceVersion"].clone()) {
                return status(409, "Conflict");
            }
            s.version += 1;
            l["metadata"]["resourceVersion"] = s.version.to_string().into();
            s.lease = Some(l.clone());
            ok(200, &l)
        }
        _ => status(404, "NotFound"),
    }
}

impl Connection {
    fn client(&self) -> kube::Client {
        let store = self.store.clone();
        let hung = self.hung.clone();
        let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let store = store.clone();
            let hung = hung.clone();
            async move {
                if hung.load(Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                Ok::<_, std::convert::Infallible>(serve(store, req).await)
            }
        });
        kube::Client::new(svc, NS)
    }
}

fn settings(instance: &str) -> LeaderSettings {
    LeaderSettings {
        namespace: NS.into(),
        name: NAME.into(),
        instance: instance.into(),
        duration: Duration::from_secs(15),
        endpoints_lock: false,
    }
}

fn replica(store: &Arc<Mutex<Store>>, instance: &str) -> (LeaderElector, Arc<AtomicBool>) {
    let hung = Arc::new(AtomicBool::new(false));
    let conn = Connection {
        store: store.clone(),
        hung: hung.clone(),
    };
    (LeaderElector::new(conn.client(), settings(instance)), hung)
}

/// A leader whose connection stalls mid-term steps down by its renew deadline, before the
/// standby (which waits a whole lease duration from the last renewal it saw) takes the lease:
/// there is never a moment with two leaders. Before the deadline was enforced on the clock, the
/// stalled renewal never returned and the old leader went on "leading" for good.
#[tokio::test(start_paused = true)]
async fn a_leader_whose_connection_stalls_steps_down_before_the_standby_takes_over() {
    let store = Arc::new(Mutex::new(Store::default()));
    let (a, a_hung) = replica(&store, "mic-a");
    let (b, _) = replica(&store, "mic-b");
    a.acquire().await;
    let start = Instant::now();

    let standby = tokio::spawn(async move {
        b.acquire().await;
        Instant::now()
    });
    // A few good renewals, then the connection stalls.
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(7)).await;
        a_hung.store(true, Ordering::SeqCst);
    });
    let leader = async {
        let lost = a.hold().await;
        (lost, Instant::now())
    };
    let ((lost, stepped_down), took_over) = tokio::time::timeout(Duration::from_secs(120), async {
        let (held, b) = tokio::join!(leader, standby);
        (held, b.unwrap())
    })
    .await
    .expect("the stalled leader never stepped down, or the standby never took over");

    assert!(matches!(lost, Error::Lost { .. }), "{lost}");
    assert!(
        stepped_down < took_over,
        "old leader stepped down at {:?}, standby led from {:?}",
        stepped_down - start,
        took_over - start
    );
    // The old leader steps down within its renew deadline of its last renewal (every ~2 s
    // before the stall at 7 s), and the standby takes over one lease duration after it last
    // saw the lease change, not later.
    assert!(
        stepped_down - start <= Duration::from_secs(7 + 10),
        "{:?}",
        stepped_down - start
    );
    assert!(
        took_over - start <= Duration::from_secs(7 + 15 + 3),
        "{:?}",
        took_over - start
    );
}

/// A candidate whose election attempt hangs gives up on it and tries again, so it becomes
/// leader once the API answers again.
#[tokio::test(start_paused = true)]
async fn a_candidate_abandons_a_hung_attempt_and_leads_once_the_api_answers() {
    let store = Arc::new(Mutex::new(Store::default()));
    let (a, hung) = replica(&store, "mic-a");
    hung.store(true, Ordering::SeqCst);
    let unhang = {
        let hung = hung.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            hung.store(false, Ordering::SeqCst);
        }
    };
    let (led, ()) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(120), a.acquire()),
        unhang
    );
    led.expect("the candidate stayed on its first, hung attempt");
    let holder = store.lock().unwrap().lease.as_ref().unwrap()["spec"]["holderIdentity"].clone();
    assert_eq!(holder, "mic-a");
}

/// Each candidate counts the lease duration from its own first read of the dead leader's last
/// renewal, so a replica that starts after the leader died but reads before the standing
/// candidate's next poll (at most one retry period later) takes over first, as with client-go.
/// No candidate ever takes over less than a lease duration after the last renewal it saw.
#[tokio::test(start_paused = true)]
async fn a_newcomer_that_reads_the_last_renewal_first_may_take_over_before_the_standby() {
    let store = Arc::new(Mutex::new(Store::default()));
    let (a, _) = replica(&store, "mic-a");
    let (b, _) = replica(&store, "mic-b");
    let (c, _) = replica(&store, "mic-c");
    let start = Instant::now();
    assert!(a.try_acquire_or_renew().await.unwrap());
    // The standby reads the lease now and then once per retry period.
    let standby = tokio::spawn(async move {
        b.acquire().await;
        Instant::now()
    });
    // The leader renews once more and dies; a new replica starts at once and reads the lease
    // before the standby's next poll.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(a.try_acquire_or_renew().await.unwrap());
    let last_renewal = Instant::now();
    let newcomer = tokio::spawn(async move {
        c.acquire().await;
        Instant::now()
    });
    let took_over = tokio::time::timeout(Duration::from_secs(60), newcomer)
        .await
        .expect("the newcomer never led")
        .unwrap();
    assert!(
        !standby.is_finished(),
        "the standby led first, before the newcomer's {:?}",
        took_over - start
    );
    let holder = store.lock().unwrap().lease.as_ref().unwrap()["spec"]["holderIdentity"].clone();
    assert_eq!(holder, "mic-c");
    let duration = settings("mic-c").duration;
    assert!(
        took_over - last_renewal >= duration,
        "took over {:?} after the last renewal",
        took_over - last_renewal
    );
    assert!(
        took_over - last_renewal <= duration + settings("mic-c").retry_period() * 2,
        "took over {:?} after the last renewal",
        took_over - last_renewal
    );
    standby.abort();
}

fn renew_time(store: &Arc<Mutex<Store>>) -> serde_json::Value {
    store.lock().unwrap().lease.as_ref().unwrap()["spec"]["renewTime"].clone()
}

/// The wedge rule: a leader whose actor thread stops beating its heartbeat keeps renewing up
/// to the stall limit, then stops renewing and steps down (within one retry period of the
/// limit), saying why; the lease is not renewed after that.
#[tokio::test(start_paused = true)]
async fn a_leader_whose_actor_thread_stops_beating_steps_down_after_the_stall_limit() {
    let store = Arc::new(Mutex::new(Store::default()));
    let limit = Duration::from_secs(40);
    let heartbeat = Heartbeat::new(limit);
    let (a, _) = replica(&store, "mic-a");
    let a = a.watching(heartbeat.clone());
    a.acquire().await;
    let start = Instant::now();
    // The actor thread beats for 25 s, then wedges.
    let beating = tokio::spawn(heartbeat.clone().run(Duration::from_secs(10)));
    let wedge = async {
        tokio::time::sleep(Duration::from_secs(25)).await;
        beating.abort();
        Instant::now()
    };
    let (lost, wedged) = tokio::time::timeout(Duration::from_secs(300), async {
        tokio::join!(a.hold(), wedge)
    })
    .await
    .expect("a leader with a wedged actor thread kept the lease");
    let stepped_down = Instant::now();
    assert!(
        matches!(lost, Error::Stalled { limit: l, .. } if l == limit),
        "{lost}"
    );
    // (The last beat came up to one beat period before the wedge.)
    assert!(
        stepped_down - wedged > limit - heartbeat.period(),
        "stepped down after {:?} of stall, before the limit",
        stepped_down - wedged
    );
    assert!(
        stepped_down - wedged <= limit + heartbeat.period() + settings("mic-a").retry_period(),
        "stepped down only {:?} after the actor thread stopped",
        stepped_down - wedged
    );
    // It renewed while the thread beat and after, up to the limit, then never again.
    let last = renew_time(&store);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(renew_time(&store), last, "renewed after stepping down");
    assert!(stepped_down - start > Duration::from_secs(25));
}

/// A heartbeat that keeps beating never costs the lease, however long the leader holds it.
#[tokio::test(start_paused = true)]
async fn a_leader_whose_actor_thread_keeps_beating_holds_the_lease_past_the_stall_limit() {
    let store = Arc::new(Mutex::new(Store::default()));
    let heartbeat = Heartbeat::new(Duration::from_secs(5));
    let (a, _) = replica(&store, "mic-a");
    let a = a.watching(heartbeat.clone());
    a.acquire().await;
    let beating = tokio::spawn(heartbeat.run(Duration::from_secs(10)));
    let held = tokio::time::timeout(Duration::from_secs(120), a.hold()).await;
    assert!(held.is_err(), "stepped down: {}", held.unwrap());
    beating.abort();
}

/// A candidate whose actor thread is stalled does not take a free lease; it does once the
/// thread beats again.
#[tokio::test(start_paused = true)]
async fn a_candidate_with_a_stalled_actor_thread_does_not_take_the_lease() {
    let store = Arc::new(Mutex::new(Store::default()));
    let heartbeat = Heartbeat::new(Duration::from_secs(5));
    let (a, _) = replica(&store, "mic-a");
    let a = a.watching(heartbeat.clone());
    tokio::time::advance(Duration::from_secs(6)).await;
    let tried = tokio::time::timeout(Duration::from_secs(30), a.acquire()).await;
    assert!(tried.is_err(), "led with a stalled actor thread");
    assert!(store.lock().unwrap().lease.is_none());
    heartbeat.beat();
    tokio::time::timeout(Duration::from_secs(5), a.acquire())
        .await
        .expect("did not lead once the thread beat again");
}
