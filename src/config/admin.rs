//! `[admin]`: the admin listener (`crate::api`: health, metrics, the read-only query API, the
//! Memory Explorer), its bearer token, which never appears in `Debug` or printed output, how
//! long an explorer sign-in lasts, and where the explorer links n8n executions.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration::Dur;
use super::problems::Problems;

/// Environment variable that overrides `admin.token`.
pub const ENV_ADMIN_TOKEN: &str = "TRACE_PROXY_ADMIN_TOKEN";

/// Shortest token accepted: a guessable bearer token is no protection.
const MIN_TOKEN_CHARS: usize = 16;
/// Response byte budgets accepted (64 KiB ..= 64 MiB).
const BUDGET_RANGE: std::ops::RangeInclusive<u64> = 65_536..=67_108_864;
/// Explorer sign-in lifetimes accepted.
const SESSION_TTL: std::ops::RangeInclusive<Dur> = Dur::secs(60)..=Dur::days(30);
/// What `n8n_execution_url` must contain.
pub(super) const EXECUTION_PLACEHOLDER: &str = "{executionId}";

/// `[admin]` as written.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RawAdmin {
    pub listen: String,
    pub token: String,
    pub pool_size: usize,
    pub statement_timeout: Dur,
    pub max_response_bytes: u64,
    pub mcp_max_response_bytes: u64,
    pub session_ttl: Dur,
    pub n8n_execution_url: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8079".into(),
            token: String::new(),
            pool_size: 2,
            statement_timeout: Dur::secs(2),
            max_response_bytes: 1_048_576,
            mcp_max_response_bytes: 65_536,
            session_ttl: Dur::secs(12 * 3600),
            n8n_execution_url: String::new(),
        }
    }
}

/// A bearer token: compared in constant time, printed as `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub(crate) fn new(token: String) -> Token {
        Token(token)
    }

    /// The secret itself, for sending it where it belongs (never for logs or rows).
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// True when `presented` is this token; the comparison time does not depend on where the
    /// first difference is.
    pub fn matches(&self, presented: &[u8]) -> bool {
        bool::from(subtle::ConstantTimeEq::ct_eq(self.0.as_bytes(), presented))
    }

    /// SHA-256 of the token: what a sign-in session remembers of the token it was made with.
    pub fn digest(&self) -> [u8; 32] {
        let d = ring::digest::digest(&ring::digest::SHA256, self.0.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The validated `[admin]` section.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `None`: `listen = ""`, the admin listener is off (no health, metrics or query API).
    pub listen: Option<SocketAddr>,
    /// `None`: no token configured. The query API then refuses every request (a warning is
    /// logged): without a token it would expose every stored payload to anyone who can reach
    /// it, loopback included (other local users, SSRF). Health and metrics need no token.
    pub token: Option<Token>,
    pub pool_size: usize,
    pub statement_timeout: Duration,
    pub max_response_bytes: usize,
    /// The byte budget of one MCP tool answer (`trace-proxy mcp`, `/mcp`): smaller than the
    /// API's, since the answer goes into a model's context.
    pub mcp_max_response_bytes: usize,
    /// How long a Memory Explorer sign-in lasts (absolute, from sign-in).
    pub session_ttl: Duration,
    /// Link template for an n8n execution in n8n's own UI: an `http(s)` URL containing
    /// `{executionId}` (and optionally `{workflowId}`); `None`: execution ids are not linked.
    pub n8n_execution_url: Option<String>,
}

impl AdminConfig {
    /// The address to serve the admin listener on, unless `listen = ""`.
    pub fn serve_on(&self) -> Option<SocketAddr> {
        self.listen
    }
}

/// Checks `[admin]`, pushing every problem.
pub(super) fn check(r: &RawAdmin, p: &mut Problems) -> Option<AdminConfig> {
    // `Some(None)`: the listener is off; `None`: a problem was reported.
    let listen = match r.listen.is_empty() {
        true => Some(None),
        false => {
            let off = " (\"\" turns the admin API off)";
            super::server::socket_addr("admin.listen", &r.listen, off, p).map(Some)
        }
    };
    let token = (!r.token.is_empty()).then(|| Token::new(r.token.clone()));
    if !r.token.is_empty()
        && (r.token.chars().count() < MIN_TOKEN_CHARS
            || !r.token.bytes().all(|b| b.is_ascii_graphic()))
    {
        p.at(
            "admin.token",
            format!("must be at least {MIN_TOKEN_CHARS} visible ASCII characters (no spaces)"),
        );
    }
    if !(1..=64).contains(&r.pool_size) {
        p.at(
            "admin.pool_size",
            format!("({}) must be between 1 and 64", r.pool_size),
        );
    }
    p.positive("admin.statement_timeout", r.statement_timeout.millis());
    for (key, v) in [
        ("admin.max_response_bytes", r.max_response_bytes),
        ("admin.mcp_max_response_bytes", r.mcp_max_response_bytes),
    ] {
        if !BUDGET_RANGE.contains(&v) {
            p.at(
                key,
                format!(
                    "({v}) must be between {} and {}",
                    BUDGET_RANGE.start(),
                    BUDGET_RANGE.end()
                ),
            );
        }
    }
    if !SESSION_TTL.contains(&r.session_ttl) {
        p.at(
            "admin.session_ttl",
            format!(
                "({}) must be between {} and {}",
                r.session_ttl,
                SESSION_TTL.start(),
                SESSION_TTL.end()
            ),
        );
    }
    let n8n_execution_url = execution_url(&r.n8n_execution_url, p);
    Some(AdminConfig {
        listen: listen?,
        token,
        pool_size: r.pool_size,
        statement_timeout: r.statement_timeout.0,
        max_response_bytes: usize::try_from(r.max_response_bytes).unwrap_or(usize::MAX),
        mcp_max_response_bytes: usize::try_from(r.mcp_max_response_bytes).unwrap_or(usize::MAX),
        session_ttl: r.session_ttl.0,
        n8n_execution_url,
    })
}

/// `""` (no links), or an absolute `http(s)` URL template holding `{executionId}`: the explorer
/// puts it into a link's `href`, so nothing but a web URL may come out of it.
fn execution_url(template: &str, p: &mut Problems) -> Option<String> {
    if template.is_empty() {
        return None;
    }
    let key = "admin.n8n_execution_url";
    if !template.contains(EXECUTION_PLACEHOLDER) {
        p.at(key, format!("must contain {EXECUTION_PLACEHOLDER}, e.g. \"https://n8n.example.com/workflow/{{workflowId}}/executions/{{executionId}}\""));
        return None;
    }
    let probe = template
        .replace(EXECUTION_PLACEHOLDER, "1")
        .replace("{workflowId}", "w");
    match url::Url::parse(&probe) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            Some(template.to_owned())
        }
        _ => {
            p.at(key, "must be an absolute http:// or https:// URL");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_redacted_and_compared_whole() {
        let t = Token("s3cret-s3cret-s3cret".into());
        assert_eq!(format!("{t:?}"), "<redacted>");
        assert!(t.matches(b"s3cret-s3cret-s3cret"));
        assert!(!t.matches(b"s3cret-s3cret-s3cre"));
        assert!(!t.matches(b"s3cret-s3cret-s3creT"));
    }

    #[test]
    fn environment_token_wins_and_is_never_printed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("proxy.toml");
        std::fs::write(
            &path,
            "[admin]\ntoken = \"file-token-file-token\"\n[[routes]]\nname = \"n8n\"\nupstream = \"http://127.0.0.1:5678\"\nsource_service = \"a\"\ndestination_service = \"b\"\n",
        )
        .expect("write");
        let env = |k: &str| (k == ENV_ADMIN_TOKEN).then(|| "env-token-env-token-42".to_owned());
        let c = crate::config::Config::load_with(&path, None, &env).expect("valid");
        assert!(c
            .admin
            .token
            .as_ref()
            .is_some_and(|t| t.matches(b"env-token-env-token-42")));
        assert_eq!(
            c.admin.serve_on().map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:8079")
        );
        let printed = c.to_redacted_toml();
        assert!(!printed.contains("token-"), "{printed}");
        assert!(printed.contains("REDACTED"), "{printed}");
        assert!(!format!("{c:?}").contains("token-"));
    }

    #[test]
    fn no_token_still_serves_health_and_empty_listen_does_not() {
        let mut p = Problems::default();
        let c = check(&RawAdmin::default(), &mut p);
        let c = std::mem::take(&mut p).finish(c).expect("valid");
        assert!(c.token.is_none());
        assert_eq!(
            c.serve_on().map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:8079")
        );
        let off = RawAdmin {
            listen: String::new(),
            ..RawAdmin::default()
        };
        assert_eq!(check(&off, &mut p).and_then(|c| c.serve_on()), None);
        let raw = RawAdmin {
            token: "short".into(),
            max_response_bytes: 10,
            ..RawAdmin::default()
        };
        let c = check(&raw, &mut p);
        assert_eq!(p.finish(c).unwrap_err().len(), 2);
    }

    #[test]
    fn execution_links_must_be_web_urls_with_the_placeholder() {
        let at = |url: &str| {
            let raw = RawAdmin {
                n8n_execution_url: url.into(),
                ..RawAdmin::default()
            };
            let mut p = Problems::default();
            let c = check(&raw, &mut p);
            p.finish(c).map(|c| c.n8n_execution_url)
        };
        assert_eq!(at(""), Ok(None));
        let ok = "https://n8n.example.com/workflow/{workflowId}/executions/{executionId}";
        assert_eq!(at(ok), Ok(Some(ok.to_owned())));
        for bad in [
            "https://n8n.example.com/executions",
            "javascript:alert({executionId})",
            "/executions/{executionId}",
            "data:text/html,{executionId}",
        ] {
            assert!(at(bad).is_err(), "{bad}");
        }
        let short = RawAdmin {
            session_ttl: Dur::secs(5),
            ..RawAdmin::default()
        };
        let mut p = Problems::default();
        let c = check(&short, &mut p);
        assert!(p.finish(c).is_err());
    }
}
