//! The Memory Explorer's server side: the page's static assets (embedded in the binary, served
//! under `/ui/`), sign-in and sign-out, and the security headers every admin response carries.
//!
//! The explorer is a small client over the query API: its views fetch `/api/...` and render
//! exactly what comes back, so there is one query layer and "copy as JSON" is the body of the
//! matching API call. Nothing here reads the database.
//!
//! | path | what |
//! |---|---|
//! | `GET /` | redirect to `/ui/` |
//! | `GET /ui/`, `/ui/traces`, `/ui/traces/{id}`, … | the page shell (one HTML document; the script picks the view) |
//! | `GET /ui/assets/{version}/{file}` | script, style; immutable, so cached for a year |
//! | `GET /ui/session` | `{"tokenConfigured", "signedIn", "n8nExecutionUrl"}` for the page |
//! | `POST /ui/signin` | `{"token": "..."}` → 204 + session cookie (same-origin only, throttled) |
//! | `POST /ui/signout` | ends the session server-side, clears the cookie |

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{json, Value};

use super::session::{self, SignInError};
use super::{error_response, json_response, ApiError, ApiState, Resp};
use crate::config::AdminConfig;
use crate::error::Chain;

/// `Content-Security-Policy` of every admin response: only this origin's script and style, no
/// inline code, no framing, nothing sent anywhere else.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Largest sign-in body read.
const MAX_SIGN_IN_BYTES: usize = 4096;
/// How long a sign-in body may take to arrive.
const SIGN_IN_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The explorer's state: its sessions and what the page is told.
pub struct Explorer {
    pub(super) sessions: session::Sessions,
    n8n_execution_url: Option<String>,
}

impl Explorer {
    pub fn new(admin: &AdminConfig) -> Explorer {
        Explorer {
            sessions: session::Sessions::new(admin.session_ttl),
            n8n_execution_url: admin.n8n_execution_url.clone(),
        }
    }
}

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_str!(concat!("ui/assets/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Everything the page loads besides the shell. Modules import each other by relative path, so
/// they all live under one versioned directory.
const ASSETS: &[Asset] = &[
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("format.js", JS),
    asset!("json.js", JS),
    asset!("chart.js", JS),
    asset!("widgets.js", JS),
    asset!("rows.js", JS),
    asset!("views/overview.js", JS),
    asset!("views/traces.js", JS),
    asset!("views/trace.js", JS),
    asset!("views/workflow.js", JS),
    asset!("views/user.js", JS),
    asset!("views/execution.js", JS),
    asset!("views/signin.js", JS),
];

const SHELL: &str = include_str!("ui/assets/index.html");

/// First path segments under `/ui/` that are views (the page shell answers them).
const VIEWS: [&str; 6] = ["", "signin", "traces", "workflows", "users", "executions"];

/// A digest of every asset: part of their URLs, so a new build is never served from a stale
/// cache while unchanged assets stay cached for good.
fn version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let mut h = crc32fast::Hasher::new();
        h.update(SHELL.as_bytes());
        for a in ASSETS {
            h.update(a.name.as_bytes());
            h.update(a.body.as_bytes());
        }
        format!("{:08x}", h.finalize())
    })
}

fn shell() -> &'static str {
    static PAGE: OnceLock<String> = OnceLock::new();
    PAGE.get_or_init(|| SHELL.replace("{{version}}", version()))
}

/// Total bytes of the shell and every asset (the README promises a budget).
pub fn asset_bytes() -> usize {
    SHELL.len() + ASSETS.iter().map(|a| a.body.len()).sum::<usize>()
}

/// True for the paths this module answers.
pub fn serves(path: &str) -> bool {
    path == "/" || path == "/ui" || path.starts_with("/ui/")
}

/// Adds the headers every admin response carries (UI and API alike).
pub fn secure(resp: &mut Resp) {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// Answers a path [`serves`] accepts.
pub async fn handle<B>(state: &ApiState, peer: IpAddr, req: Request<B>) -> Resp
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let path = req.uri().path().to_owned();
    let read_only = req.method() == Method::GET || req.method() == Method::HEAD;
    match path.as_str() {
        "/ui/signin" if req.method() == Method::POST => sign_in(state, peer, req)
            .await
            .unwrap_or_else(|e| error_response(&e)),
        "/ui/signout" => sign_out(state, &req).unwrap_or_else(|e| error_response(&e)),
        _ if !read_only => error_response(&ApiError::MethodNotAllowed),
        "/" | "/ui" => redirect("/ui/"),
        "/ui/session" => json_response(StatusCode::OK, &status(state, &req)),
        _ => static_file(&path),
    }
}

fn redirect(to: &'static str) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::FOUND;
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    resp
}

fn static_file(path: &str) -> Resp {
    let rest = path.strip_prefix("/ui/").unwrap_or_default();
    if let Some(file) = rest.strip_prefix("assets/") {
        let found = file
            .split_once('/')
            .filter(|(v, _)| *v == version())
            .and_then(|(_, name)| ASSETS.iter().find(|a| a.name == name));
        return match found {
            Some(a) => body_response(
                a.content_type,
                a.body,
                "public, max-age=31536000, immutable",
            ),
            None => not_found(),
        };
    }
    let view = rest.split('/').next().unwrap_or_default();
    if VIEWS.contains(&view) {
        // The shell names the current asset version, so it is revalidated every time.
        body_response("text/html; charset=utf-8", shell(), "no-cache")
    } else {
        not_found()
    }
}

fn not_found() -> Resp {
    let mut resp = body_response("text/plain; charset=utf-8", "not found\n", "no-store");
    *resp.status_mut() = StatusCode::NOT_FOUND;
    resp
}

fn body_response(content_type: &'static str, body: &'static str, cache: &'static str) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}

/// What the page needs to know before it renders: whether it can sign in at all, whether it
/// is signed in, and (once signed in) where n8n executions link to.
fn status<B>(state: &ApiState, req: &Request<B>) -> Value {
    let signed_in = state.token.as_ref().is_some_and(|t| {
        session::cookie_value(req.headers()).is_some_and(|id| state.explorer.sessions.valid(id, t))
    });
    json!({
        "tokenConfigured": state.token.is_some(),
        "signedIn": signed_in,
        "n8nExecutionUrl": if signed_in { state.explorer.n8n_execution_url.as_deref() } else { None },
    })
}

/// CSRF defence for sign-in and sign-out (besides `SameSite=Strict` and the JSON body, which a
/// cross-site form cannot send): the browser's own `Sec-Fetch-Site`, when sent, must say
/// `same-origin`, and `Origin`, when sent, must name this host; one of them must be there.
/// Returns whether the page was loaded over HTTPS (then the cookie is `Secure`).
fn same_origin<B>(req: &Request<B>) -> Result<bool, ApiError> {
    let refuse = |why: &str| {
        Err(ApiError::Forbidden(format!(
            "cross-site request refused: {why}"
        )))
    };
    let site = req.headers().get("sec-fetch-site");
    if let Some(site) = site {
        if site.as_bytes() != b"same-origin" {
            return refuse("Sec-Fetch-Site is not same-origin");
        }
    }
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return match site {
            Some(_) => Ok(false),
            None => refuse("neither Origin nor Sec-Fetch-Site was sent"),
        };
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let origin = origin.to_str().unwrap_or_default();
    let (https, origin_host) = match origin.split_once("://") {
        Some(("https", h)) => (true, h),
        Some(("http", h)) => (false, h),
        _ => return refuse("Origin is not an http(s) origin"),
    };
    match host {
        Some(host) if host.eq_ignore_ascii_case(origin_host) => Ok(https),
        _ => refuse("Origin is not this host"),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    token: String,
}

async fn sign_in<B>(state: &ApiState, peer: IpAddr, req: Request<B>) -> Result<Resp, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let https = same_origin(&req)?;
    let Some(token) = &state.token else {
        return Err(ApiError::Disabled);
    };
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim() == "application/json")
        });
    if !json {
        return Err(ApiError::BadRequest(
            "send the token as JSON: Content-Type: application/json, {\"token\": \"...\"}".into(),
        ));
    }
    #[expect(
        clippy::disallowed_methods,
        reason = "bounded: Limited to MAX_SIGN_IN_BYTES, within SIGN_IN_BODY_TIMEOUT"
    )]
    let body = Limited::new(req.into_body(), MAX_SIGN_IN_BYTES).collect();
    let bytes = match tokio::time::timeout(SIGN_IN_BODY_TIMEOUT, body).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) | Err(_) => {
            return Err(ApiError::BadRequest(format!(
                "the sign-in body must be at most {MAX_SIGN_IN_BYTES} bytes, sent within {} s",
                SIGN_IN_BODY_TIMEOUT.as_secs()
            )))
        }
    };
    // The presented value is never logged or echoed, whatever it is.
    let presented: SignIn = serde_json::from_slice(&bytes).map_err(|_| {
        ApiError::BadRequest("the body must be {\"token\": \"...\"} and nothing else".into())
    })?;
    match state
        .explorer
        .sessions
        .sign_in(token, presented.token.as_bytes(), peer)
    {
        Ok(new) => {
            tracing::info!(%peer, "explorer sign-in");
            let cookie = format!(
                "{}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{}",
                session::COOKIE,
                new.id,
                new.ttl.as_secs(),
                if https { "; Secure" } else { "" }
            );
            Ok(with_cookie(cookie))
        }
        Err(e @ SignInError::WrongToken) => {
            tracing::warn!(%peer, reason = %Chain(&e), "explorer sign-in refused");
            Err(ApiError::WrongToken)
        }
        Err(SignInError::Throttled(wait)) => {
            tracing::warn!(%peer, retry_after_s = wait.as_secs(), "explorer sign-in throttled");
            Err(ApiError::Throttled(wait))
        }
        Err(e @ SignInError::Random) => {
            tracing::error!(error = %Chain(&e), "explorer sign-in failed");
            Err(ApiError::Unavailable)
        }
    }
}

fn sign_out<B>(state: &ApiState, req: &Request<B>) -> Result<Resp, ApiError> {
    if req.method() != Method::POST {
        return Err(ApiError::PostOnly);
    }
    let https = same_origin(req)?;
    if let Some(id) = session::cookie_value(req.headers()) {
        state.explorer.sessions.end(id);
    }
    Ok(with_cookie(format!(
        "{}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{}",
        session::COOKIE,
        if https { "; Secure" } else { "" }
    )))
}

fn with_cookie(cookie: String) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        h.insert(header::SET_COOKIE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_stay_small_and_never_build_markup_from_strings() {
        assert!(asset_bytes() < 250 * 1024, "{} bytes", asset_bytes());
        for a in ASSETS {
            for banned in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
            ] {
                assert!(!a.body.contains(banned), "{} uses {banned}", a.name);
            }
        }
        assert!(
            !SHELL.contains("<script>") && !SHELL.contains("style="),
            "inline code in the shell"
        );
    }

    #[test]
    fn only_views_get_the_shell() {
        assert_eq!(static_file("/ui/").status(), StatusCode::OK);
        assert_eq!(static_file("/ui/traces/abc").status(), StatusCode::OK);
        assert_eq!(static_file("/ui/nope").status(), StatusCode::NOT_FOUND);
        assert_eq!(
            static_file("/ui/assets/0/app.js").status(),
            StatusCode::NOT_FOUND
        );
        let current = format!("/ui/assets/{}/views/trace.js", version());
        assert_eq!(static_file(&current).status(), StatusCode::OK);
    }

    #[test]
    fn sign_in_must_come_from_this_origin() {
        let req = |headers: &[(&str, &str)]| {
            let mut r = Request::post("/ui/signin").header("host", "127.0.0.1:8079");
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.body(()).expect("request")
        };
        assert_eq!(
            same_origin(&req(&[("origin", "http://127.0.0.1:8079")])).ok(),
            Some(false)
        );
        assert_eq!(
            same_origin(&req(&[("origin", "https://127.0.0.1:8079")])).ok(),
            Some(true)
        );
        assert_eq!(
            same_origin(&req(&[("sec-fetch-site", "same-origin")])).ok(),
            Some(false)
        );
        for bad in [
            vec![],
            vec![("origin", "http://evil.example")],
            vec![("origin", "null")],
            vec![("origin", "http://127.0.0.1:8080")],
            vec![("sec-fetch-site", "cross-site")],
            vec![
                ("sec-fetch-site", "same-site"),
                ("origin", "http://127.0.0.1:8079"),
            ],
        ] {
            assert!(same_origin(&req(&bad)).is_err(), "{bad:?}");
        }
    }
}
