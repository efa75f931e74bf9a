//! Memory Explorer sign-in: sessions kept in this process's memory, and the throttle on failed
//! sign-ins. A browser presents the admin token once (`POST /ui/signin`, see `super::ui`) and
//! gets a random session id in an `HttpOnly` cookie instead of holding the token in script.
//!
//! Sessions are looked up by the SHA-256 of their id (the id itself is never stored, so the map
//! cannot be read back into working cookies), expire `admin.session_ttl` after sign-in, and carry
//! the SHA-256 of the token they were made with: a session made with another token than the one
//! configured now is refused (constant-time comparison). Failed sign-ins are limited per client
//! address and across all clients, so the token cannot be guessed at speed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use ring::rand::SecureRandom;
use subtle::ConstantTimeEq;

use crate::config::Token;

/// Name of the session cookie.
pub const COOKIE: &str = "trace_proxy_session";
/// Most sessions held at once; the oldest give way beyond it.
const MAX_SESSIONS: usize = 1024;
/// Random bytes in a session id (256 bits).
const ID_BYTES: usize = 32;
/// Failed sign-ins one client address may make in a burst, and how fast that allowance returns.
const PER_PEER: Bucket = Bucket::new(5, Duration::from_secs(12));
/// Failed sign-ins all clients together may make in a burst, and how fast that returns.
const GLOBAL: Bucket = Bucket::new(20, Duration::from_secs(3));
/// Client addresses the throttle remembers; beyond it, new addresses share the global limit only
/// once the table has been pruned of those whose allowance is whole again.
const MAX_PEERS: usize = 4096;

type Digest = [u8; 32];

fn sha256(data: &[u8]) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Why a sign-in was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignInError {
    #[error("wrong token")]
    WrongToken,
    #[error("too many failed sign-ins; try again in {} s", .0.as_secs().max(1))]
    Throttled(Duration),
    #[error("the system random number generator failed")]
    Random,
}

/// A new session: the cookie value and how long it lasts.
#[derive(Debug)]
pub struct NewSession {
    pub id: String,
    pub ttl: Duration,
}

struct Session {
    expires: Instant,
    token: Digest,
}

/// A token bucket's shape: `burst` tokens, one more every `every`.
#[derive(Clone, Copy)]
struct Bucket {
    burst: u32,
    every: Duration,
}

impl Bucket {
    const fn new(burst: u32, every: Duration) -> Bucket {
        Bucket { burst, every }
    }
}

/// One bucket's state: full at `full_at` (or earlier).
#[derive(Clone, Copy)]
struct Level {
    full_at: Instant,
}

impl Level {
    /// Failures it can still take at `now`.
    fn room(&self, shape: Bucket, now: Instant) -> u32 {
        let owed = self.full_at.saturating_duration_since(now);
        let used = owed.as_nanos().div_ceil(shape.every.as_nanos().max(1));
        shape
            .burst
            .saturating_sub(u32::try_from(used).unwrap_or(u32::MAX))
    }

    /// How long until it can take one more failure.
    fn wait(&self, shape: Bucket, now: Instant) -> Duration {
        let owed = self.full_at.saturating_duration_since(now);
        let over = shape.every.saturating_mul(shape.burst.saturating_sub(1));
        owed.saturating_sub(over)
    }

    fn take(&mut self, shape: Bucket, now: Instant) {
        self.full_at = self.full_at.max(now) + shape.every;
    }
}

struct Inner {
    sessions: HashMap<Digest, Session>,
    peers: HashMap<IpAddr, Level>,
    global: Level,
}

/// The sessions and the sign-in throttle of one admin listener.
pub struct Sessions {
    ttl: Duration,
    inner: Mutex<Inner>,
}

/// The throttle's key for a client: its IPv4 address, or the /64 of an IPv6 one (one host
/// usually holds a whole /64).
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut seg = v6.segments();
                seg[4..].fill(0);
                IpAddr::V6(seg.into())
            }
        },
    }
}

impl Sessions {
    pub fn new(ttl: Duration) -> Sessions {
        let now = Instant::now();
        Sessions {
            ttl,
            inner: Mutex::new(Inner {
                sessions: HashMap::new(),
                peers: HashMap::new(),
                global: Level { full_at: now },
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks `presented` against `token` unless `peer` (or everyone) failed too often lately;
    /// a failure counts against both limits. Check, comparison and count happen under one lock,
    /// so concurrent guesses cannot slip past the limit.
    pub fn sign_in(
        &self,
        token: &Token,
        presented: &[u8],
        peer: IpAddr,
    ) -> Result<NewSession, SignInError> {
        self.sign_in_at(token, presented, peer, Instant::now())
    }

    fn sign_in_at(
        &self,
        token: &Token,
        presented: &[u8],
        peer: IpAddr,
        now: Instant,
    ) -> Result<NewSession, SignInError> {
        let key = peer_key(peer);
        let mut inner = self.lock();
        let mine = inner.peers.get(&key).copied();
        let wait = [(Some(inner.global), GLOBAL), (mine, PER_PEER)]
            .into_iter()
            .filter_map(|(level, shape)| {
                let level = level?;
                (level.room(shape, now) == 0).then(|| level.wait(shape, now))
            })
            .max();
        if let Some(wait) = wait {
            return Err(SignInError::Throttled(wait));
        }
        if !token.matches(presented) {
            inner.global.take(GLOBAL, now);
            if !inner.peers.contains_key(&key) && inner.peers.len() >= MAX_PEERS {
                inner.peers.retain(|_, l| l.full_at > now);
            }
            if inner.peers.len() < MAX_PEERS || inner.peers.contains_key(&key) {
                inner
                    .peers
                    .entry(key)
                    .or_insert(Level { full_at: now })
                    .take(PER_PEER, now);
            }
            return Err(SignInError::WrongToken);
        }
        let mut raw = [0u8; ID_BYTES];
        ring::rand::SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| SignInError::Random)?;
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        if inner.sessions.len() >= MAX_SESSIONS {
            inner.sessions.retain(|_, s| s.expires > now);
        }
        if inner.sessions.len() >= MAX_SESSIONS {
            let oldest = inner
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                inner.sessions.remove(&k);
            }
        }
        inner.sessions.insert(
            sha256(id.as_bytes()),
            Session {
                expires: now + self.ttl,
                token: token.digest(),
            },
        );
        Ok(NewSession { id, ttl: self.ttl })
    }

    /// True when `id` is a live session made with `token`.
    pub fn valid(&self, id: &str, token: &Token) -> bool {
        self.valid_at(id, token, Instant::now())
    }

    fn valid_at(&self, id: &str, token: &Token, now: Instant) -> bool {
        if id.len() > 2 * ID_BYTES {
            return false;
        }
        let key = sha256(id.as_bytes());
        let mut inner = self.lock();
        let Some(s) = inner.sessions.get(&key) else {
            return false;
        };
        if s.expires <= now {
            inner.sessions.remove(&key);
            return false;
        }
        bool::from(s.token.ct_eq(&token.digest()))
    }

    /// Ends session `id`; true when there was one.
    pub fn end(&self, id: &str) -> bool {
        self.lock()
            .sessions
            .remove(&sha256(id.as_bytes()))
            .is_some()
    }
}

/// The session id in the request's `Cookie` header(s), if any (RFC 6265 §5.4: `name=value`
/// pairs separated by `; `, possibly in several headers under HTTP/2).
pub fn cookie_value(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(s: &str) -> Token {
        Token::new(s.to_owned())
    }

    const A: &str = "token-a-token-a-token-a";
    const B: &str = "token-b-token-b-token-b";

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_session_works_until_it_expires_or_ends_and_only_with_its_token() {
        let s = Sessions::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let new = s
            .sign_in_at(&token(A), A.as_bytes(), ip("127.0.0.1"), t0)
            .expect("signed in");
        assert_eq!(new.id.len(), 43);
        assert!(s.valid_at(&new.id, &token(A), t0));
        assert!(!s.valid_at(&new.id, &token(B), t0), "token changed");
        assert!(!s.valid_at("forged", &token(A), t0));
        assert!(s.valid_at(&new.id, &token(A), t0 + Duration::from_secs(59)));
        assert!(!s.valid_at(&new.id, &token(A), t0 + Duration::from_secs(60)));
        let other = s
            .sign_in_at(&token(A), A.as_bytes(), ip("127.0.0.1"), t0)
            .expect("signed in");
        assert_ne!(other.id, new.id);
        assert!(s.end(&other.id));
        assert!(!s.valid_at(&other.id, &token(A), t0));
        assert!(!s.end(&other.id));
    }

    #[test]
    fn failures_are_limited_per_peer_then_globally_and_recover() {
        let s = Sessions::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let attempt = |peer: &str, presented: &str, at: Instant| {
            s.sign_in_at(&token(A), presented.as_bytes(), ip(peer), at)
                .map(|_| ())
        };
        for _ in 0..PER_PEER.burst {
            assert_eq!(
                attempt("10.0.0.1", "wrong", t0),
                Err(SignInError::WrongToken)
            );
        }
        // Limited now, even with the right token: guessing cannot continue at speed.
        let Err(SignInError::Throttled(wait)) = attempt("10.0.0.1", A, t0) else {
            panic!("not throttled");
        };
        assert!(wait > Duration::ZERO && wait <= PER_PEER.every, "{wait:?}");
        // Another client is not limited by the first one's failures...
        assert_eq!(attempt("10.0.0.2", A, t0), Ok(()));
        // ...and the first one gets one more try once a token has returned.
        assert_eq!(attempt("10.0.0.1", A, t0 + PER_PEER.every), Ok(()));
        // IPv6 clients are keyed by their /64.
        for i in 0..PER_PEER.burst {
            let peer = format!("2001:db8::{i}");
            assert_eq!(attempt(&peer, "wrong", t0), Err(SignInError::WrongToken));
        }
        assert!(matches!(
            attempt("2001:db8::ffff", A, t0),
            Err(SignInError::Throttled(_))
        ));
        // Many clients together hit the global limit.
        let mut refused = false;
        for i in 0..GLOBAL.burst {
            let peer = format!("10.1.{}.{}", i / 200, i % 200);
            refused |= matches!(attempt(&peer, "wrong", t0), Err(SignInError::Throttled(_)));
        }
        assert!(refused, "global limit never reached");
        assert!(matches!(
            attempt("10.9.9.9", A, t0),
            Err(SignInError::Throttled(_))
        ));
        let later = t0 + GLOBAL.every * GLOBAL.burst + PER_PEER.every * PER_PEER.burst;
        assert_eq!(attempt("10.9.9.9", A, later), Ok(()));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = http::HeaderMap::new();
        h.append(http::header::COOKIE, "a=1; b=2".parse().expect("v"));
        assert_eq!(cookie_value(&h), None);
        h.append(
            http::header::COOKIE,
            format!("x=y; {COOKIE}=abc_-; z=1").parse().expect("v"),
        );
        assert_eq!(cookie_value(&h), Some("abc_-"));
    }
}
