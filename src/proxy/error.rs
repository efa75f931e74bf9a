//! What can go wrong with a request, who is at fault, and the ONE mapping to an HTTP answer.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    Client,
    Upstream,
    Proxy,
}

#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("no route matches the request path")]
    NoRoute,
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("the route requires the user id header {0}")]
    MissingUserId(String),
    #[error("request body exceeds the limit of {0} bytes")]
    BodyTooLarge(u64),
    #[error("request body not received in time: {0}")]
    ClientTimeout(String),
    #[error("client request body failed: {0}")]
    ClientBody(String),
    #[error("the trace store is unavailable: {0}")]
    StoreUnavailable(String),
    #[error("cannot connect to the upstream: {0}")]
    UpstreamConnect(String),
    #[error("TLS handshake with the upstream failed: {0}")]
    UpstreamTls(String),
    #[error("the upstream did not answer within {0} ms")]
    UpstreamTimeout(u128),
    #[error("the upstream closed the exchange: {0}")]
    UpstreamAborted(String),
    #[error("trace-proxy shut down before the exchange finished")]
    Interrupted,
    #[error("protocol upgrade to {0:?} refused: the route has upgrades = false")]
    UpgradeDenied(String),
}

impl ProxyError {
    /// The `error_code` stored in the row (DESIGN.md §2 vocabulary).
    pub(crate) fn code(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "NO_ROUTE",
            ProxyError::BadRequest(_) => "BAD_REQUEST",
            ProxyError::MissingUserId(_) => "MISSING_USER_ID",
            ProxyError::BodyTooLarge(_) => "BODY_TOO_LARGE",
            ProxyError::ClientTimeout(_) => "CLIENT_TIMEOUT",
            ProxyError::ClientBody(_) => "CLIENT_ABORTED",
            ProxyError::StoreUnavailable(_) => "STORE_UNAVAILABLE",
            ProxyError::UpstreamConnect(_) => "CONNECTION_FAILED",
            ProxyError::UpstreamTls(_) => "TLS_FAILED",
            ProxyError::UpstreamTimeout(_) => "TIMEOUT",
            ProxyError::UpstreamAborted(_) => "UPSTREAM_ABORTED",
            ProxyError::Interrupted => "INTERRUPTED",
            ProxyError::UpgradeDenied(_) => "UPGRADE_DENIED",
        }
    }

    pub(crate) fn fault(&self) -> Fault {
        match self {
            ProxyError::NoRoute
            | ProxyError::BadRequest(_)
            | ProxyError::MissingUserId(_)
            | ProxyError::BodyTooLarge(_)
            | ProxyError::ClientTimeout(_)
            | ProxyError::ClientBody(_)
            | ProxyError::UpgradeDenied(_) => Fault::Client,
            ProxyError::StoreUnavailable(_) | ProxyError::Interrupted => Fault::Proxy,
            ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamTls(_)
            | ProxyError::UpstreamTimeout(_)
            | ProxyError::UpstreamAborted(_) => Fault::Upstream,
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BadRequest(_)
            | ProxyError::MissingUserId(_)
            | ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::UpgradeDenied(_) => StatusCode::FORBIDDEN,
            ProxyError::ClientTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::StoreUnavailable(_) | ProxyError::Interrupted => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamTls(_)
            | ProxyError::UpstreamAborted(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Short fixed text for the client; details go to the logs and the row.
    fn public_message(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no route for this path\n",
            ProxyError::BadRequest(_) => "malformed request\n",
            ProxyError::MissingUserId(_) => "missing user id header\n",
            ProxyError::BodyTooLarge(_) => "request body too large\n",
            ProxyError::ClientTimeout(_) => "request body timeout\n",
            ProxyError::ClientBody(_) => "request body failed\n",
            ProxyError::StoreUnavailable(_) => "trace store unavailable\n",
            ProxyError::UpstreamConnect(_) | ProxyError::UpstreamTls(_) => "upstream unreachable\n",
            ProxyError::UpstreamTimeout(_) => "upstream timeout\n",
            ProxyError::UpstreamAborted(_) => "upstream closed the connection\n",
            ProxyError::Interrupted => "proxy shutting down\n",
            ProxyError::UpgradeDenied(_) => "protocol upgrades are not allowed here\n",
        }
    }

    /// The one place a failure becomes an HTTP response.
    pub(crate) fn to_response(&self) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(Bytes::from_static(
            self.public_message().as_bytes(),
        )));
        *resp.status_mut() = self.status();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp.headers_mut().insert(
            "x-trace-proxy-error",
            header::HeaderValue::from_static(self.code()),
        );
        resp
    }
}
