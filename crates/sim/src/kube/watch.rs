//! Watch streams: newline-delimited JSON events over a chunked response, resumed from a
//! resourceVersion, with bookmarks, `timeoutSeconds`, selector transitions (an object that
//! stops matching is DELETED for that watcher) and a 410 ERROR event once the requested
//! version has left the history.
//!
//! Pacing is the real API server's: its watch handler encodes each event as it takes it from
//! the watcher's queue and flushes the response whenever no further event is queued; no timer
//! holds an event back. Here a change wakes every watch of its resource, which at once takes
//! whatever the history holds past its cursor and hands it to the HTTP layer. While the HTTP
//! layer's write buffer is full (a reader slower than the changes), it stops asking the stream
//! for more, the changes wait in the history, and the next turn takes them all at once: a slow
//! reader gets bigger chunks, a fast one each change as it happens. A reader so slow that its
//! resourceVersion leaves the history gets 410 (the real server closes a watcher whose queue
//! stays full).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpResponse;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::Shared;
use super::meta::{ApiError, namespace_of};
use super::resources::ResourceInfo;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{Event, EventType};
use super::table::{self, TableOptions};
use super::wire::write_object;

/// What a watch request asked for.
#[derive(Debug)]
pub struct WatchParams {
    /// The resource watched.
    pub info: Arc<ResourceInfo>,
    /// Only this namespace, when set.
    pub namespace: Option<String>,
    /// Label selector.
    pub labels: LabelSelector,
    /// Field selector.
    pub fields: FieldSelector,
    /// Resume after this resourceVersion; `None` starts with the current objects as ADDED.
    pub since: Option<u64>,
    /// `sendInitialEvents=true`: current objects as ADDED, then a bookmark marking their end.
    pub send_initial_events: bool,
    /// Whether the client accepts bookmarks.
    pub bookmarks: bool,
    /// How often to send them.
    pub bookmark_interval: Duration,
    /// When to end the stream.
    pub timeout: Duration,
    /// Render each object as a one-row Table (kubectl `get -w`).
    pub table: Option<TableOptions>,
}

/// Target size of one body chunk: the HTTP layer's write buffer, so a chunk fills it once.
pub const CHUNK: usize = 64 * 1024;

struct State {
    shared: Arc<Shared>,
    params: WatchParams,
    cursor: u64,
    notify: tokio::sync::watch::Receiver<u64>,
    drop_signal: tokio::sync::watch::Receiver<u64>,
    deadline: Instant,
    next_bookmark: Instant,
    pending: VecDeque<Bytes>,
    done: bool,
    /// No label or field selector: visibility is the namespace alone.
    unfiltered: bool,
    /// Objects can go out in the store's own serialization (no Table, no conversion).
    shared_encoding: bool,
    /// The served apiVersion, for the shared-encoding check.
    api_version: String,
}

impl State {
    fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.params.namespace
            && namespace_of(obj) != ns
        {
            return false;
        }
        self.selects(obj)
    }

    /// Whether the label and field selectors select `obj` (the namespace aside).
    fn selects(&self, obj: &Value) -> bool {
        self.params.labels.matches(obj) && self.params.fields.matches(obj)
    }

    fn line(&self, type_: &str, obj: &Value) -> Vec<u8> {
        let mut out = Vec::with_capacity(1024);
        out.extend_from_slice(b"{\"type\":\"");
        out.extend_from_slice(type_.as_bytes());
        out.extend_from_slice(b"\",\"object\":");
        match &self.params.table {
            Some(opts) => {
                let t = table::table(
                    &self.params.info,
                    std::slice::from_ref(&Arc::new(obj.clone())),
                    opts,
                    None,
                    None,
                );
                let _ = serde_json::to_writer(&mut out, &t);
            }
            None => write_object(&mut out, &self.params.info, obj),
        }
        out.extend_from_slice(b"}\n");
        out
    }

    fn bookmark(&self, initial_end: bool) -> Vec<u8> {
        let mut meta = json!({"resourceVersion": self.cursor.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = json!({
            "kind": self.params.info.kind,
            "apiVersion": self.params.info.api_version(),
            "metadata": meta,
        });
        let mut out = b"{\"type\":\"BOOKMARK\",\"object\":".to_vec();
        let _ = serde_json::to_writer(&mut out, &obj);
        out.extend_from_slice(b"}\n");
        out
    }

    fn error(e: &ApiError) -> Bytes {
        let mut out = b"{\"type\":\"ERROR\",\"object\":".to_vec();
        let _ = serde_json::to_writer(&mut out, &e.to_status());
        out.extend_from_slice(b"}\n");
        Bytes::from(out)
    }

    /// Whether the watcher sees the event's object now and saw it before the change.
    fn visibility(&self, e: &Event) -> (bool, bool) {
        if let Some(ns) = &self.params.namespace
            && *e.namespace != **ns
        {
            return (false, false);
        }
        if self.unfiltered {
            // A namespace never changes, so without selectors the state before the change
            // was visible exactly when there was one.
            return (true, e.prev.is_some());
        }
        (
            self.selects(&e.object),
            e.prev.as_deref().is_some_and(|p| self.selects(p)),
        )
    }

    /// Queues `events` for this watcher in chunks of about [`CHUNK`]. An event sent as it
    /// happened is copied from the line every watcher shares (serialized and framed once);
    /// selector transitions and Table or converted renderings are written for this watcher.
    fn render(&mut self, events: &[Arc<Event>]) {
        let mut own: Vec<u8> = Vec::new();
        for e in events {
            let (now, before) = self.visibility(e);
            let type_ = match e.type_ {
                EventType::Added if now => EventType::Added,
                EventType::Deleted if before => EventType::Deleted,
                EventType::Modified if now && before => EventType::Modified,
                EventType::Modified if now => EventType::Added,
                EventType::Modified if before => EventType::Deleted,
                _ => continue,
            };
            if self.shared_encoding
                && type_ == e.type_
                && e.object.get("apiVersion").and_then(Value::as_str)
                    == Some(self.api_version.as_str())
            {
                let line = e.line();
                if !own.is_empty() && own.len() + line.len() > CHUNK {
                    self.pending.push_back(Bytes::from(std::mem::replace(
                        &mut own,
                        Vec::with_capacity(CHUNK),
                    )));
                }
                if own.capacity() == 0 {
                    own.reserve(CHUNK);
                }
                own.extend_from_slice(line);
            } else {
                own.extend(self.line(type_.as_str(), &e.object));
            }
        }
        if !own.is_empty() {
            self.pending.push_back(Bytes::from(own));
        }
    }

    /// Pulls new events into `pending`; ends the stream on 410.
    fn catch_up(&mut self) {
        match self
            .shared
            .store
            .events_since(&self.params.info.gr(), self.cursor)
        {
            Ok((events, complete)) => {
                self.render(&events);
                self.cursor = self.cursor.max(complete);
            }
            Err(e) => {
                self.pending.push_back(Self::error(&e));
                self.done = true;
            }
        }
    }
}

struct Timers {
    bookmark: Pin<Box<tokio::time::Sleep>>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    cancelled: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

/// Starts a watch and returns the streaming response.
pub fn respond(shared: Arc<Shared>, params: WatchParams) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .streaming(events(shared, params))
}

/// The watch's body: chunks of event lines, each taken as soon as the HTTP layer asks for more
/// (see the module doc).
fn events(
    shared: Arc<Shared>,
    params: WatchParams,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> {
    let gr = params.info.gr();
    let notify = shared.store.subscribe(&gr);
    let drop_signal = shared.faults.drop_signal();
    let now = Instant::now();
    let mut st = State {
        deadline: now + params.timeout,
        next_bookmark: now + params.bookmark_interval,
        shared: shared.clone(),
        cursor: 0,
        notify,
        drop_signal,
        pending: VecDeque::new(),
        done: false,
        unfiltered: params.labels.is_empty() && params.fields.is_empty(),
        shared_encoding: params.table.is_none() && !params.info.converted(),
        api_version: params.info.api_version(),
        params,
    };
    match st.params.since {
        Some(rv) if !st.params.send_initial_events => {
            st.cursor = rv;
            st.catch_up();
        }
        _ => {
            let (items, rv) = shared.store.snapshot(&gr);
            let mut out = Vec::new();
            for o in items.iter().filter(|o| st.matches(o)) {
                out.extend(st.line("ADDED", o));
            }
            st.cursor = rv;
            if st.params.send_initial_events && st.params.bookmarks {
                out.extend(st.bookmark(true));
            }
            if !out.is_empty() {
                st.pending.push_back(Bytes::from(out));
            }
            st.catch_up();
        }
    }
    // The timers and the cancellation future live as long as the stream and are reset, not
    // rebuilt, on each turn: a watch may wake once per write and must stay cheap.
    let timers = Timers {
        bookmark: Box::pin(tokio::time::sleep_until(st.next_bookmark)),
        deadline: Box::pin(tokio::time::sleep_until(st.deadline)),
        cancelled: Box::pin(shared.shutdown.clone().cancelled_owned()),
    };
    futures::stream::unfold((st, timers), |(mut st, mut t)| async move {
        loop {
            if let Some(chunk) = st.pending.pop_front() {
                return Some((Ok::<Bytes, Infallible>(chunk), (st, t)));
            }
            if st.done {
                return None;
            }
            tokio::select! {
                changed = st.notify.changed() => {
                    if changed.is_err() { return None; }
                    st.catch_up();
                }
                () = &mut t.bookmark => {
                    st.next_bookmark = Instant::now() + st.params.bookmark_interval;
                    t.bookmark.as_mut().reset(st.next_bookmark);
                    if st.params.bookmarks {
                        st.catch_up();
                        if !st.done {
                            let b = st.bookmark(false);
                            st.pending.push_back(Bytes::from(b));
                        }
                    }
                }
                () = &mut t.deadline => return None,
                _ = st.drop_signal.changed() => return None,
                () = &mut t.cancelled => return None,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::resources::Registry;
    use super::super::store::Store;
    use super::super::{ClientLog, Faults, KubeSimConfig, sa_token, writes};
    use super::*;
    use futures::StreamExt as _;
    use std::task::Poll;

    fn shared() -> Arc<Shared> {
        let registry = Arc::new(Registry::default());
        let store = Arc::new(Store::new(registry.clone(), 1000));
        let ns = registry.get("", "v1", "namespaces").unwrap();
        store
            .create(&ns, "", json!({"metadata": {"name": "default"}}))
            .unwrap();
        Arc::new(Shared {
            store,
            registry,
            faults: Faults::default(),
            config: KubeSimConfig::default(),
            shutdown: tokio_util::sync::CancellationToken::new(),
            issuer: sa_token::Issuer::new("http://127.0.0.1".to_string()),
            clients: ClientLog::default(),
            writes: writes::WriteLog::default(),
        })
    }

    fn configmaps(shared: &Shared) -> Arc<ResourceInfo> {
        shared.registry.get("", "v1", "configmaps").unwrap()
    }

    fn watch_from_now(
        shared: &Arc<Shared>,
    ) -> impl futures::Stream<Item = Result<Bytes, Infallible>> {
        let info = configmaps(shared);
        let since = Some(shared.store.current_rv());
        events(
            Arc::clone(shared),
            WatchParams {
                info,
                namespace: Some("default".into()),
                labels: LabelSelector::parse("").unwrap(),
                fields: FieldSelector::parse("").unwrap(),
                since,
                send_initial_events: false,
                bookmarks: false,
                bookmark_interval: Duration::from_secs(30),
                timeout: Duration::from_secs(600),
                table: None,
            },
        )
    }

    fn write(shared: &Shared, name: &str) {
        shared
            .store
            .create(
                &configmaps(shared),
                "default",
                json!({"metadata": {"name": name}, "data": {"k": "v"}}),
            )
            .unwrap();
    }

    fn names(chunk: &Bytes) -> Vec<String> {
        std::str::from_utf8(chunk)
            .unwrap()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                v["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    /// The next chunk if the stream has one ready now, without any timer firing.
    fn ready_now(
        stream: &mut (impl futures::Stream<Item = Result<Bytes, Infallible>> + Unpin),
    ) -> Option<Bytes> {
        let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
        match stream.poll_next_unpin(&mut cx) {
            Poll::Ready(Some(Ok(b))) => Some(b),
            Poll::Ready(None) => panic!("the watch ended"),
            Poll::Pending => None,
        }
    }

    // Fails on the pacing this replaced: the first change waited 2 ms, and every change within
    // 20 ms of a send waited for the next tick of a shared 20 ms grid.
    #[tokio::test(start_paused = true)]
    async fn every_change_is_ready_to_send_as_soon_as_it_is_stored() {
        let shared = shared();
        let mut watch = Box::pin(watch_from_now(&shared));
        let start = Instant::now();
        assert!(ready_now(&mut watch).is_none(), "nothing happened yet");
        for name in ["a", "b", "c"] {
            write(&shared, name);
            let chunk = ready_now(&mut watch).expect("the change is sent at once");
            assert_eq!(names(&chunk), [name]);
            assert!(ready_now(&mut watch).is_none());
        }
        assert_eq!(Instant::now(), start, "no timer was waited for");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_falls_behind_gets_everything_queued_in_one_chunk() {
        let shared = shared();
        let mut watch = Box::pin(watch_from_now(&shared));
        assert!(ready_now(&mut watch).is_none());
        // The HTTP layer does not ask for more while its write buffer is full.
        for i in 0..50 {
            write(&shared, &format!("cm-{i:02}"));
        }
        let chunk = ready_now(&mut watch).expect("queued changes are sent when asked");
        let got = names(&chunk);
        assert_eq!(got.len(), 50);
        assert_eq!(got.first().map(String::as_str), Some("cm-00"));
        assert_eq!(got.last().map(String::as_str), Some("cm-49"));
        assert!(ready_now(&mut watch).is_none());
        // And the watch is still live for the next change.
        write(&shared, "late");
        assert_eq!(names(&watch.next().await.unwrap().unwrap()), ["late"]);
    }
}
