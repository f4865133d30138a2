//! Hostile clients: what the server refuses (methods, bodies, huge headers, junk, TLS on the
//! plain port and plain HTTP on the TLS port), and a well-behaved scraper under attack by 2,000
//! slow clients, 300 idle ones, 500 concurrent scrapers and junk: its latency is measured against
//! the same scraper without attack, the agent counts exactly meanwhile, slow connections are
//! closed after the header timeout and the agent's file descriptors come back to their baseline.
//!
//! The tests of this file run one at a time (they measure).

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use cgwatch_tests::{Agent, Client, TestCgroup, http_get, open_fds, pki::Pki};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sends `bytes` on a new connection and reads what comes back until the server closes or
/// 5 s pass (a write the server cut short is fine).
fn raw(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn status_line(response: &[u8]) -> String {
    String::from_utf8_lossy(response).lines().next().unwrap_or_default().to_string()
}

#[test]
fn methods_bodies_huge_headers_and_junk_are_refused() {
    let _serial = serial();
    let agent = Agent::start(&[]);
    let port = agent.port;

    let r = raw(port, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
    let text = String::from_utf8_lossy(&r).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 405") && text.contains("allow: get, head"), "{text}");
    let r = raw(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
    assert!(status_line(&r).starts_with("HTTP/1.1 413"), "{}", status_line(&r));
    let r = raw(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    assert!(status_line(&r).starts_with("HTTP/1.1 413"), "{}", status_line(&r));
    let r = raw(port, b"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(status_line(&r).starts_with("HTTP/1.1 405"), "{}", status_line(&r));
    // HEAD: the headers of a scrape, no body.
    let r = raw(port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let text = String::from_utf8_lossy(&r);
    assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("\r\n\r\n"), "{text}");
    // A 1 MiB header: 431 (or a reset while it is still being sent), never served.
    let mut huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    huge.resize(huge.len() + (1 << 20), b'a');
    huge.extend_from_slice(b"\r\n\r\n");
    let r = raw(port, &huge);
    assert!(r.is_empty() || status_line(&r).starts_with("HTTP/1.1 431"), "{}", status_line(&r));
    // HTTP/0.9, random bytes, a TLS handshake: an error or a closed connection.
    let mut random = vec![0u8; 4096];
    for (i, b) in random.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    for junk in [&b"GET /metrics\r\n"[..], &random, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"] {
        let r = raw(port, junk);
        assert!(r.is_empty() || status_line(&r).starts_with("HTTP/1.1 400"), "{:?}", status_line(&r));
    }
    let pki = Pki::generate();
    let tls_to_plain = Client::https(&pki.read("ca.pem")).get(&format!("https://127.0.0.1:{port}/metrics"), &[]);
    assert!(tls_to_plain.is_err(), "{:?}", tls_to_plain.map(|r| r.status));
    // Still serving.
    assert!(!agent.scrape().samples.is_empty());

    // Plain HTTP on a TLS port: no HTTP answer, and the TLS port keeps serving.
    std::fs::write(pki.path("web.yml"), "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n").unwrap();
    let config = pki.path("web.yml");
    let tls = Agent::start_with(&["--web.config.file", config.to_str().unwrap()], Client::https(&pki.read("ca.pem")));
    let r = raw(tls.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(!String::from_utf8_lossy(&r).contains("200 OK"), "{}", String::from_utf8_lossy(&r));
    let r = raw(tls.port, &random);
    assert!(!String::from_utf8_lossy(&r).contains("HTTP/1.1"), "{r:?}");
    assert!(!tls.scrape().samples.is_empty());
    for log in [agent.log(), tls.log()] {
        assert!(!log.contains("panicked") && !log.contains("ERROR"), "{log}");
    }
}

/// (p50, p99, max) of `samples`.
fn percentiles(samples: &[Duration]) -> (Duration, Duration, Duration) {
    let mut v = samples.to_vec();
    v.sort();
    let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    (at(0.5), at(0.99), v[v.len() - 1])
}

/// One scrape as Prometheus makes it after a keep-alive timeout: a new connection, GET with
/// gzip accepted, the whole response read. Returns the body's length.
fn scrape_once(addr: &SocketAddr) -> Result<usize, String> {
    let mut s = TcpStream::connect_timeout(addr, Duration::from_secs(10)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::new();
    s.read_to_end(&mut response).map_err(|e| format!("read: {e}"))?;
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no complete response")?;
    let head = String::from_utf8_lossy(&response[..head_end]);
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .ok_or("no content-length")?;
    if !head.starts_with("HTTP/1.1 200") || length == 0 || response.len() - head_end - 4 != length {
        return Err(format!("{}: {} of {length} bytes", head.lines().next().unwrap_or_default(), response.len() - head_end - 4));
    }
    Ok(length)
}

/// `n` scrapes by a well-behaved scraper, 50 ms apart; `midway` runs before the middle one.
/// Returns the latencies of the good scrapes and what went wrong with the others.
fn scrape_latencies(addr: &SocketAddr, n: usize, mut midway: impl FnMut()) -> (Vec<Duration>, Vec<String>) {
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    for i in 0..n {
        if i == n / 2 {
            midway();
        }
        let started = Instant::now();
        match scrape_once(addr) {
            Ok(_) => latencies.push(started.elapsed()),
            Err(e) => failures.push(format!("{e} after {:?}", started.elapsed())),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (latencies, failures)
}

/// A connection that sends half a request, or a whole one and then idles; reopened when the
/// server closes it.
struct Hostile {
    stream: Option<TcpStream>,
    /// Sends a whole request, then idles (kept alive); else a partial header, trickled.
    idle: bool,
}

const PARTIAL: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n";
const WHOLE: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

impl Hostile {
    fn open(&mut self, addr: &SocketAddr) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(addr, Duration::from_secs(1)) else { return false };
        let _ = s.write_all(if self.idle { WHOLE } else { PARTIAL });
        let _ = s.set_nonblocking(true);
        self.stream = Some(s);
        true
    }

    /// Whether the server closed it (reads what it sent meanwhile).
    fn closed(&mut self) -> bool {
        let Some(s) = &mut self.stream else { return false };
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(_) => break,
            }
        }
        self.stream = None;
        true
    }
}

/// Keeps `slow` slow clients and `idle` idle ones connected until `stop`, reopening the ones the
/// server closes (at most 200 per round of 100 ms), trickling a header line into the slow ones
/// every second. Returns how many connections the server closed.
fn hostile_clients(addr: SocketAddr, slow: usize, idle: usize, stop: &AtomicBool, opened: &AtomicUsize) -> usize {
    let mut clients: Vec<Hostile> = (0..slow + idle).map(|i| Hostile { stream: None, idle: i >= slow }).collect();
    let mut closed = 0;
    let mut trickled = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let mut reopened = 0;
        for c in &mut clients {
            if c.closed() {
                closed += 1;
            }
            if c.stream.is_none() && reopened < 200 && c.open(&addr) {
                reopened += 1;
                opened.fetch_add(1, Ordering::Relaxed);
            }
        }
        if trickled.elapsed() >= Duration::from_secs(1) {
            trickled = Instant::now();
            for s in clients.iter_mut().filter(|c| !c.idle).filter_map(|c| c.stream.as_mut()) {
                let _ = s.write_all(b"X-Slow: 1\r\n");
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    closed
}

/// Junk on new connections until `stop`: random bytes, a 1 MiB header, a POST with a body,
/// HTTP/0.9, a TLS handshake on the plain port. Returns how many were sent.
fn junk(port: u16, ca_pem: &[u8], stop: &AtomicBool) -> usize {
    let mut huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    huge.resize(huge.len() + (1 << 20), b'a');
    huge.extend_from_slice(b"\r\n\r\n");
    let random: Vec<u8> = (0..8192u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    let kinds: [&[u8]; 4] = [&random, &huge, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody", b"GET /metrics\r\n"];
    let tls = Client::https(ca_pem);
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) {
        for k in kinds {
            let _ = raw(port, k);
            sent += 1;
        }
        let _ = tls.get(&format!("https://127.0.0.1:{port}/metrics"), &[]);
        sent += 1;
    }
    sent
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn scrapes_keep_working_under_attack() {
    let _serial = serial();
    const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
    // p99 of 100 leaves out the worst one: this machine runs other work too.
    const SCRAPES: usize = 100;
    // The limit leaves room for the 500 scrapers (which are not told apart from the well-behaved
    // one); the 2,300 hostile connections exceed it twice over.
    let agent = Agent::start(&["--web.read-header-timeout", "2s", "--web.idle-timeout", "4s", "--web.max-connections", "1024"]);
    let (pid, port) = (agent.pid(), agent.port);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let url = agent.url("/metrics");
    let pki = Pki::generate();
    let body_bytes = agent.get("/metrics", &[]).body.len();

    // Without attack.
    let baseline_fds = open_fds(pid);
    let (quiet, quiet_failures) = scrape_latencies(&addr, SCRAPES, || {});
    assert!(quiet_failures.is_empty(), "{quiet_failures:?}");
    let (q50, q99, qmax) = percentiles(&quiet);

    // Under attack.
    let cg = TestCgroup::new("attack");
    const DENIALS: u32 = 25;
    let (stop, opened) = (&AtomicBool::new(false), &AtomicUsize::new(0));
    let (scrapes_done, scrapes_failed) = (&AtomicUsize::new(0), &AtomicUsize::new(0));
    let url = &url;
    let mut peak_fds = 0;
    let (attacked, attacked_failures, closed_by_server, junk_sent, attack_time) = std::thread::scope(|s| {
        // A failed assertion below must still stop the attackers, or the scope waits forever.
        let _stop = StopOnDrop(stop);
        let hostile = s.spawn(|| hostile_clients(addr, 2000, 300, stop, opened));
        let junk = s.spawn(|| junk(port, &pki.read("ca.pem"), stop));
        // 500 scrapers, each scraping again as soon as it has its answer.
        let scrapers: Vec<_> = (0..500)
            .map(|_| {
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        match http_get(url, &[]) {
                            Ok(r) if r.status == 200 => scrapes_done.fetch_add(1, Ordering::Relaxed),
                            _ => scrapes_failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        // Let the attack build up: every slow client connected at least once.
        let ramp = Instant::now();
        while opened.load(Ordering::Relaxed) < 2300 && ramp.elapsed() < Duration::from_secs(20) {
            peak_fds = peak_fds.max(open_fds(pid));
            std::thread::sleep(Duration::from_millis(100));
        }
        let started = Instant::now();
        let (latencies, failures) = scrape_latencies(&addr, SCRAPES, || {
            peak_fds = peak_fds.max(open_fds(pid));
            assert!(cg.run(&["seccomp", "--action", "errno", "--count", &DENIALS.to_string()]).success());
        });
        peak_fds = peak_fds.max(open_fds(pid));
        let attack_time = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        for t in scrapers {
            t.join().unwrap();
        }
        (latencies, failures, hostile.join().unwrap(), junk.join().unwrap(), attack_time)
    });
    let (a50, a99, amax) = percentiles(&attacked);
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    eprintln!("web attack: /metrics body {body_bytes} bytes; limits: header timeout 2s, idle timeout 4s, 1024 connections");
    eprintln!("web attack: quiet: {SCRAPES} scrapes, p50 {} p99 {} max {}", ms(q50), ms(q99), ms(qmax));
    eprintln!(
        "web attack: under attack ({:.1} s): {} scrapes ok, {} failed: p50 {} p99 {} max {}",
        attack_time.as_secs_f64(),
        attacked.len(),
        attacked_failures.len(),
        ms(a50),
        ms(a99),
        ms(amax)
    );
    eprintln!(
        "web attack: attackers: {} hostile connections opened (2,000 slow + 300 idle at a time), {} closed by the server; \
         500 scrapers in a loop: {} scrapes served, {} failed; {} junk requests; agent fds: {} before, peak {}",
        opened.load(Ordering::Relaxed),
        closed_by_server,
        scrapes_done.load(Ordering::Relaxed),
        scrapes_failed.load(Ordering::Relaxed),
        junk_sent,
        baseline_fds,
        peak_fds
    );
    assert!(attacked_failures.is_empty(), "failed scrapes under attack: {attacked_failures:?}\n{}", agent.log());
    assert!(a99 < Duration::from_secs(1), "p99 {a99:?} under attack");
    assert!(scrapes_done.load(Ordering::Relaxed) > 500, "the concurrent scrapers were starved");
    // Connections closed to make room give their descriptor back when their task next runs,
    // which a busy server does within milliseconds: the limit holds, give or take those.
    assert!(peak_fds <= baseline_fds + 2 * 1024, "peak {peak_fds} fds, baseline {baseline_fds}");

    // The agent kept counting: the denials made during the attack, exactly.
    let m = agent.scrape_until(Duration::from_secs(10), |m| {
        m.get("cgwatch_seccomp_violations_total", &[("cgroup", &cg.rel)]) == Some(f64::from(DENIALS))
    });
    assert_eq!(m.get("cgwatch_seccomp_violations_total", &[("cgroup", &cg.rel)]), Some(f64::from(DENIALS)));

    // Every connection closed (the attackers' by them, the server's by its timeouts): the
    // descriptors come back to the baseline.
    let settle = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let n = open_fds(pid);
            if n <= baseline_fds {
                return Instant::now();
            }
            assert!(Instant::now() < deadline, "{what}: {n} fds open, baseline {baseline_fds}\n{}", agent.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    settle("after the attack");

    // Slow clients alone (under the limit): closed by the server after the header timeout.
    let opened_at = Instant::now();
    let mut slow: Vec<Hostile> = (0..100).map(|_| Hostile { stream: None, idle: false }).collect();
    for c in &mut slow {
        assert!(c.open(&addr));
    }
    let mut lifetimes = Vec::new();
    while lifetimes.len() < slow.len() && opened_at.elapsed() < Duration::from_secs(10) {
        for c in &mut slow {
            if c.closed() {
                lifetimes.push(opened_at.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(lifetimes.len(), 100, "slow connections still open after 10 s");
    let (first, last) = (lifetimes[0], lifetimes[lifetimes.len() - 1]);
    eprintln!("web attack: 100 slow clients alone: closed by the server after {} to {}", ms(first), ms(last));
    assert!(first >= HEADER_TIMEOUT - Duration::from_millis(100), "closed before the header timeout: {first:?}");
    assert!(last <= HEADER_TIMEOUT + Duration::from_millis(1500), "closed late: {last:?}");
    settle("after the slow clients");
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
}
