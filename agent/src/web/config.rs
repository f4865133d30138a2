//! The web config file, in the format Prometheus exporters share (exporter-toolkit's
//! `web-config.yml`): read, checked and turned into what the server applies (TLS, basic auth,
//! response headers).

use std::{
    collections::BTreeMap,
    hash::{DefaultHasher, Hash as _, Hasher as _},
    io,
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use tokio_rustls::TlsAcceptor;

use super::{
    auth::{AuthError, BasicAuth},
    tls::{self, ClientAuth, TlsError, TlsMaterial, TlsVersion},
};

#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("cannot read web config file {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("web config file {}: cannot read {key} {}", config.display(), path.display())]
    ReadFile {
        config: PathBuf,
        key: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Bad YAML, an unknown key (serde names it and its line), a value of the wrong type.
    #[error("web config file {}: {}", path.display(), one_line(&error.to_string()))]
    Syntax { path: PathBuf, error: serde_yaml_ng::Error },
    #[error("web config file {}: {key}: {reason}", path.display())]
    Invalid { path: PathBuf, key: &'static str, reason: String },
    #[error("web config file {}: {error}", path.display())]
    Tls { path: PathBuf, error: TlsError },
    #[error("web config file {}: {error}", path.display())]
    Auth { path: PathBuf, error: AuthError },
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The file's top level. Every key of exporter-toolkit's format is known; one that cgwatch
/// cannot honour is an error that says so, never silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsSection>,
    http_server_config: Option<HttpSection>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    /// The certificate chain itself, instead of `cert_file`.
    cert: Option<String>,
    /// The key itself, instead of `key_file`.
    key: Option<String>,
    client_ca_file: Option<PathBuf>,
    client_ca: Option<String>,
    client_auth_type: Option<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
    curve_preferences: Option<Vec<String>>,
    /// Accepted for compatibility; rustls picks from its own preference order.
    #[allow(dead_code)]
    prefer_server_cipher_suites: Option<bool>,
    client_allowed_sans: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSection {
    /// Accepted for compatibility: cgwatch serves HTTP/1.1 only, which every scraper speaks.
    #[allow(dead_code)]
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// Response headers the file may set, and their allowed values where the list is closed
/// (exporter-toolkit's list).
const HEADERS: [(&str, &[&str]); 5] = [
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

/// What the server applies: TLS for new connections, basic auth and headers for every request.
#[derive(Default)]
pub struct WebSecurity {
    pub tls: Option<TlsAcceptor>,
    /// The client certificate policy, for the start-up line.
    pub client_auth: Option<ClientAuth>,
    pub auth: Option<Arc<BasicAuth>>,
    pub headers: HeaderMap,
}

impl std::fmt::Debug for WebSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl WebSecurity {
    /// One phrase for the log: "TLS (client certificates: ...), basic auth (2 users)".
    pub fn describe(&self) -> String {
        let tls = match (&self.tls, self.client_auth) {
            (None, _) => "plain HTTP".to_string(),
            (Some(_), Some(ClientAuth::NoClientCert) | None) => "TLS".to_string(),
            (Some(_), Some(ca)) => format!("TLS with client certificates ({})", ca.name()),
        };
        let auth = match &self.auth {
            Some(a) if a.users() == 1 => "basic auth (1 user)".to_string(),
            Some(a) => format!("basic auth ({} users)", a.users()),
            None => "no authentication".to_string(),
        };
        format!("{tls}, {auth}")
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

/// The files one load read, in order, and a fingerprint of their contents (or of the error
/// reading each): the reloader re-reads them to see whether anything changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sources {
    pub files: Vec<PathBuf>,
    pub fingerprint: u64,
}

impl Sources {
    /// The fingerprint the same files have now.
    pub fn fingerprint_now(&self) -> u64 {
        let mut reader = Reader::default();
        for f in &self.files {
            let _ = reader.read(f);
        }
        reader.finish().fingerprint
    }
}

#[derive(Default)]
struct Reader {
    files: Vec<PathBuf>,
    hash: DefaultHasher,
}

impl Reader {
    fn read(&mut self, path: &Path) -> io::Result<Vec<u8>> {
        self.files.push(path.to_path_buf());
        path.hash(&mut self.hash);
        let read = std::fs::read(path);
        match &read {
            Ok(bytes) => {
                0u8.hash(&mut self.hash);
                bytes.hash(&mut self.hash);
            }
            Err(e) => {
                1u8.hash(&mut self.hash);
                e.kind().hash(&mut self.hash);
            }
        }
        read
    }

    fn finish(self) -> Sources {
        Sources { fingerprint: self.hash.finish(), files: self.files }
    }
}

/// One load of the web config: the result, and the files it read (also when it failed, so that
/// fixing any of them is noticed).
pub struct Attempt {
    pub result: Result<WebSecurity, WebConfigError>,
    pub sources: Sources,
}

/// Reads `path` and the files it names and builds what the server applies. Slow when basic
/// auth is configured (one bcrypt hash for unknown users): call it off the async workers.
pub fn load(path: &Path) -> Attempt {
    let mut reader = Reader::default();
    let result = build(path, &mut reader);
    Attempt { result, sources: reader.finish() }
}

fn build(path: &Path, reader: &mut Reader) -> Result<WebSecurity, WebConfigError> {
    let text = reader.read(path).map_err(|source| WebConfigError::Open { path: path.to_path_buf(), source })?;
    // An empty file (or only comments) is an empty config: plain HTTP, no authentication.
    let file: Option<File> =
        serde_yaml_ng::from_slice(&text).map_err(|error| WebConfigError::Syntax { path: path.to_path_buf(), error })?;
    let file = file.unwrap_or_default();
    let dir = path.parent().unwrap_or(Path::new("."));
    let invalid = |key, reason: String| WebConfigError::Invalid { path: path.to_path_buf(), key, reason };

    let mut security = WebSecurity::default();
    if let Some(section) = file.tls_server_config
        && let Some(material) = tls_material(section, path, dir, reader)?
    {
        let client_auth = material.client_auth;
        let config = tls::server_config(&material).map_err(|error| WebConfigError::Tls { path: path.to_path_buf(), error })?;
        security.tls = Some(TlsAcceptor::from(config));
        security.client_auth = Some(client_auth);
    }
    if let Some(http) = file.http_server_config {
        for (name, value) in http.headers.unwrap_or_default() {
            let Some((canonical, allowed)) = HEADERS.iter().find(|(h, _)| h.eq_ignore_ascii_case(&name)) else {
                let known = HEADERS.iter().map(|(h, _)| *h).collect::<Vec<_>>().join(", ");
                return Err(invalid("http_server_config.headers", format!("{name:?} cannot be set (allowed: {known})")));
            };
            if !allowed.is_empty() && !allowed.iter().any(|a| a.eq_ignore_ascii_case(&value)) {
                return Err(invalid(
                    "http_server_config.headers",
                    format!("{canonical}: {value:?} is not one of {}", allowed.join(", ")),
                ));
            }
            let value = HeaderValue::from_str(&value)
                .map_err(|_| invalid("http_server_config.headers", format!("{canonical}: {value:?} is not a valid header value")))?;
            let name = HeaderName::from_bytes(canonical.as_bytes())
                .map_err(|_| invalid("http_server_config.headers", format!("{canonical}: not a header name")))?;
            security.headers.insert(name, value);
        }
    }
    if let Some(users) = file.basic_auth_users
        && !users.is_empty()
    {
        let auth = BasicAuth::new(&users).map_err(|error| WebConfigError::Auth { path: path.to_path_buf(), error })?;
        security.auth = Some(Arc::new(auth));
    }
    Ok(security)
}

/// A path from the file, relative to the file's directory (as exporter-toolkit resolves them).
fn resolve(dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() { p.to_path_buf() } else { dir.join(p) }
}

fn non_empty<T: AsRef<std::ffi::OsStr>>(v: Option<T>) -> Option<T> {
    v.filter(|s| !s.as_ref().is_empty())
}

/// The PEM inputs and settings of `tls_server_config`; `None` when it names no certificate and
/// no key (exporter-toolkit serves plain HTTP then).
fn tls_material(t: TlsSection, config: &Path, dir: &Path, reader: &mut Reader) -> Result<Option<TlsMaterial>, WebConfigError> {
    let invalid = |key, reason: &str| WebConfigError::Invalid { path: config.to_path_buf(), key, reason: reason.to_string() };
    let unsupported = |key, list: &Option<Vec<String>>, why: &str| match list {
        Some(l) if !l.is_empty() => Err(invalid(key, why)),
        _ => Ok(()),
    };
    unsupported(
        "tls_server_config.cipher_suites",
        &t.cipher_suites,
        "not supported: cgwatch (rustls) offers its own fixed suites, all with forward secrecy and AEAD (TLS 1.3: AES-GCM, ChaCha20-Poly1305; TLS 1.2: ECDHE with AES-GCM or ChaCha20-Poly1305); remove the key",
    )?;
    unsupported(
        "tls_server_config.curve_preferences",
        &t.curve_preferences,
        "not supported: cgwatch (rustls) offers X25519, P-256 and P-384; remove the key",
    )?;
    unsupported(
        "tls_server_config.client_allowed_sans",
        &t.client_allowed_sans,
        "not supported: cgwatch accepts every client certificate its client CA signed",
    )?;

    let client_auth = match non_empty(t.client_auth_type) {
        None => None,
        Some(name) => Some(ClientAuth::parse(&name).ok_or_else(|| {
            invalid("tls_server_config.client_auth_type", &format!("unknown value {name:?}, expected one of {}", ClientAuth::NAMES))
        })?),
    };
    let version = |key, v: Option<String>, default| match non_empty(v) {
        None => Ok(default),
        Some(name) => TlsVersion::parse(&name).map_err(|reason| invalid(key, &reason)),
    };
    let min = version("tls_server_config.min_version", t.min_version, TlsVersion::Tls12)?;
    let max = version("tls_server_config.max_version", t.max_version, TlsVersion::Tls13)?;
    if min > max {
        return Err(invalid("tls_server_config.max_version", "is below min_version"));
    }

    /// Where a PEM input comes from.
    enum Source {
        File(PathBuf),
        Inline(String),
    }
    let source = |key, file: Option<PathBuf>, inline: Option<String>| match (non_empty(file), non_empty(inline)) {
        (Some(_), Some(_)) => Err(invalid(key, "both the file and the inline value are set; keep one")),
        (Some(f), None) => Ok(Some(Source::File(resolve(dir, &f)))),
        (None, Some(s)) => Ok(Some(Source::Inline(s))),
        (None, None) => Ok(None),
    };
    let cert = source("tls_server_config.cert_file", t.cert_file, t.cert)?;
    let key = source("tls_server_config.key_file", t.key_file, t.key)?;
    let client_ca = source("tls_server_config.client_ca_file", t.client_ca_file, t.client_ca)?;

    let (cert, key) = match (cert, key) {
        (None, None) => {
            if client_ca.is_some() || client_auth.is_some() {
                return Err(invalid("tls_server_config", "client certificates are configured but cert_file and key_file are missing"));
            }
            return Ok(None);
        }
        (Some(_), None) => return Err(invalid("tls_server_config.key_file", "missing (cert_file is set)")),
        (None, Some(_)) => return Err(invalid("tls_server_config.cert_file", "missing (key_file is set)")),
        (Some(c), Some(k)) => (c, k),
    };
    let client_auth = match (client_auth, &client_ca) {
        // exporter-toolkit refuses a client CA without a policy rather than guess one.
        (None | Some(ClientAuth::NoClientCert), Some(_)) => {
            return Err(invalid(
                "tls_server_config.client_auth_type",
                "client_ca_file is set but no client certificate is asked for: set client_auth_type (e.g. RequireAndVerifyClientCert)",
            ));
        }
        (Some(ca), None) if ca.verifies() => {
            return Err(invalid("tls_server_config.client_ca_file", &format!("missing: client_auth_type {} verifies against it", ca.name())));
        }
        (ca, _) => ca.unwrap_or(ClientAuth::NoClientCert),
    };

    let mut read = |key: &'static str, source: Source| match source {
        Source::Inline(s) => Ok(s.into_bytes()),
        Source::File(p) => {
            reader.read(&p).map_err(|source| WebConfigError::ReadFile { config: config.to_path_buf(), key, path: p, source })
        }
    };
    let cert = read("tls_server_config.cert_file", cert)?;
    let key = read("tls_server_config.key_file", key)?;
    let client_ca = client_ca.map(|ca| read("tls_server_config.client_ca_file", ca)).transpose()?;
    Ok(Some(TlsMaterial { cert_pem: cert, key_pem: key, client_ca_pem: client_ca, client_auth, min, max }))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, text).unwrap();
        p
    }

    fn err(dir: &Path, text: &str) -> String {
        let p = write(dir, "web.yml", text);
        match load(&p).result {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn empty_and_absent_sections_mean_plain_http() {
        let dir = tempfile::tempdir().unwrap();
        for text in ["", "# nothing\n", "tls_server_config:\n", "tls_server_config: {}\nbasic_auth_users: {}\n"] {
            let p = write(dir.path(), "web.yml", text);
            let s = load(&p).result.unwrap();
            assert!(s.tls.is_none() && s.auth.is_none(), "{text:?}");
            assert_eq!(s.describe(), "plain HTTP, no authentication");
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = err(dir.path(), "tls_config:\n  cert_file: x\n");
        assert!(e.contains("unknown field `tls_config`"), "{e}");
        let e = err(dir.path(), "tls_server_config:\n  cert_file: x\n  keyfile: y\n");
        assert!(e.contains("tls_server_config") && e.contains("unknown field `keyfile`"), "{e}");
        let e = err(dir.path(), "basic_auth_users: [a, b]\n");
        assert!(e.contains("basic_auth_users"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn unsupported_and_inconsistent_tls_settings() {
        let dir = tempfile::tempdir().unwrap();
        let e = err(dir.path(), "tls_server_config:\n  cert_file: c\n  key_file: k\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n");
        assert!(e.contains("cipher_suites: not supported"), "{e}");
        let e = err(dir.path(), "tls_server_config:\n  cert_file: c\n");
        assert!(e.contains("tls_server_config.key_file: missing"), "{e}");
        let e = err(dir.path(), "tls_server_config:\n  min_version: TLS10\n  cert_file: c\n  key_file: k\n");
        assert!(e.contains("min_version") && e.contains("TLS10"), "{e}");
        let e = err(dir.path(), "tls_server_config:\n  cert_file: nope.pem\n  key_file: k\n");
        assert!(e.contains("cannot read tls_server_config.cert_file") && e.contains("nope.pem"), "{e}");
        write(dir.path(), "c", "x");
        write(dir.path(), "k", "x");
        let e = err(dir.path(), "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: Sometimes\n");
        assert!(e.contains("client_auth_type: unknown value \"Sometimes\""), "{e}");
        let e = err(dir.path(), "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_ca_file: c\n");
        assert!(e.contains("set client_auth_type"), "{e}");
        let e = err(dir.path(), "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequireAndVerifyClientCert\n");
        assert!(e.contains("client_ca_file: missing"), "{e}");
        let e = err(dir.path(), "tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS13\n  max_version: TLS12\n");
        assert!(e.contains("max_version: is below min_version"), "{e}");
    }

    #[test]
    fn headers_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "web.yml",
            "http_server_config:\n  http2: true\n  headers:\n    x-frame-options: DENY\n    Strict-Transport-Security: max-age=31536000\n",
        );
        let s = load(&p).result.unwrap();
        assert_eq!(s.headers.get("x-frame-options").unwrap(), "DENY");
        assert_eq!(s.headers.len(), 2);
        let e = err(dir.path(), "http_server_config:\n  headers:\n    Set-Cookie: a=b\n");
        assert!(e.contains("\"Set-Cookie\" cannot be set"), "{e}");
        let e = err(dir.path(), "http_server_config:\n  headers:\n    X-Frame-Options: allow\n");
        assert!(e.contains("is not one of deny, sameorigin"), "{e}");
    }

    #[test]
    fn sources_follow_the_named_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "web.yml", "tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n");
        let a = load(&p);
        assert!(a.result.is_err());
        // The config, then the cert that could not be read.
        assert_eq!(a.sources.files, vec![p.clone(), dir.path().join("c.pem")]);
        assert_eq!(a.sources.fingerprint_now(), a.sources.fingerprint);
        write(dir.path(), "c.pem", "now it exists");
        assert_ne!(a.sources.fingerprint_now(), a.sources.fingerprint);
    }
}
