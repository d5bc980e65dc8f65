//! Watch streams: newline-delimited JSON events over a chunked response, resumed from a
//! resourceVersion, with bookmarks, `timeoutSeconds`, selector transitions (an object that
//! stops matching is DELETED for that watcher) and a 410 ERROR event once the requested
//! version has left the history.

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
use super::http::write_object;
use super::meta::{ApiError, namespace_of};
use super::resources::ResourceInfo;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{Event, EventType};
use super::table::{self, TableOptions};

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
    /// How long to gather further events after a wake-up before sending.
    pub coalesce: Duration,
}

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
}

impl State {
    fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.params.namespace
            && namespace_of(obj) != ns
        {
            return false;
        }
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

    /// Renders `events` for this watcher into one chunk.
    fn render(&self, events: &[Event]) -> Vec<u8> {
        let mut out = Vec::new();
        // Objects stored under the served apiVersion can reuse the shared serialization.
        let shared_encoding = self.params.table.is_none() && !self.params.info.converted();
        let av = self.params.info.api_version();
        for e in events {
            let now = self.matches(&e.object);
            let before = e.prev.as_deref().is_some_and(|p| self.matches(p));
            let type_ = match e.type_ {
                EventType::Added if now => "ADDED",
                EventType::Deleted if before => "DELETED",
                EventType::Modified if now && before => "MODIFIED",
                EventType::Modified if now => "ADDED",
                EventType::Modified if before => "DELETED",
                _ => continue,
            };
            if shared_encoding
                && e.object.get("apiVersion").and_then(Value::as_str) == Some(av.as_str())
            {
                out.extend_from_slice(b"{\"type\":\"");
                out.extend_from_slice(type_.as_bytes());
                out.extend_from_slice(b"\",\"object\":");
                out.extend_from_slice(e.encoded());
                out.extend_from_slice(b"}\n");
            } else {
                out.extend(self.line(type_, &e.object));
            }
        }
        out
    }

    /// Pulls new events into `pending`; ends the stream on 410.
    fn catch_up(&mut self) {
        match self
            .shared
            .store
            .events_since(&self.params.info.gr(), self.cursor)
        {
            Ok((events, complete)) => {
                let chunk = self.render(&events);
                if !chunk.is_empty() {
                    self.pending.push_back(Bytes::from(chunk));
                }
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
    coalesce: Pin<Box<tokio::time::Sleep>>,
    cancelled: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

/// Starts a watch and returns the streaming response.
pub fn respond(shared: Arc<Shared>, params: WatchParams) -> HttpResponse {
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
    // rebuilt, on each turn: a watch wakes once per burst of writes and must stay cheap.
    let timers = Timers {
        bookmark: Box::pin(tokio::time::sleep_until(st.next_bookmark)),
        deadline: Box::pin(tokio::time::sleep_until(st.deadline)),
        coalesce: Box::pin(tokio::time::sleep(Duration::ZERO)),
        cancelled: Box::pin(shared.shutdown.clone().cancelled_owned()),
    };
    let stream = futures::stream::unfold((st, timers), |(mut st, mut t)| async move {
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
                    // Under a burst of writes, gather what else lands in the next moment
                    // into the same chunk: far fewer wake-ups and writes per event.
                    if !st.params.coalesce.is_zero() {
                        t.coalesce.as_mut().reset(Instant::now() + st.params.coalesce);
                        (&mut t.coalesce).await;
                    }
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
    });
    HttpResponse::Ok()
        .content_type("application/json")
        .streaming(stream)
}
