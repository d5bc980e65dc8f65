//! Parsing of what a caller sends: the one normalised path that decides the route (and is the
//! only path ever forwarded), and the token query.
//!
//! Pure functions over borrowed input; fuzzed by property tests (no input may panic).
//!
//! A path is read once: percent-escapes decoded (all of them, as the original's router saw
//! `URL.Path`), `\` read as `/`, runs of `/` collapsed and dot segments resolved (RFC 3986
//! §5.2.4). The result, a [`NormalPath`], is classified, and the pass-through forwards exactly its
//! [`NormalPath::wire`] form, in which nothing an HTTP stack would rewrite is left (no dot
//! segments, no `\`, no escape that decodes to a separator). So the metadata service can only
//! see the route NMI chose, whatever tricks the caller played (`/x/../token`, `%2e%2e`, `//`,
//! `\`).

use crate::actors::nmi::identity::Wanted;
use std::borrow::Cow;

/// What a request path asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// `/metadata/identity/oauth2/token...` (case-insensitive, prefix match): answered by NMI.
    Token,
    /// A malformed path: a token path spelt with backslashes or with the token segments
    /// anywhere else (the original's unanchored `/metadata/identity(.*?)oauth2(.*?)token`), a
    /// backslash in any other path NMI or the metadata service would act on, or bytes that are
    /// not a path at all (control characters, invalid UTF-8). 400 `Invalid request`.
    Invalid,
    /// `/host/token...`: host-network agents naming a pod.
    HostToken,
    /// `/metadata/instance...` (case-insensitive): blocked on request, else passed through.
    Instance,
    /// Anything else: passed through to the metadata service.
    Other,
}

impl Route {
    /// The route's name as a metric label (a fixed set: never request input). Token routes keep
    /// the paths the original used as `operation_type`, so dashboards keep working.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Token => TOKEN_PATH,
            Self::HostToken => HOST_TOKEN_PATH,
            Self::Instance => "/metadata/instance",
            Self::Invalid => "invalid",
            Self::Other => "other",
        }
    }
}

/// The token endpoint's path.
pub const TOKEN_PATH: &str = "/metadata/identity/oauth2/token";
/// The host token endpoint's path.
pub const HOST_TOKEN_PATH: &str = "/host/token";

/// A request path after normalisation: decoded, separators unified, dot segments resolved.
/// Only [`normalize`] makes one, so a value of this type is always normal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NormalPath<'a> {
    text: Cow<'a, str>,
    had_backslash: bool,
}

/// Why a path could not be normalised (answered 400 `Invalid request`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadPath {
    /// The path does not start with `/` (e.g. `*` or an empty target).
    #[error("path does not start with '/'")]
    NotAbsolute,
    /// The decoded path is not UTF-8.
    #[error("path is not UTF-8 once decoded")]
    NotUtf8,
    /// The decoded path holds a control character.
    #[error("path holds a control character once decoded")]
    Control,
}

/// Normalises a raw request path (as it appears in the request line, without the query).
///
/// # Errors
/// [`BadPath`] for input that is not a path.
pub fn normalize(raw: &str) -> Result<NormalPath<'_>, BadPath> {
    if !raw.starts_with('/') {
        return Err(BadPath::NotAbsolute);
    }
    if is_plain(raw) {
        // The common case (every SDK's token path): nothing to decode or resolve.
        return Ok(NormalPath {
            text: Cow::Borrowed(raw),
            had_backslash: false,
        });
    }
    let decoded = percent_encoding::percent_decode_str(raw).collect::<Vec<u8>>();
    let decoded = String::from_utf8(decoded).map_err(|_| BadPath::NotUtf8)?;
    if decoded.chars().any(char::is_control) {
        return Err(BadPath::Control);
    }
    let had_backslash = decoded.contains('\\');
    let unified = if had_backslash {
        Cow::Owned(decoded.replace('\\', "/"))
    } else {
        Cow::Borrowed(decoded.as_str())
    };
    Ok(NormalPath {
        text: Cow::Owned(remove_dot_segments(&unified)),
        had_backslash,
    })
}

/// True when `raw` is already normal: no escape, no backslash, no empty or dot segment, no
/// control character.
fn is_plain(raw: &str) -> bool {
    let b = raw.as_bytes();
    let mut prev_slash = false;
    for &c in b {
        match c {
            // A segment starting with '.' may be a dot segment; the slow path decides.
            b'%' | b'\\' | 0..0x20 | 0x7f => return false,
            b'/' | b'.' if prev_slash => return false,
            _ => {}
        }
        prev_slash = c == b'/';
    }
    true
}

/// RFC 3986 §5.2.4 over `/`-separated segments, also dropping empty segments (runs of `/`).
/// A trailing `/` (or a trailing dot segment) is kept as a trailing `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut trailing = false;
    for seg in path.split('/').skip(1) {
        trailing = false;
        match seg {
            "" | "." => trailing = true,
            ".." => {
                out.pop();
                trailing = true;
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() || trailing {
        s.push('/');
    }
    s
}

/// Characters left unescaped on the wire: RFC 3986 `pchar` minus `%` (escaped so that decoding
/// is exact), plus `/`.
fn wire_safe(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
        )
}

impl NormalPath<'_> {
    /// The decoded, normalised path.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The route this path asks for.
    #[must_use]
    pub fn route(&self) -> Route {
        classify_normal(&self.text, self.had_backslash)
    }

    /// The path as sent to the metadata service: the normalised path with every byte outside
    /// `pchar` (and `%`) escaped. Decoding it gives [`Self::as_str`] back, and an HTTP client or
    /// server normalising it changes nothing.
    #[must_use]
    pub fn wire(&self) -> Cow<'_, str> {
        if self.text.bytes().all(wire_safe) {
            return Cow::Borrowed(&self.text);
        }
        let mut out = String::with_capacity(self.text.len() + 16);
        for &c in self.text.as_bytes() {
            if wire_safe(c) {
                out.push(char::from(c));
            } else {
                out.push('%');
                out.push(char::from(HEX[usize::from(c >> 4)]));
                out.push(char::from(HEX[usize::from(c & 0xf)]));
            }
        }
        Cow::Owned(out)
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The route of a raw request path: [`normalize`] then [`NormalPath::route`]; a path that cannot
/// be normalised is [`Route::Invalid`].
#[must_use]
pub fn classify(raw: &str) -> Route {
    normalize(raw).map_or(Route::Invalid, |p| p.route())
}

fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

fn find_ci(hay: &str, needle: &str, from: usize) -> Option<usize> {
    let h = hay.as_bytes();
    let n = needle.as_bytes();
    if n.len() > h.len() {
        return None;
    }
    (from..=h.len() - n.len()).find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

/// True when `/metadata/identity`, then `oauth2`, then `token` appear in that order anywhere
/// (ASCII case-insensitive): the shape of a token request however it is dressed up.
fn looks_like_token_path(path: &str) -> bool {
    let Some(i) = find_ci(path, "/metadata/identity", 0) else {
        return false;
    };
    let Some(j) = find_ci(path, "oauth2", i + "/metadata/identity".len()) else {
        return false;
    };
    find_ci(path, "token", j + "oauth2".len()).is_some()
}

fn classify_normal(path: &str, had_backslash: bool) -> Route {
    let route = if starts_with_ci(path, TOKEN_PATH) {
        Route::Token
    } else if looks_like_token_path(path) {
        Route::Invalid
    } else if path.starts_with(HOST_TOKEN_PATH) {
        Route::HostToken
    } else if starts_with_ci(path, "/metadata/instance") {
        Route::Instance
    } else {
        Route::Other
    };
    // A backslash in a path NMI (or a metadata service reading `\` as `/`) acts on is malformed.
    if had_backslash && route != Route::Other {
        Route::Invalid
    } else {
        route
    }
}

/// The query of a token request. Values are percent-decoded; empty values count as absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenQuery<'a> {
    /// `resource`.
    pub resource: Option<Cow<'a, str>>,
    /// `client_id`.
    pub client_id: Option<Cow<'a, str>>,
    /// `msi_res_id` or `mi_res_id`.
    pub resource_id: Option<Cow<'a, str>>,
    /// `object_id`.
    pub object_id: Option<Cow<'a, str>>,
    /// `api-version` (accepted, not enforced: SDKs send 2018-02-01 and 2019-08-01).
    pub api_version: Option<Cow<'a, str>>,
}

impl<'a> TokenQuery<'a> {
    /// Parses a raw query string; the first occurrence of a key wins, as in Go's `Values.Get`.
    #[must_use]
    pub fn parse(query: &'a str) -> Self {
        let mut q = Self::default();
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            if v.is_empty() {
                continue;
            }
            let slot = match &*k {
                "resource" => &mut q.resource,
                "client_id" => &mut q.client_id,
                "msi_res_id" | "mi_res_id" => &mut q.resource_id,
                "object_id" => &mut q.object_id,
                "api-version" => &mut q.api_version,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(v);
            }
        }
        q
    }

    /// The identity the request names: `client_id`, else the resource id, else `object_id`.
    #[must_use]
    pub fn wanted(&self) -> Wanted<'_> {
        if let Some(c) = &self.client_id {
            Wanted::ClientId(c)
        } else if let Some(r) = &self.resource_id {
            Wanted::ResourceId(r)
        } else if let Some(o) = &self.object_id {
            Wanted::ObjectId(o)
        } else {
            Wanted::Any
        }
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
