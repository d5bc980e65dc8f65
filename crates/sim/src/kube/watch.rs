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
    /// How long to gather further events after a wake-up before sending.
    pub coalesce: Duration,
    /// While changes keep coming, the least time between two sends to this watcher.
    pub busy_interval: Duration,
}

/// When a watcher woken at `now` sends what it has gathered: `coalesce` after the wake-up
/// when the watch was quiet, so a lone change goes out at once; during a burst (the last
/// send was less than `busy_interval` ago), at the first tick after the last send of a grid
/// of `busy_interval` steps from `epoch`, so that a stream of changes costs each watcher one
/// send per interval rather than one per change.
///
/// The grid is shared by every watcher of the simulator (`epoch` is the process's, see
/// [`pacing_epoch`]): watchers that see the same change during a burst send it at the same
/// tick. Paced each from its own last send, two watchers could be up to one interval apart
/// for the same event (a node's NMI 20 ms behind the load-test driver's watch, measured as
/// NMI's wake-up), which a real API server, sending each event as soon as it is queued, does
/// not do.
#[must_use]
pub fn send_at(
    now: Instant,
    last_sent: Option<Instant>,
    coalesce: Duration,
    busy_interval: Duration,
    epoch: Instant,
) -> Instant {
    let quiet = now + coalesce;
    match last_sent {
        Some(t) if now < t + busy_interval => {
            let step = busy_interval.as_nanos().max(1);
            let ticks = t.saturating_duration_since(epoch).as_nanos() / step + 1;
            let next =
                epoch + Duration::from_nanos(u64::try_from(ticks * step).unwrap_or(u64::MAX));
            quiet.max(next)
        }
        _ => quiet,
    }
}

/// The origin of the pacing grid every watch of this process shares (see [`send_at`]).
#[must_use]
pub fn pacing_epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
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
    /// When events last went out (for [`send_at`]).
    last_sent: Option<Instant>,
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
        last_sent: None,
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
                    // Gather what else lands in the next moment into the same send; under
                    // a burst, send at most once per busy interval (see `send_at`).
                    let now = Instant::now();
                    let p = &st.params;
                    let at = send_at(now, st.last_sent, p.coalesce, p.busy_interval, pacing_epoch());
                    if at > now {
                        t.coalesce.as_mut().reset(at);
                        (&mut t.coalesce).await;
                    }
                    let queued = st.pending.len();
                    st.catch_up();
                    if st.pending.len() > queued {
                        st.last_sent = Some(Instant::now());
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const COALESCE: Duration = Duration::from_millis(2);
    const BUSY: Duration = Duration::from_millis(20);

    #[test]
    fn a_quiet_watch_sends_after_the_short_window() {
        let now = Instant::now();
        let epoch = now.checked_sub(Duration::from_secs(5)).unwrap();
        assert_eq!(send_at(now, None, COALESCE, BUSY, epoch), now + COALESCE);
        let long_ago = now.checked_sub(Duration::from_secs(1)).unwrap();
        assert_eq!(
            send_at(now, Some(long_ago), COALESCE, BUSY, epoch),
            now + COALESCE
        );
    }

    #[test]
    fn during_a_burst_sends_are_one_busy_interval_apart() {
        let epoch = Instant::now();
        let last = epoch + Duration::from_millis(100);
        let now = last + Duration::from_millis(5);
        assert_eq!(send_at(now, Some(last), COALESCE, BUSY, epoch), last + BUSY);
        // Just before the interval ends, the short window is the later bound.
        let now = last + Duration::from_millis(19);
        assert_eq!(
            send_at(now, Some(last), COALESCE, BUSY, epoch),
            now + COALESCE
        );
    }

    #[test]
    fn busy_watchers_that_last_sent_at_different_moments_send_a_change_at_the_same_tick() {
        let epoch = Instant::now();
        // One watcher last sent 3 ms into a tick, the other 17 ms into it (a node's NMI and
        // the driver's watch of every object); both are woken by the same change.
        let a = epoch + Duration::from_millis(103);
        let b = epoch + Duration::from_millis(117);
        let now = epoch + Duration::from_millis(118);
        let tick = epoch + Duration::from_millis(120);
        assert_eq!(send_at(now, Some(a), COALESCE, BUSY, epoch), tick);
        assert_eq!(send_at(now, Some(b), COALESCE, BUSY, epoch), tick);
    }

    #[test]
    fn zero_windows_send_at_once() {
        let now = Instant::now();
        assert_eq!(
            send_at(now, Some(now), Duration::ZERO, Duration::ZERO, now),
            now
        );
    }
}
