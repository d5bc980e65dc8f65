use super::*;
use aad_pod_identity_sim::kube::{KubeSim, KubeSimConfig, KubeSimHandle};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, PostParams};
use kube::core::watch::{Bookmark, BookmarkMeta};
use kube::core::{ListMeta, Status, TypeMeta};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

fn cm(name: &str, rv: &str) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.into());
    c.metadata.resource_version = Some(rv.into());
    c
}

fn page(items: Vec<ConfigMap>, rv: &str, next: Option<&str>) -> ObjectList<ConfigMap> {
    ObjectList {
        types: TypeMeta::default(),
        metadata: ListMeta {
            resource_version: Some(rv.into()),
            continue_: next.map(str::to_string),
            ..ListMeta::default()
        },
        items,
    }
}

fn api_error(code: u16) -> kube::Error {
    kube::Error::Api(
        Status::failure("refused", "Testing")
            .with_code(code)
            .boxed(),
    )
}

fn names(list: &[ConfigMap]) -> Vec<String> {
    list.iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect()
}

fn watch_from(rv: &str) -> Action {
    Action::Watch {
        resource_version: rv.into(),
    }
}

const FIRST_LIST: Action = Action::List {
    continue_token: None,
};

#[test]
fn a_paged_list_is_delivered_whole_and_the_watch_starts_from_its_resource_version() {
    let mut m = Machine::default();
    assert_eq!(m.next_action(), FIRST_LIST);
    assert!(
        m.page(page(vec![cm("a", "3")], "", Some("t1")), 0.0)
            .is_none()
    );
    assert_eq!(
        m.next_action(),
        Action::List {
            continue_token: Some("t1".into())
        }
    );
    match m.page(page(vec![cm("b", "4")], "7", None), 0.0) {
        Some(Event::Listed(l)) => assert_eq!(names(&l), ["a", "b"]),
        other => panic!("expected the whole list, got {other:?}"),
    }
    assert_eq!(m.next_action(), watch_from("7"));
    assert!(m.is_watching());
}

#[test]
fn changes_and_bookmarks_move_the_resource_version_a_resumed_watch_starts_from() {
    let mut m = Machine::default();
    m.page(page(vec![], "7", None), 0.0);
    assert!(matches!(
        m.watched(WatchEvent::Added(cm("a", "8")), 0.0),
        Some(Event::Applied(c)) if c.metadata.name.as_deref() == Some("a")
    ));
    assert!(matches!(
        m.watched(WatchEvent::Deleted(cm("a", "9")), 0.0),
        Some(Event::Deleted(_))
    ));
    let bookmark = Bookmark {
        types: TypeMeta::default(),
        metadata: BookmarkMeta {
            resource_version: "12".into(),
            annotations: Default::default(),
        },
    };
    assert!(
        m.watched(WatchEvent::Bookmark(bookmark), 0.0).is_none(),
        "a bookmark is not a change"
    );
    m.watch_ended();
    assert_eq!(
        m.next_action(),
        watch_from("12"),
        "a watch the server ended resumes without a list"
    );
}

#[test]
fn a_410_on_the_watch_relists_at_once() {
    let mut m = Machine::default();
    m.page(page(vec![], "7", None), 0.0);
    let gone = Status::failure("too old resource version: 7 (12)", "Expired").with_code(410);
    assert!(matches!(
        m.watched(WatchEvent::Error(gone.boxed()), 0.0),
        Some(Event::Lost(Error::Gone(msg))) if msg.contains("too old")
    ));
    assert!(!m.is_watching(), "the stream that said 410 is closed");
    assert_eq!(m.next_action(), FIRST_LIST, "no backoff before the relist");
}

#[test]
fn a_410_answer_to_a_watch_request_or_a_continue_token_relists_at_once() {
    let mut m = Machine::<ConfigMap>::default();
    m.page(page(vec![], "7", None), 0.0);
    assert!(matches!(
        m.failed(Error::WatchStart(api_error(410)), 0.0),
        Event::Lost(Error::Gone(_))
    ));
    assert_eq!(m.next_action(), FIRST_LIST);
    m.page(page(vec![cm("a", "1")], "", Some("t1")), 0.0);
    assert!(matches!(
        m.failed(Error::List(api_error(410)), 0.0),
        Event::Lost(Error::Gone(_))
    ));
    assert_eq!(
        m.next_action(),
        FIRST_LIST,
        "an expired continue token starts the list over"
    );
}

#[test]
fn a_410_on_a_fresh_list_backs_off_like_any_fault() {
    let mut m = Machine::<ConfigMap>::default();
    m.failed(Error::List(api_error(410)), 0.0);
    assert_eq!(m.next_action(), Action::Wait(FIRST_BACKOFF / 2));
    assert_eq!(m.next_action(), FIRST_LIST);
}

#[test]
fn other_failures_relist_after_a_growing_backoff_that_a_started_watch_resets() {
    let mut m = Machine::<ConfigMap>::default();
    m.page(page(vec![], "7", None), 0.0);
    let status = Status::failure("etcd is sad", "InternalError").with_code(500);
    assert!(matches!(
        m.watched(WatchEvent::Error(status.boxed()), 0.0),
        Some(Event::Lost(Error::WatchStatus { code: 500, .. }))
    ));
    assert_eq!(m.next_action(), Action::Wait(Duration::from_millis(125)));
    assert_eq!(m.next_action(), FIRST_LIST);
    m.failed(Error::List(api_error(503)), 0.0);
    assert_eq!(m.next_action(), Action::Wait(Duration::from_millis(250)));
    m.page(page(vec![], "9", None), 0.0);
    m.failed(Error::WatchStart(api_error(403)), 0.0);
    assert_eq!(m.next_action(), Action::Wait(Duration::from_millis(500)));
    m.page(page(vec![], "9", None), 0.0);
    m.watch_started();
    m.failed(Error::WatchStream(api_error(500)), 0.0);
    assert_eq!(
        m.next_action(),
        Action::Wait(Duration::from_millis(125)),
        "a watch the API accepted resets the backoff"
    );
}

#[test]
fn a_list_without_a_resource_version_is_a_failure_not_a_watch_from_nowhere() {
    let mut m = Machine::default();
    assert!(matches!(
        m.page(page(vec![cm("a", "1")], "", None), 0.0),
        Some(Event::Lost(Error::NoResourceVersion))
    ));
    assert!(matches!(m.next_action(), Action::Wait(_)));
    assert_eq!(m.next_action(), FIRST_LIST);
}

/// One scripted watch: refused, or the events it sends before the server ends it.
type ScriptedWatch = kube::Result<Vec<kube::Result<WatchEvent<ConfigMap>>>>;

/// A scripted API: each call takes the next answer; with none left it never answers.
#[derive(Clone, Default)]
struct Script {
    lists: Arc<Mutex<VecDeque<kube::Result<ObjectList<ConfigMap>>>>>,
    watches: Arc<Mutex<VecDeque<ScriptedWatch>>>,
    calls: Arc<Mutex<Vec<String>>>,
}

impl Lister<ConfigMap> for Script {
    fn list(&self, lp: &ListParams) -> BoxFuture<'static, kube::Result<ObjectList<ConfigMap>>> {
        self.calls.lock().unwrap().push(format!(
            "list continue={}",
            lp.continue_token.clone().unwrap_or_default()
        ));
        match self.lists.lock().unwrap().pop_front() {
            Some(r) => futures::future::ready(r).boxed(),
            None => futures::future::pending().boxed(),
        }
    }

    fn watch(
        &self,
        _wp: &WatchParams,
        resource_version: &str,
    ) -> BoxFuture<'static, kube::Result<WatchStream<ConfigMap>>> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("watch from {resource_version}"));
        match self.watches.lock().unwrap().pop_front() {
            Some(r) => {
                futures::future::ready(r.map(|evs| futures::stream::iter(evs).boxed())).boxed()
            }
            None => futures::future::pending().boxed(),
        }
    }
}

async fn next<S: Stream<Item = Event<ConfigMap>> + Unpin>(s: &mut S) -> Event<ConfigMap> {
    tokio::time::timeout(Duration::from_secs(600), s.next())
        .await
        .expect("an event")
        .expect("the stream does not end")
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_api_is_retried_after_growing_jittered_delays() {
    let script = Script::default();
    {
        let mut lists = script.lists.lock().unwrap();
        for _ in 0..3 {
            lists.push_back(Err(api_error(503)));
        }
        lists.push_back(Ok(page(vec![cm("a", "5")], "5", None)));
    }
    let mut s = std::pin::pin!(drive(
        script.clone(),
        Config::default(),
        std::convert::identity
    ));
    let start = tokio::time::Instant::now();
    for _ in 0..3 {
        assert!(matches!(next(&mut s).await, Event::Lost(Error::List(_))));
    }
    assert!(matches!(next(&mut s).await, Event::Listed(l) if names(&l) == ["a"]));
    let waited = start.elapsed();
    // Three delays: steps of 250, 500 and 1000 ms, each jittered into [half, all].
    assert!(
        waited >= Duration::from_millis(875) && waited <= Duration::from_millis(1750),
        "{waited:?}"
    );
    assert_eq!(script.calls.lock().unwrap().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_watch_the_server_ends_is_resumed_from_the_last_resource_version_without_a_list() {
    let script = Script::default();
    script
        .lists
        .lock()
        .unwrap()
        .push_back(Ok(page(vec![], "5", None)));
    script.watches.lock().unwrap().extend([
        Ok(vec![Ok(WatchEvent::Added(cm("a", "6")))]),
        Ok(vec![Ok(WatchEvent::Modified(cm("a", "8")))]),
    ]);
    let mut s = std::pin::pin!(drive(
        script.clone(),
        Config::default().labels("x=y"),
        std::convert::identity
    ));
    assert!(matches!(next(&mut s).await, Event::Listed(l) if l.is_empty()));
    assert!(matches!(next(&mut s).await, Event::Applied(_)));
    assert!(matches!(next(&mut s).await, Event::Applied(_)));
    assert_eq!(
        *script.calls.lock().unwrap(),
        ["list continue=", "watch from 5", "watch from 6"]
    );
}

/// Drops a ConfigMap's data, keeping its name and resourceVersion.
fn drop_data(mut c: ConfigMap) -> ConfigMap {
    c.data = None;
    c
}

fn with_data(name: &str, rv: &str) -> ConfigMap {
    let mut c = cm(name, rv);
    c.data = Some([("big".to_string(), "x".repeat(1000))].into());
    c
}

#[tokio::test(start_paused = true)]
async fn a_map_applies_to_every_listed_page_and_every_watched_object() {
    let script = Script::default();
    script.lists.lock().unwrap().extend([
        Ok(page(vec![with_data("a", "3")], "", Some("t1"))),
        Ok(page(vec![with_data("b", "4")], "5", None)),
    ]);
    script.watches.lock().unwrap().push_back(Ok(vec![
        Ok(WatchEvent::Added(with_data("c", "6"))),
        Ok(WatchEvent::Deleted(with_data("a", "7"))),
    ]));
    let mut s = std::pin::pin!(drive(script.clone(), Config::default(), drop_data));
    match next(&mut s).await {
        Event::Listed(l) => {
            assert_eq!(names(&l), ["a", "b"]);
            assert!(l.iter().all(|c| c.data.is_none()), "{l:?}");
        }
        other => panic!("expected the list, got {other:?}"),
    }
    for want in ["c", "a"] {
        match next(&mut s).await {
            Event::Applied(c) | Event::Deleted(c) => {
                assert_eq!(c.metadata.name.as_deref(), Some(want));
                assert!(c.data.is_none());
            }
            other => panic!("expected a change, got {other:?}"),
        }
    }
    // The mapped objects kept their resourceVersions: the watch resumes from the last one.
    let _ = tokio::time::timeout(Duration::from_millis(10), s.next()).await;
    assert_eq!(
        *script.calls.lock().unwrap(),
        [
            "list continue=",
            "list continue=t1",
            "watch from 5",
            "watch from 7"
        ]
    );
}

async fn sim(config: KubeSimConfig) -> (KubeSimHandle, Api<ConfigMap>) {
    let h = KubeSim::start(KubeSimConfig {
        run_cluster: false,
        ..config
    })
    .await
    .expect("simulator starts");
    let client = h.client().await.expect("client");
    (h, Api::namespaced(client, "default"))
}

async fn create(api: &Api<ConfigMap>, name: &str) {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.into());
    api.create(&PostParams::default(), &c)
        .await
        .expect("created");
}

async fn next_live<S: Stream<Item = Event<ConfigMap>> + Unpin>(s: &mut S) -> Event<ConfigMap> {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("an event within 10 s")
        .expect("the stream does not end")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_the_simulator_pages_are_joined_and_a_dropped_watch_resumes_without_a_list() {
    let (h, api) = sim(KubeSimConfig::default()).await;
    for n in ["a", "b", "c"] {
        create(&api, n).await;
    }
    let mut s = std::pin::pin!(drive(
        api.clone(),
        Config {
            page_size: Some(2),
            ..Config::default()
        },
        std::convert::identity
    ));
    match next_live(&mut s).await {
        Event::Listed(l) => assert_eq!(names(&l), ["a", "b", "c"]),
        other => panic!("expected the list, got {other:?}"),
    }
    for i in 0..3 {
        h.drop_watches();
        create(&api, &format!("d{i}")).await;
        match next_live(&mut s).await {
            Event::Applied(c) => assert_eq!(c.metadata.name.unwrap(), format!("d{i}")),
            other => panic!("expected the change itself after a dropped watch, got {other:?}"),
        }
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_the_simulator_a_stale_resource_version_gets_410_and_the_relist_drops_what_was_deleted()
 {
    let (h, api) = sim(KubeSimConfig {
        watch_history: 5,
        ..KubeSimConfig::default()
    })
    .await;
    create(&api, "old").await;
    let mut s = std::pin::pin!(watch(api.clone(), Config::default()));
    assert!(matches!(next_live(&mut s).await, Event::Listed(l) if names(&l) == ["old"]));
    // The watch is dropped while nobody polls; meanwhile history moves far past its version.
    h.drop_watches();
    api.delete("old", &DeleteParams::default())
        .await
        .expect("deleted");
    for i in 0..10 {
        create(&api, &format!("c{i}")).await;
    }
    assert!(
        matches!(next_live(&mut s).await, Event::Lost(Error::Gone(_))),
        "resuming from a version older than the history is 410 Gone"
    );
    match next_live(&mut s).await {
        Event::Listed(l) => {
            assert_eq!(l.len(), 10);
            assert!(!names(&l).contains(&"old".to_string()));
        }
        other => panic!("expected the relist, got {other:?}"),
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_the_simulator_failing_requests_are_reported_and_a_relist_follows() {
    let (h, api) = sim(KubeSimConfig::default()).await;
    let mut s = std::pin::pin!(watch(api.clone(), Config::default()));
    assert!(matches!(next_live(&mut s).await, Event::Listed(l) if l.is_empty()));
    create(&api, "x").await;
    assert!(matches!(next_live(&mut s).await, Event::Applied(_)));
    h.fail_next(1, 500);
    h.drop_watches();
    assert!(matches!(
        next_live(&mut s).await,
        Event::Lost(Error::WatchStart(_))
    ));
    assert!(matches!(next_live(&mut s).await, Event::Listed(l) if names(&l) == ["x"]));
    h.shutdown().await;
}
