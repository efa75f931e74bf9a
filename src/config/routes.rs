//! `[[routes]]`: which upstream a request path goes to, what its rows record about both ends,
//! and each route's `[routes.retry]` (D3) and `[routes.sanitize]` (D4) tables.

use std::str::FromStr;
use std::sync::Arc;

use http::Uri;
use serde::{Deserialize, Serialize};

use super::duration::Dur;
use super::problems::Problems;
use super::sanitize::RawRouteSanitize;
use crate::retry::RetryPolicy;
use crate::sanitize::Sanitizer;

/// One `[[routes]]` entry as written. The required keys default to "" so that every problem of
/// an entry is reported, a missing key among them.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RawRoute {
    pub name: String,
    pub path_prefix: String,
    pub upstream: String,
    pub source_service: String,
    pub destination_service: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    pub require_user_id: bool,
    pub strip_prefix: bool,
    pub upgrades: bool,
    pub tunnel_capture_bytes: usize,
    #[serde(skip_serializing_if = "RawRouteSanitize::is_empty")]
    pub sanitize: RawRouteSanitize,
    pub retry: RawRetry,
    #[serde(skip_serializing_if = "RawTimeouts::is_empty")]
    pub timeouts: RawTimeouts,
}

/// `[routes.timeouts]`: this route's own upstream timeouts, for a route whose workflows run long
/// (n8n waits on people and slow APIs); an absent key keeps `[upstream]`'s.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawTimeouts {
    /// The upstream's response headers must arrive within this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<Dur>,
    /// Longest silence inside a response body; "0s" = none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<Dur>,
}

impl RawTimeouts {
    fn is_empty(&self) -> bool {
        self.response.is_none() && self.idle.is_none()
    }
}

impl Default for RawRoute {
    fn default() -> Self {
        Self {
            name: String::new(),
            path_prefix: "/".into(),
            upstream: String::new(),
            source_service: String::new(),
            destination_service: String::new(),
            action: None,
            require_user_id: false,
            strip_prefix: false,
            upgrades: true,
            tunnel_capture_bytes: 0,
            sanitize: RawRouteSanitize::default(),
            retry: RawRetry::default(),
            timeouts: RawTimeouts::default(),
        }
    }
}

/// `[routes.retry]`: proxy-side retries (D3).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RawRetry {
    pub max_attempts: u32,
    pub retry_on_status: Vec<u16>,
    pub retry_non_idempotent: bool,
    pub backoff_initial: Dur,
    pub backoff_max: Dur,
}

impl Default for RawRetry {
    fn default() -> Self {
        Self {
            max_attempts: 1,
            retry_on_status: vec![502, 503, 504],
            retry_non_idempotent: false,
            backoff_initial: Dur::ms(100),
            backoff_max: Dur::secs(2),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub path_prefix: String,
    /// Scheme and authority of the upstream.
    pub upstream_scheme: http::uri::Scheme,
    pub upstream_authority: http::uri::Authority,
    /// Path the upstream is mounted under, without a trailing slash ("" for the root).
    pub upstream_base_path: String,
    pub source_service: String,
    pub destination_service: String,
    pub action: Option<String>,
    pub require_user_id: bool,
    pub strip_prefix: bool,
    /// Protocol upgrades (WebSocket) are tunnelled; `false`: refused with 403 `UPGRADE_DENIED`.
    pub upgrades: bool,
    /// Bytes of each direction of a tunnel kept (decoded, sanitized) in the row; 0 = none.
    pub tunnel_capture_bytes: usize,
    /// `[sanitize]` plus this route's `[routes.sanitize]`, compiled.
    pub sanitizer: Arc<Sanitizer>,
    pub retry: RetryPolicy,
    /// `[routes.timeouts]` as given; [`Route::response_timeout`] and [`Route::idle_timeout`]
    /// resolve them against `[upstream]`.
    pub timeouts: RawTimeouts,
}

impl Route {
    /// How long the upstream may take to send its response headers on this route.
    pub fn response_timeout(&self, upstream: &super::UpstreamConfig) -> std::time::Duration {
        self.timeouts
            .response
            .map_or(upstream.response_timeout, |d| d.0)
    }

    /// Longest silence inside a response body on this route; `None`: no limit.
    pub fn idle_timeout(&self, upstream: &super::UpstreamConfig) -> Option<std::time::Duration> {
        match self.timeouts.idle {
            Some(d) => d.nonzero(),
            None => upstream.idle_timeout,
        }
    }
}

/// Most bytes of each tunnel direction a row may keep.
const MAX_TUNNEL_CAPTURE: usize = 1 << 20;

/// Reads `[[routes]]`: each entry, and its `retry` and `sanitize` tables, on their own, so a
/// problem in one hides nothing in the others.
pub(super) fn read(value: toml::Value, p: &mut Problems) -> Vec<RawRoute> {
    let toml::Value::Array(entries) = value else {
        p.unread("routes", "must be an array of tables (`[[routes]]`)");
        return Vec::new();
    };
    let mut routes = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let at = format!("routes.{i}");
        let toml::Value::Table(mut table) = entry else {
            p.unread(&at, "must be a table");
            routes.push(RawRoute::default());
            continue;
        };
        let retry = table.remove("retry");
        let sanitize = table.remove("sanitize");
        let timeouts = table.remove("timeouts");
        let mut route: RawRoute = super::raw::section(&at, toml::Value::Table(table), p);
        if let Some(v) = retry {
            route.retry = super::raw::section(&format!("{at}.retry"), v, p);
        }
        if let Some(v) = sanitize {
            route.sanitize = super::raw::section(&format!("{at}.sanitize"), v, p);
        }
        if let Some(v) = timeouts {
            route.timeouts = super::raw::section(&format!("{at}.timeouts"), v, p);
        }
        routes.push(route);
    }
    routes
}

/// Checks every route, pushing every problem; sorted longest prefix first.
pub(super) fn check(
    raw: &[RawRoute],
    sanitize: Option<&Arc<Sanitizer>>,
    p: &mut Problems,
) -> Option<Vec<Route>> {
    if raw.is_empty() {
        p.absent("routes", "at least one `[[routes]]` entry is required");
    }
    let mut routes = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let at = format!("routes[{i}] ({:?})", r.name);
        let key = |k: &str| format!("routes.{i}.{k}");
        for (k, v) in [
            ("name", &r.name),
            ("upstream", &r.upstream),
            ("source_service", &r.source_service),
            ("destination_service", &r.destination_service),
        ] {
            if v.is_empty() {
                p.absent(
                    &key(k),
                    format!("{at}: `{k}` is required and must not be empty"),
                );
            }
        }
        let earlier = &raw[..i];
        if !r.name.is_empty() && earlier.iter().any(|o| o.name == r.name) {
            p.between(&[&key("name")], format!("{at}: duplicate route name"));
        }
        if !r.path_prefix.starts_with('/') {
            let problem = format!(
                "{at}: `path_prefix` {:?} must start with '/'",
                r.path_prefix
            );
            p.about(&key("path_prefix"), problem);
        } else if earlier.iter().any(|o| o.path_prefix == r.path_prefix) {
            let problem = format!("{at}: duplicate `path_prefix` {:?}", r.path_prefix);
            p.between(&[&key("path_prefix")], problem);
        }
        let upstream = upstream(r, &at, &key("upstream"), p);
        let retry = retry(&r.retry, &at, &key("retry"), p);
        if r.tunnel_capture_bytes > MAX_TUNNEL_CAPTURE {
            p.about(
                &key("tunnel_capture_bytes"),
                format!("{at}: `tunnel_capture_bytes` must be at most {MAX_TUNNEL_CAPTURE}"),
            );
        }
        if r.timeouts.response.is_some_and(|d| d.is_zero()) {
            p.about(
                &key("timeouts.response"),
                format!("{at}: `timeouts.response` must be more than 0s"),
            );
        }
        let sanitizer =
            super::sanitize::check_route(sanitize, &r.sanitize, (&at, &key("sanitize")), p);
        if let (Some((uri, scheme, authority)), Some(retry), Some(sanitizer)) =
            (upstream, retry, sanitizer)
        {
            routes.push(Route {
                name: r.name.clone(),
                path_prefix: r.path_prefix.clone(),
                upstream_scheme: scheme,
                upstream_authority: authority,
                upstream_base_path: uri.path().trim_end_matches('/').to_owned(),
                source_service: r.source_service.clone(),
                destination_service: r.destination_service.clone(),
                action: r.action.clone().filter(|a| !a.is_empty()),
                require_user_id: r.require_user_id,
                strip_prefix: r.strip_prefix,
                upgrades: r.upgrades,
                tunnel_capture_bytes: r.tunnel_capture_bytes,
                sanitizer,
                retry,
                timeouts: r.timeouts.clone(),
            });
        }
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
    (routes.len() == raw.len()).then_some(routes)
}

/// The route's `upstream`: an absolute http(s) URL without query or user info.
fn upstream(
    r: &RawRoute,
    at: &str,
    key: &str,
    p: &mut Problems,
) -> Option<(Uri, http::uri::Scheme, http::uri::Authority)> {
    if r.upstream.is_empty() {
        return None;
    }
    let mut problem = |text: String| p.about(key, format!("{at}: `upstream` {text}"));
    let uri = match Uri::from_str(&r.upstream) {
        Ok(u) => u,
        Err(e) => {
            problem(format!("{:?}: {e}", r.upstream));
            return None;
        }
    };
    let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned()) else {
        problem(format!(
            "{:?} must be an absolute http:// or https:// URL",
            r.upstream
        ));
        return None;
    };
    if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
        problem(format!("scheme {scheme} is not http or https"));
        return None;
    }
    if uri.query().is_some() || authority.as_str().contains('@') {
        problem(format!(
            "{:?} must not carry a query or user info",
            r.upstream
        ));
        return None;
    }
    Some((uri, scheme, authority))
}

/// The route's `[routes.retry]`, checked by `RetryPolicy::try_new`.
fn retry(r: &RawRetry, at: &str, key: &str, p: &mut Problems) -> Option<RetryPolicy> {
    if p.any_unread_in(key) {
        return None;
    }
    RetryPolicy::try_new(
        r.max_attempts,
        r.retry_on_status.clone(),
        r.retry_non_idempotent,
        r.backoff_initial.millis(),
        r.backoff_max.millis(),
    )
    .map_err(|e| p.push(format!("{at}: `retry`: {e}")))
    .ok()
}
