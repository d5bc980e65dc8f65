//! Every error NMI's main HTTP surface answers, as one [`ResponseError`]: the original's status
//! codes and bodies (Go's `http.Error`: plain text plus newline, `nosniff`), the JSON body of
//! the missing `Metadata` header, and the headers our own bounds add (`Retry-After`,
//! `Connection: close`). Handlers return `Err(NmiError::…)` and never build an error response
//! by hand.

use crate::actors::nmi::broker::BrokerError;
use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpResponse, ResponseError};

/// Body of the 400 for a missing `Metadata: true` header (the original's JSON plus newline).
pub const METADATA_HEADER_ERROR: &str = "{\"error\":\"invalid_request\",\"error_description\":\"Required metadata header not specified\"}\n";

/// What went wrong with a request to NMI's main port.
#[derive(Debug, thiserror::Error)]
pub enum NmiError {
    /// A token path NMI does not serve (the original's 400).
    #[error("Invalid request")]
    InvalidRequest,
    /// `--metadata-header-required` and no `Metadata: true` header.
    #[error("Required metadata header not specified")]
    MetadataHeaderMissing,
    /// A token request without `resource`.
    #[error("parameter resource cannot be empty")]
    ResourceMissing,
    /// The connection has no peer address.
    #[error("request remote address is empty")]
    NoRemoteAddress,
    /// `/host/token` without both pod headers.
    #[error("missing 'podname' and 'podns' from request header")]
    PodHeadersMissing,
    /// `/host/token` from anywhere but the node itself.
    #[error("request remote address is not from a host")]
    NotFromHost,
    /// `--block-instance-metadata` and a request for `/metadata/instance`.
    #[error("Request blocked by AAD Pod Identity NMI")]
    InstanceBlocked,
    /// The caller's address holds more connections than `--max-connections-per-source`.
    #[error("too many connections from this address")]
    TooManyConnections,
    /// The token flow failed; `retry_after` is `--set-retry-after-header` (for "not found").
    #[error("{error}")]
    Broker {
        /// What the broker said.
        error: BrokerError,
        /// Whether "not found" becomes 503 with `Retry-After: 20`.
        retry_after: bool,
    },
    /// A relayed request's body could not be read.
    #[error("cannot read request body: {0}")]
    BodyUnreadable(String),
    /// A relayed request's body is over the limit.
    #[error("request body larger than 1 MiB")]
    BodyTooLarge,
    /// A relayed request's body did not arrive within `--pass-through-body-timeout`.
    #[error("request body not received in time")]
    BodyTimeout,
    /// Every relay place is taken (`--max-pass-through`).
    #[error("too many requests are being relayed to the metadata service")]
    PassThroughBusy,
    /// The metadata service could not be reached.
    #[error("{0}")]
    PassThroughFailed(String),
    /// NMI is stopping (SIGTERM, a node drained, a rollout) while the request was in flight
    /// (waiting for its pod or its assignment): answered at once, to be retried against the
    /// NMI that replaces this one, rather than cut without an answer.
    #[error("NMI is shutting down; retry")]
    ShuttingDown,
}

impl NmiError {
    /// Whether the connection is closed after the answer (a client over a bound must not keep it).
    fn closes_connection(&self) -> bool {
        matches!(self, Self::TooManyConnections | Self::BodyTimeout)
    }

    fn retry_after(&self) -> Option<&'static str> {
        match self {
            Self::Broker { error, retry_after } if *retry_after && error.is_not_found() => {
                Some("20")
            }
            Self::Broker {
                error: BrokerError::Busy { .. },
                ..
            }
            | Self::PassThroughBusy
            | Self::ShuttingDown => Some("1"),
            _ => None,
        }
    }
}

impl ResponseError for NmiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidRequest
            | Self::MetadataHeaderMissing
            | Self::ResourceMissing
            | Self::PodHeadersMissing
            | Self::BodyUnreadable(_) => StatusCode::BAD_REQUEST,
            Self::NoRemoteAddress | Self::NotFromHost | Self::PassThroughFailed(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Self::InstanceBlocked => StatusCode::FORBIDDEN,
            Self::TooManyConnections => StatusCode::TOO_MANY_REQUESTS,
            Self::Broker { error, retry_after } if *retry_after && error.is_not_found() => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Broker { error, .. } => {
                StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::PassThroughBusy | Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut r = if matches!(self, Self::MetadataHeaderMissing) {
            HttpResponse::build(self.status_code())
                .insert_header(("Content-Type", "application/json; charset=utf-8"))
                .body(METADATA_HEADER_ERROR)
        } else {
            text(self.status_code(), &self.to_string())
        };
        if let Some(secs) = self.retry_after() {
            r.headers_mut().insert(
                HeaderName::from_static("retry-after"),
                HeaderValue::from_static(secs),
            );
        }
        if self.closes_connection() {
            r.head_mut()
                .set_connection_type(actix_web::http::ConnectionType::Close);
        }
        r
    }
}

/// A plain-text error as Go's `http.Error` writes it.
fn text(status: StatusCode, msg: &str) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header(("Content-Type", "text/plain; charset=utf-8"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(format!("{msg}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody as _;

    fn body(r: HttpResponse) -> String {
        String::from_utf8(r.into_body().try_into_bytes().unwrap().to_vec()).unwrap()
    }

    #[test]
    fn errors_answer_with_the_originals_status_and_go_style_text_body() {
        let r = NmiError::InvalidRequest.error_response();
        assert_eq!(r.status(), 400);
        assert_eq!(
            r.headers().get("content-type").unwrap(),
            "text/plain; charset=utf-8"
        );
        assert_eq!(
            r.headers().get("x-content-type-options").unwrap(),
            "nosniff"
        );
        assert_eq!(body(r), "Invalid request\n");
        let r = NmiError::MetadataHeaderMissing.error_response();
        assert_eq!(r.status(), 400);
        assert_eq!(body(r), METADATA_HEADER_ERROR);
        assert_eq!(NmiError::InstanceBlocked.status_code(), 403);
        assert_eq!(NmiError::NotFromHost.status_code(), 500);
    }

    #[test]
    fn bounds_say_when_to_retry_and_close_the_connection() {
        let r = NmiError::PassThroughBusy.error_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers().get("retry-after").unwrap(), "1");
        let r = NmiError::TooManyConnections.error_response();
        assert_eq!(r.status(), 429);
        assert_eq!(
            r.head().connection_type(),
            actix_web::http::ConnectionType::Close
        );
        assert_eq!(NmiError::BodyTimeout.status_code(), 408);
        assert_eq!(NmiError::BodyTooLarge.status_code(), 413);
    }

    #[test]
    fn not_found_becomes_503_with_retry_after_20_only_when_asked() {
        let not_found = || BrokerError::PodNotFound {
            ip: "127.1.0.9".parse().unwrap(),
            node: "n".into(),
        };
        let plain = NmiError::Broker {
            error: not_found(),
            retry_after: false,
        };
        assert_eq!(plain.status_code(), 404);
        assert!(
            plain
                .error_response()
                .headers()
                .get("retry-after")
                .is_none()
        );
        let asked = NmiError::Broker {
            error: not_found(),
            retry_after: true,
        }
        .error_response();
        assert_eq!(asked.status(), 503);
        assert_eq!(asked.headers().get("retry-after").unwrap(), "20");
        assert_eq!(body(asked), "no pod found with IP 127.1.0.9 on node n\n");
    }
}
