//! TLS and basic auth from the web config file (exporter-toolkit's format): a real Prometheus
//! scrapes over TLS with basic auth (and with a client certificate); wrong or missing
//! credentials get 401; plain HTTP and clients that do not trust the CA fail; each client
//! certificate policy admits whom it should; the config reloads when a file changes and on
//! SIGHUP, and a bad new config leaves the old one in force; a bad config at start-up ends the
//! agent with one line and exit 1.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use cgwatch_tests::{
    Agent, Client, TestCgroup,
    pki::{Pki, bcrypt_hash},
    prom::Prometheus,
    run_agent_expecting_exit,
};

/// Writes `text` to `dir/web.yml` atomically (a rename, as an editor or a Secret update does).
fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("web.yml");
    let tmp = dir.join(".web.yml.tmp");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, &path).unwrap();
    path
}

fn tls_with_users(users: &[(&str, &str)]) -> String {
    let mut text = String::from("tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\nbasic_auth_users:\n");
    for (user, password) in users {
        text.push_str(&format!("  {user}: '{}'\n", bcrypt_hash(user, password)));
    }
    text
}

fn wait_until(what: &str, timeout: Duration, agent: &Agent, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The one value of an instant vector with one series, if it has one.
fn single_value(result: &[serde_json::Value]) -> Option<f64> {
    match result {
        [one] => one["value"][1].as_str().and_then(|v| v.parse().ok()),
        _ => None,
    }
}

#[test]
fn prometheus_scrapes_over_tls_with_basic_auth_and_nobody_else_gets_in() {
    let pki = Pki::generate();
    let config = write_config(pki.dir(), &tls_with_users(&[("prometheus", "s3cret"), ("alice", "other")]));
    let ca = pki.read("ca.pem");
    let client = Client::https(&ca).basic_auth("prometheus", "s3cret");
    let agent = Agent::start_with(&["--web.config.file", config.to_str().unwrap()], client);
    assert!(agent.log().contains("TLS, basic auth (2 users)"), "{}", agent.log());

    let cg = TestCgroup::new("tls");
    assert!(cg.run(&["seccomp", "--action", "errno", "--count", "3"]).success());
    let job = format!(
        "scheme: https\ntls_config:\n  ca_file: '{}'\nbasic_auth:\n  username: prometheus\n  password: s3cret\n",
        pki.path("ca.pem").display()
    );
    let prom = Prometheus::start_with_job(&[agent.port], &[], None, &job);
    let violations = format!("sum(cgwatch_seccomp_violations_total{{cgroup=\"{}\"}})", cg.rel);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = single_value(&prom.query("up{job=\"cgwatch\"}"));
        let counted = single_value(&prom.query(&violations));
        if up == Some(1.0) && counted == Some(3.0) {
            break;
        }
        assert!(Instant::now() < deadline, "up {up:?}, violations {counted:?}\n{}\n{}", prom.log(), agent.log());
        std::thread::sleep(Duration::from_millis(300));
    }

    let url = agent.url("/metrics");
    let https = Client::https(&ca);
    // Wrong password, unknown user, no credentials: 401 with a challenge, and no metrics.
    for client in [https.clone().basic_auth("prometheus", "wrong"), https.clone().basic_auth("mallory", "s3cret"), https.clone()] {
        let r = client.get(&url, &[]).unwrap();
        assert_eq!(r.status, 401, "{client:?}");
        assert!(r.header("www-authenticate").is_some_and(|h| h.starts_with("Basic realm=")), "{:?}", r.headers);
        assert!(!r.text().contains("cgwatch_"), "{}", r.text());
    }
    // The landing page is protected too; another configured user gets in.
    assert_eq!(https.get(&agent.url("/"), &[]).unwrap().status, 401);
    assert_eq!(https.clone().basic_auth("alice", "other").get(&url, &[]).unwrap().status, 200);
    // Probes need no credentials (kubelet cannot send them), still over TLS.
    assert_eq!(https.get(&agent.url("/healthz"), &[]).unwrap().status, 200);
    assert_eq!(https.get(&agent.url("/readyz"), &[]).unwrap().status, 200);
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = Client::default().basic_auth("prometheus", "s3cret").get(&format!("http://127.0.0.1:{}/metrics", agent.port), &[]);
    assert!(plain.as_ref().map_or(true, |r| r.status != 200), "{:?}", plain.map(|r| r.status));
    // A client that trusts another CA refuses the server's certificate.
    let untrusting = Client::https(&pki.read("other-ca.pem")).basic_auth("prometheus", "s3cret").get(&url, &[]);
    assert!(untrusting.is_err(), "a client without the CA got {:?}", untrusting.map(|r| r.status));
}

#[test]
fn client_certificate_policies() {
    let pki = Pki::generate();
    let ca = pki.read("ca.pem");
    let config = |policy: &str| {
        let ca_line = if policy == "NoClientCert" { String::new() } else { "  client_ca_file: ca.pem\n".to_string() };
        format!("tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n{ca_line}  client_auth_type: {policy}\n")
    };
    let path = write_config(pki.dir(), &config("RequireAndVerifyClientCert"));
    let with_cert = Client::https(&ca).identity(&pki.read("client.pem"), &pki.read("client.key"));
    let agent = Agent::start_with(&["--web.config.file", path.to_str().unwrap()], with_cert.clone());

    // Prometheus with the client certificate scrapes it.
    let job = format!(
        "scheme: https\ntls_config:\n  ca_file: '{}'\n  cert_file: '{}'\n  key_file: '{}'\n",
        pki.path("ca.pem").display(),
        pki.path("client.pem").display(),
        pki.path("client.key").display()
    );
    let prom = Prometheus::start_with_job(&[agent.port], &[], None, &job);
    let deadline = Instant::now() + Duration::from_secs(30);
    while single_value(&prom.query("up{job=\"cgwatch\"}")) != Some(1.0) {
        assert!(Instant::now() < deadline, "Prometheus with a client certificate: not up\n{}\n{}", prom.log(), agent.log());
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(prom);

    let none = Client::https(&ca);
    let other = Client::https(&ca).identity(&pki.read("other-client.pem"), &pki.read("other-client.key"));
    let url = agent.url("/metrics");
    let ok = |c: &Client| c.get(&url, &[]).is_ok_and(|r| r.status == 200);
    // Policy: (no certificate, a certificate from the CA, one from another CA).
    let cases = [
        ("RequireAndVerifyClientCert", (false, true, false)),
        ("VerifyClientCertIfGiven", (true, true, false)),
        ("RequireAnyClientCert", (false, true, true)),
        ("RequestClientCert", (true, true, true)),
        ("NoClientCert", (true, true, true)),
    ];
    for (i, (policy, expected)) in cases.into_iter().enumerate() {
        if i > 0 {
            // Applied by SIGHUP at once (the poll would take a second or two).
            let before = agent.log().matches("reloaded (SIGHUP)").count();
            write_config(pki.dir(), &config(policy));
            agent.sighup();
            wait_until(policy, Duration::from_secs(5), &agent, || agent.log().matches("reloaded (SIGHUP)").count() > before);
        }
        assert_eq!((ok(&none), ok(&with_cert), ok(&other)), expected, "{policy}\n{}", agent.log());
    }
}

#[test]
fn reloads_when_the_file_changes_and_on_sighup_and_keeps_the_old_config_when_the_new_one_is_bad() {
    let pki = Pki::generate();
    let ca = pki.read("ca.pem");
    let config = write_config(pki.dir(), &tls_with_users(&[("prometheus", "one")]));
    let agent = Agent::start_with(&["--web.config.file", config.to_str().unwrap()], Client::https(&ca).basic_auth("prometheus", "one"));
    let url = agent.url("/metrics");
    let status = |password: &str| Client::https(&ca).basic_auth("prometheus", password).get(&url, &[]).unwrap().status;
    assert_eq!((status("one"), status("two")), (200, 401));

    // A new password in the file: in force within seconds, without a restart.
    write_config(pki.dir(), &tls_with_users(&[("prometheus", "two")]));
    wait_until("the new password", Duration::from_secs(10), &agent, || status("two") == 200);
    assert_eq!(status("one"), 401, "the old password still works");
    assert!(agent.log().contains("reloaded (changed)"), "{}", agent.log());

    // An invalid file: one logged line that says what is wrong; the previous config stays.
    write_config(pki.dir(), "basic_auth_users:\n  prometheus: plaintext\n");
    wait_until("the error", Duration::from_secs(10), &agent, || agent.log().contains("not a bcrypt hash"));
    let line = agent.log().lines().find(|l| l.contains("not a bcrypt hash")).unwrap().to_string();
    assert!(line.contains("ERROR") && line.contains("user \"prometheus\"") && line.contains("previous web config stays"), "{line}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!((status("two"), status("plaintext")), (200, 401));
    assert_eq!(agent.log().matches("not a bcrypt hash").count(), 1, "logged once per change:\n{}", agent.log());

    // SIGHUP applies a new file at once.
    write_config(pki.dir(), &tls_with_users(&[("prometheus", "three")]));
    agent.sighup();
    wait_until("the SIGHUP reload", Duration::from_secs(3), &agent, || agent.log().contains("reloaded (SIGHUP)"));
    assert_eq!((status("three"), status("two")), (200, 401));

    // A new certificate (from another CA) in the same files applies to new connections.
    fs::copy(pki.path("other-server.pem"), pki.path("server.pem")).unwrap();
    fs::copy(pki.path("other-server.key"), pki.path("server.key")).unwrap();
    let other = Client::https(&pki.read("other-ca.pem")).basic_auth("prometheus", "three");
    wait_until("the new certificate", Duration::from_secs(10), &agent, || other.get(&url, &[]).is_ok_and(|r| r.status == 200));
    assert!(Client::https(&ca).basic_auth("prometheus", "three").get(&url, &[]).is_err(), "the old certificate is still served");
}

#[test]
fn bad_web_configs_stop_the_agent_with_one_line() {
    let pki = Pki::generate();
    let hash = bcrypt_hash("prometheus", "x");
    let tls = "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n";
    let cases: [(&str, Option<String>, &[&str]); 8] = [
        ("missing file", None, &["cannot read web config file", "No such file"]),
        ("bad YAML", Some("tls_server_config: [cert_file\n".into()), &["web.yml", "line"]),
        ("unknown key", Some(format!("{tls}  client_auth: yes\n")), &["unknown field `client_auth`"]),
        ("unknown section", Some("tls_config:\n  cert_file: server.pem\n".into()), &["unknown field `tls_config`"]),
        (
            "key of another certificate",
            Some("tls_server_config:\n  cert_file: server.pem\n  key_file: client.key\n".into()),
            &["key_file: does not match the certificate"],
        ),
        ("bad bcrypt hash", Some("basic_auth_users:\n  prometheus: s3cret\n".into()), &["user \"prometheus\": not a bcrypt hash"]),
        (
            "missing certificate file",
            Some(format!("tls_server_config:\n  cert_file: nope.pem\n  key_file: server.key\nbasic_auth_users:\n  prometheus: '{hash}'\n")),
            &["cannot read tls_server_config.cert_file", "nope.pem", "No such file"],
        ),
        ("cipher suites", Some(format!("{tls}  cipher_suites: [TLS_AES_128_GCM_SHA256]\n")), &["cipher_suites: not supported"]),
    ];
    for (what, text, expected) in cases {
        let path = match &text {
            Some(t) => write_config(pki.dir(), t),
            None => pki.path("absent.yml"),
        };
        let (code, stderr) = run_agent_expecting_exit(&["--listen", "127.0.0.1:0", "--web.config.file", path.to_str().unwrap()], None);
        assert_eq!(code, Some(1), "{what}: {stderr}");
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.contains(" INFO ")).collect();
        assert_eq!(lines.len(), 1, "{what}: one line expected:\n{stderr}");
        assert!(lines[0].starts_with("cgwatch: "), "{what}: {}", lines[0]);
        for e in expected {
            assert!(lines[0].contains(e), "{what}: {e:?} not in {}", lines[0]);
        }
    }
}
