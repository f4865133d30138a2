//! HTTP basic authentication against bcrypt hashes: unknown users cost as much as wrong
//! passwords, and a successful check is remembered for a few minutes.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::http::HeaderValue;
use base64::Engine as _;
use tokio::sync::Semaphore;

/// How long a successful check is remembered. A scrape every 15 s then pays bcrypt (50-100 ms
/// at cost 10) once every 5 minutes instead of every time. Only the exact user, password and
/// hash that passed are remembered, and a reload starts with an empty cache.
pub const CACHE_TTL: Duration = Duration::from_secs(300);
const CACHE_MAX: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("basic_auth_users: user {user:?}: not a bcrypt hash ({reason}); make one with `htpasswd -nBC 10 {user}`")]
    BadHash { user: String, reason: String },
    #[error("basic_auth_users: user {0:?}: a user name cannot contain ':' (basic auth splits at the first one)")]
    Colon(String),
}

/// The users and their hashes, and what makes checking them cheap and uniform.
pub struct BasicAuth {
    users: HashMap<String, String>,
    /// Checked when the user is unknown, so that answering takes as long as for a known user
    /// with a wrong password: timing tells nothing about which users exist.
    dummy: String,
    /// Digests of (user, password, hash) that passed, and when they pass no more.
    cache: Mutex<HashMap<[u8; 32], Instant>>,
    /// bcrypt is CPU work on the blocking pool: a flood of wrong passwords queues here instead
    /// of starting a thread each. Remembered checks do not wait.
    checks: Semaphore,
}

impl BasicAuth {
    /// Checks every hash (cost 4-31, `$2a$`, `$2b$`, `$2x$` or `$2y$`) and makes the dummy hash
    /// at the highest cost among them.
    pub fn new(users: &BTreeMap<String, String>) -> Result<BasicAuth, AuthError> {
        let mut cost = bcrypt::DEFAULT_COST;
        let mut costs = Vec::new();
        for (user, hash) in users {
            if user.contains(':') {
                return Err(AuthError::Colon(user.clone()));
            }
            let parts: bcrypt::HashParts =
                hash.parse().map_err(|e: bcrypt::BcryptError| AuthError::BadHash { user: user.clone(), reason: e.to_string() })?;
            costs.push(parts.get_cost());
        }
        if let Some(max) = costs.into_iter().max() {
            cost = max;
        }
        let dummy = bcrypt::hash_with_salt(b"cgwatch: no such user", cost, [0x5a; 16])
            .map(|h| h.to_string())
            .map_err(|e| AuthError::BadHash { user: String::new(), reason: e.to_string() })?;
        let parallel = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
        Ok(BasicAuth {
            users: users.iter().map(|(u, h)| (u.clone(), h.clone())).collect(),
            dummy,
            cache: Mutex::new(HashMap::new()),
            checks: Semaphore::new(parallel),
        })
    }

    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// Whether an `Authorization` header names a user and its password.
    pub async fn allows(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some((user, password)) = authorization.and_then(parse_basic) else {
            return false;
        };
        let hash = self.users.get(&user);
        let key = hash.map(|h| cache_key(&user, &password, h));
        if let Some(k) = &key
            && self.remembered(k)
        {
            return true;
        }
        let Ok(_permit) = self.checks.acquire().await else {
            return false;
        };
        let target = hash.unwrap_or(&self.dummy).clone();
        let verified = tokio::task::spawn_blocking(move || bcrypt::verify(&password, &target).unwrap_or(false))
            .await
            .unwrap_or(false);
        match key {
            Some(k) if verified => {
                self.remember(k);
                true
            }
            _ => false,
        }
    }

    fn remembered(&self, key: &[u8; 32]) -> bool {
        let cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.get(key).is_some_and(|until| *until > Instant::now())
    }

    fn remember(&self, key: [u8; 32]) {
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, until| *until > now);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, now + CACHE_TTL);
    }
}

/// The user and password of a `Basic` authorization; `None` for anything else.
fn parse_basic(value: &HeaderValue) -> Option<(String, Vec<u8>)> {
    let (scheme, credentials) = value.to_str().ok()?.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(credentials.trim()).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

/// SHA-256 of the user, the password and the hash it passed: the cache holds no password, and
/// a changed hash (a new password, the same user) never matches an old entry.
fn cache_key(user: &str, password: &[u8], hash: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [user.as_bytes(), password, hash.as_bytes()] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part);
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> HeaderValue {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::from_str(&format!("Basic {b}")).unwrap()
    }

    fn auth() -> BasicAuth {
        let hash = bcrypt::hash("s3cret:x", 4).unwrap();
        BasicAuth::new(&BTreeMap::from([("prom".to_string(), hash)])).unwrap()
    }

    #[tokio::test]
    async fn right_password_only() {
        let a = auth();
        assert!(a.allows(Some(&header("prom", "s3cret:x"))).await);
        // Now remembered; a wrong password is still refused.
        assert!(a.allows(Some(&header("prom", "s3cret:x"))).await);
        assert!(!a.allows(Some(&header("prom", "s3cret"))).await);
        assert!(!a.allows(Some(&header("prom", ""))).await);
        assert!(!a.allows(Some(&header("other", "s3cret:x"))).await);
        assert!(!a.allows(None).await);
        assert!(!a.allows(Some(&HeaderValue::from_static("Basic !!!"))).await);
        assert!(!a.allows(Some(&HeaderValue::from_static("Bearer abc"))).await);
        assert!(a.allows(Some(&HeaderValue::from_str(&header("prom", "s3cret:x").to_str().unwrap().replace("Basic", "basic")).unwrap())).await);
    }

    #[test]
    fn bad_hashes_and_names_are_refused() {
        let e = BasicAuth::new(&BTreeMap::from([("prom".to_string(), "plaintext".to_string())])).err().unwrap();
        assert!(e.to_string().contains("user \"prom\": not a bcrypt hash"), "{e}");
        let e = BasicAuth::new(&BTreeMap::from([("a:b".to_string(), bcrypt::hash("x", 4).unwrap())])).err().unwrap();
        assert!(e.to_string().contains("cannot contain ':'"), "{e}");
    }

    #[test]
    fn the_dummy_costs_as_much_as_the_users() {
        let a = BasicAuth::new(&BTreeMap::from([("p".to_string(), bcrypt::hash("x", 5).unwrap())])).unwrap();
        assert!(a.dummy.starts_with("$2") && a.dummy.contains("$05$"), "{}", a.dummy);
    }
}
