//! The one owner of "list, then watch" for every index MIC and NMI keep of Kubernetes objects.
//!
//! [`watch`] lists the objects (in pages), watches from the list's resourceVersion, follows
//! bookmarks, and starts over with a fresh list whenever the watch is lost: at once on 410 Gone
//! (the API saying the resourceVersion is too old), after a backoff with jitter on any other
//! failure. A watch the server ends normally (its timeout) is resumed from the last
//! resourceVersion without a list. The consumer sees [`Event`]s: the complete list after every
//! (re)list, each change, and each loss (after which its copy may miss changes until the next
//! [`Event::Listed`]), so an index replaced at `Listed` never keeps an object deleted while the
//! watch was down.
//!
//! A consumer that needs a few fields of large objects passes a map to a compact type
//! ([`watch_mapped`]): each object is mapped as its page or event arrives, so a relist of
//! 100 000 pods holds 100 000 compact values and one page of whole pods, never 100 000 whole
//! ones (a `Pod` is about 2 KiB before any of its strings).
//!
//! Built on kube-client's `Api::list` and `Api::watch` only. The decisions are [`Machine`], plain
//! data with no I/O (what to ask the API next, what a page or a watch event means); [`watch`]
//! only performs them. This is client-go's reflector in the shape of kube-runtime's watcher,
//! without kube-runtime (whose finalizer helpers pull a JSON-patch crate into the binary).

use crate::backoff::Backoff;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt as _, Stream, StreamExt as _};
use kube::api::{ListParams, ObjectList, WatchEvent, WatchParams};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::time::Duration;

/// Objects per list page (kube-runtime's and client-go's default).
const PAGE_SIZE: u32 = 500;
/// How long the server keeps one watch open before ending it (below the API server's 5 min cap,
/// as kube-runtime's 290 s); the watch then resumes from the last resourceVersion.
const WATCH_TIMEOUT_SECS: u32 = 290;
/// Delay before starting over after the first failure in a row; doubled per further failure.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest delay before starting over.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Which objects to watch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    label_selector: Option<String>,
    field_selector: Option<String>,
    /// Objects per list page; `None` is [`PAGE_SIZE`].
    page_size: Option<u32>,
}

impl Config {
    /// Only objects matching the label selector.
    #[must_use]
    pub fn labels(mut self, selector: &str) -> Self {
        self.label_selector = Some(selector.to_string());
        self
    }

    /// Only objects matching the field selector.
    #[must_use]
    pub fn fields(mut self, selector: &str) -> Self {
        self.field_selector = Some(selector.to_string());
        self
    }

    fn list_params(&self, continue_token: Option<&str>) -> ListParams {
        let mut lp = ListParams::default().limit(self.page_size.unwrap_or(PAGE_SIZE));
        if let Some(l) = &self.label_selector {
            lp = lp.labels(l);
        }
        if let Some(f) = &self.field_selector {
            lp = lp.fields(f);
        }
        if let Some(c) = continue_token {
            lp = lp.continue_token(c);
        }
        lp
    }

    fn watch_params(&self) -> WatchParams {
        // Bookmarks are on by default: they keep the resourceVersion fresh on quiet watches.
        let mut wp = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
        if let Some(l) = &self.label_selector {
            wp = wp.labels(l);
        }
        if let Some(f) = &self.field_selector {
            wp = wp.fields(f);
        }
        wp
    }
}

/// Why a watch was lost.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A list request failed.
    #[error("listing failed: {0}")]
    List(#[source] kube::Error),
    /// The watch request failed before any event.
    #[error("starting the watch failed: {0}")]
    WatchStart(#[source] kube::Error),
    /// The open watch stream broke (connection, or an event that does not decode).
    #[error("the watch stream failed: {0}")]
    WatchStream(#[source] kube::Error),
    /// The watch sent an ERROR event other than 410.
    #[error("the watch reported an error: {code} {reason}: {message}")]
    WatchStatus {
        /// HTTP-like status code of the event.
        code: u16,
        /// Its reason (`InternalError`, ...).
        reason: String,
        /// Its message.
        message: String,
    },
    /// 410 Gone: the resourceVersion (or the list's continue token) is older than the API keeps.
    #[error("resourceVersion expired (410 Gone): {0}")]
    Gone(String),
    /// A list came without the resourceVersion to watch from.
    #[error("the list carries no resourceVersion to watch from")]
    NoResourceVersion,
}

impl Error {
    /// A label for counting losses by kind.
    #[must_use]
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::List(_) => "list",
            Self::WatchStart(_) => "watch_start",
            Self::WatchStream(_) => "watch_stream",
            Self::WatchStatus { .. } => "watch_status",
            Self::Gone(_) => "gone",
            Self::NoResourceVersion => "no_resource_version",
        }
    }
}

/// What the consumer of a watch hears.
#[derive(Debug)]
pub enum Event<K> {
    /// Every object, after the first list and after every relist: replaces all before it.
    Listed(Vec<K>),
    /// An object was added or changed.
    Applied(K),
    /// An object was deleted.
    Deleted(K),
    /// The watch was lost; changes may be missed until the next [`Event::Listed`].
    Lost(Error),
}

/// Where a watch stands.
#[derive(Debug)]
enum State<K> {
    /// Nothing listed (start, or the watch was lost): list from scratch.
    Empty,
    /// Part of a paged list read: the objects so far and the next page's token.
    Listing {
        items: Vec<K>,
        continue_token: String,
    },
    /// Listed: watch (or keep watching) from `resource_version`.
    Watching { resource_version: String },
}

/// What to ask the API next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Wait this long before anything else (backoff after a failure).
    Wait(Duration),
    /// List a page: the first when `continue_token` is `None`.
    List {
        /// Token of the next page of a list in progress.
        continue_token: Option<String>,
    },
    /// Watch from this resourceVersion.
    Watch {
        /// The last resourceVersion seen.
        resource_version: String,
    },
}

/// The decisions of one watch, with no I/O: fed what the API answered, says what to do next.
#[derive(Debug)]
pub struct Machine<K> {
    state: State<K>,
    backoff: Backoff,
    wait: Option<Duration>,
}

impl<K> Default for Machine<K> {
    fn default() -> Self {
        Self {
            state: State::Empty,
            backoff: Backoff::new(FIRST_BACKOFF, MAX_BACKOFF),
            wait: None,
        }
    }
}

impl<K: Resource + Clone> Machine<K> {
    /// What to do next.
    pub fn next_action(&mut self) -> Action {
        if let Some(d) = self.wait.take() {
            return Action::Wait(d);
        }
        match &self.state {
            State::Empty => Action::List {
                continue_token: None,
            },
            State::Listing { continue_token, .. } => Action::List {
                continue_token: Some(continue_token.clone()),
            },
            State::Watching { resource_version } => Action::Watch {
                resource_version: resource_version.clone(),
            },
        }
    }

    /// Whether an open watch stream is still wanted (false once an event ended it).
    #[must_use]
    pub fn is_watching(&self) -> bool {
        matches!(self.state, State::Watching { .. })
    }

    /// A list page arrived; the complete list once its last page has.
    pub fn page(&mut self, list: ObjectList<K>, jitter: f64) -> Option<Event<K>> {
        let mut items = match std::mem::replace(&mut self.state, State::Empty) {
            State::Listing { items, .. } => items,
            State::Empty | State::Watching { .. } => Vec::new(),
        };
        items.extend(list.items);
        match list.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(continue_token) => {
                self.state = State::Listing {
                    items,
                    continue_token,
                };
                None
            }
            None => match list.metadata.resource_version.filter(|v| !v.is_empty()) {
                Some(resource_version) => {
                    self.state = State::Watching { resource_version };
                    Some(Event::Listed(items))
                }
                None => Some(self.failed(Error::NoResourceVersion, jitter)),
            },
        }
    }

    /// The watch request was answered: the API is reachable again.
    pub fn watch_started(&mut self) {
        self.backoff.reset();
    }

    /// The server ended the watch normally: resume from the last resourceVersion.
    pub fn watch_ended(&mut self) {}

    /// An event from the open watch.
    pub fn watched(&mut self, event: WatchEvent<K>, jitter: f64) -> Option<Event<K>> {
        match event {
            WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                self.saw(o.meta().resource_version.as_deref());
                Some(Event::Applied(o))
            }
            WatchEvent::Deleted(o) => {
                self.saw(o.meta().resource_version.as_deref());
                Some(Event::Deleted(o))
            }
            WatchEvent::Bookmark(b) => {
                self.saw(Some(&b.metadata.resource_version));
                None
            }
            WatchEvent::Error(s) if s.code == 410 => {
                Some(self.failed(Error::Gone(s.message), jitter))
            }
            WatchEvent::Error(s) => Some(self.failed(
                Error::WatchStatus {
                    code: s.code,
                    reason: s.reason,
                    message: s.message,
                },
                jitter,
            )),
        }
    }

    fn saw(&mut self, resource_version: Option<&str>) {
        if let (
            State::Watching {
                resource_version: rv,
            },
            Some(v),
        ) = (&mut self.state, resource_version)
            && !v.is_empty()
        {
            v.clone_into(rv);
        }
    }

    /// A request or the stream failed: start over with a list, at once for 410 Gone on a
    /// watch or a list page (the API asking for a fresh list), else after the backoff.
    pub fn failed(&mut self, error: Error, jitter: f64) -> Event<K> {
        let error = match error {
            Error::List(e) | Error::WatchStart(e) | Error::WatchStream(e) if gone(&e) => {
                Error::Gone(e.to_string())
            }
            other => other,
        };
        // A first page that is Gone is not the resourceVersion's age: back off as for any fault.
        let fresh_list = matches!(self.state, State::Empty);
        self.state = State::Empty;
        if !matches!(error, Error::Gone(_)) || fresh_list {
            self.wait = Some(self.backoff.next_jittered(jitter));
        }
        Event::Lost(error)
    }
}

fn gone(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 410)
}

/// The two calls a watch makes: [`Api`] in production, a script in the tests.
trait Lister<K: Clone>: Send + 'static {
    fn list(&self, lp: &ListParams) -> BoxFuture<'static, kube::Result<ObjectList<K>>>;
    fn watch(
        &self,
        wp: &WatchParams,
        resource_version: &str,
    ) -> BoxFuture<'static, kube::Result<WatchStream<K>>>;
}

type WatchStream<K> = BoxStream<'static, kube::Result<WatchEvent<K>>>;

impl<K> Lister<K> for Api<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    fn list(&self, lp: &ListParams) -> BoxFuture<'static, kube::Result<ObjectList<K>>> {
        let (api, lp) = (self.clone(), lp.clone());
        async move { api.list(&lp).await }.boxed()
    }

    fn watch(
        &self,
        wp: &WatchParams,
        resource_version: &str,
    ) -> BoxFuture<'static, kube::Result<WatchStream<K>>> {
        let (api, wp, rv) = (self.clone(), wp.clone(), resource_version.to_string());
        async move { Ok(api.watch(&wp, &rv).await?.boxed()) }.boxed()
    }
}

/// Lists and watches `api` as `config` says, for as long as the stream is polled.
pub fn watch<K>(api: Api<K>, config: Config) -> impl Stream<Item = Event<K>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    drive(api, config, std::convert::identity::<K>)
}

/// [`watch`], with every object mapped by `map` as it arrives (each item of a list page before
/// the next page is asked for, each watched object before it is delivered). The mapped value
/// must keep the object's resourceVersion (the watch resumes from it).
pub fn watch_mapped<K, T>(
    api: Api<K>,
    config: Config,
    map: fn(K) -> T,
) -> impl Stream<Item = Event<T>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    T: Resource + Clone + Send + 'static,
{
    drive(api, config, map)
}

fn map_event<K, T>(ev: WatchEvent<K>, map: fn(K) -> T) -> WatchEvent<T> {
    match ev {
        WatchEvent::Added(o) => WatchEvent::Added(map(o)),
        WatchEvent::Modified(o) => WatchEvent::Modified(map(o)),
        WatchEvent::Deleted(o) => WatchEvent::Deleted(map(o)),
        WatchEvent::Bookmark(b) => WatchEvent::Bookmark(b),
        WatchEvent::Error(e) => WatchEvent::Error(e),
    }
}

fn drive<K, T, L>(lister: L, config: Config, map: fn(K) -> T) -> impl Stream<Item = Event<T>> + Send
where
    K: Clone + Send + 'static,
    T: Resource + Clone + Send + 'static,
    L: Lister<K>,
{
    let driver = Driver {
        lister,
        config,
        machine: Machine::default(),
        stream: None,
        map,
    };
    futures::stream::unfold(driver, |mut d| async move {
        let ev = d.next().await;
        Some((ev, d))
    })
}

/// Performs a [`Machine`]'s actions.
struct Driver<K, T, L> {
    lister: L,
    config: Config,
    machine: Machine<T>,
    stream: Option<WatchStream<K>>,
    map: fn(K) -> T,
}

impl<K, T, L> Driver<K, T, L>
where
    K: Clone + Send + 'static,
    T: Resource + Clone + Send + 'static,
    L: Lister<K>,
{
    async fn next(&mut self) -> Event<T> {
        loop {
            if let Some(stream) = &mut self.stream {
                let item = stream.next().await;
                let out = match item {
                    Some(Ok(ev)) => self
                        .machine
                        .watched(map_event(ev, self.map), rand::random()),
                    Some(Err(e)) => {
                        Some(self.machine.failed(Error::WatchStream(e), rand::random()))
                    }
                    None => {
                        self.machine.watch_ended();
                        self.stream = None;
                        None
                    }
                };
                if !self.machine.is_watching() {
                    self.stream = None;
                }
                match out {
                    Some(ev) => return ev,
                    None => continue,
                }
            }
            match self.machine.next_action() {
                Action::Wait(d) => tokio::time::sleep(d).await,
                Action::List { continue_token } => {
                    let lp = self.config.list_params(continue_token.as_deref());
                    match self.lister.list(&lp).await {
                        Ok(page) => {
                            let page = ObjectList {
                                types: page.types,
                                metadata: page.metadata,
                                items: page.items.into_iter().map(self.map).collect(),
                            };
                            if let Some(ev) = self.machine.page(page, rand::random()) {
                                return ev;
                            }
                        }
                        Err(e) => return self.machine.failed(Error::List(e), rand::random()),
                    }
                }
                Action::Watch { resource_version } => {
                    let wp = self.config.watch_params();
                    match self.lister.watch(&wp, &resource_version).await {
                        Ok(s) => {
                            self.machine.watch_started();
                            self.stream = Some(s);
                        }
                        Err(e) => return self.machine.failed(Error::WatchStart(e), rand::random()),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "kube_watch_tests.rs"]
mod tests;
