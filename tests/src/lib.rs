//! Harness for cgwatch's integration tests: start the real agent, make real cgroups, run real
//! workloads in them, scrape /metrics over HTTP.
//!
//! The agent binary is `target/release/cgwatch` (built by `cargo xtask test`), or `$CGWATCH_BIN`.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use cgwatch::cgroups::Layout;

pub mod deploy;
pub mod docker;
pub mod events;
pub mod pki;
pub mod prom;

/// The release binaries under test.
pub fn bin(name: &str) -> PathBuf {
    let var = format!("{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Some(p) = std::env::var_os(var) {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    let release = root.join("target/release").join(name);
    if release.exists() {
        return release;
    }
    root.join("target/debug").join(name)
}

pub fn cgwatch_bin() -> PathBuf {
    bin("cgwatch")
}

/// The workload binary, built with the tests: beside the running binary, or beside the `deps/`
/// directory a test runs from.
pub fn workload_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CGWATCH_WORKLOAD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("cgwatch-workload"))
        .find(|p| p.exists())
        .expect("cgwatch-workload not built: run `cargo xtask build`")
}

/// The first `name` on $PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|p| p.exists()))
}

/// A field of /proc/PID/status ("VmRSS:", "CapEff:", ...), its value trimmed ("1234 kB",
/// "000000c000000000").
pub fn proc_status(pid: u32, field: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status.lines().find_map(|l| l.strip_prefix(field)).unwrap_or_else(|| panic!("no {field} for {pid}")).trim().to_string()
}

/// A kB field of /proc/PID/status ("VmRSS:"), in kB.
pub fn proc_status_kib(pid: u32, field: &str) -> f64 {
    proc_status(pid, field).trim_end_matches("kB").trim().parse().unwrap()
}

/// A capability set of /proc/PID/status ("CapEff:", "CapBnd:"), as its bit mask.
pub fn proc_caps(pid: u32, field: &str) -> u64 {
    u64::from_str_radix(&proc_status(pid, field), 16).unwrap()
}

/// How many descriptors a process holds.
pub fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// A free loopback port (bound and released; the agent binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running agent, killed on drop.
pub struct Agent {
    child: Child,
    pub port: u16,
    stderr_log: PathBuf,
    /// How the harness reaches it (scrapes, readiness).
    pub client: Client,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// An agent over plain HTTP without authentication.
    pub fn start(extra: &[&str]) -> Agent {
        Self::launch(&[], None, extra, Client::default())
    }

    /// An agent that `client` can scrape (its TLS trust, client certificate and credentials,
    /// for an agent started with a web config among `extra`).
    pub fn start_with(extra: &[&str], client: Client) -> Agent {
        Self::launch(&[], None, extra, client)
    }

    /// Starts the agent through `wrap` (e.g. `setpriv ...` to run it as another user).
    pub fn start_wrapped(wrap: &[&str], extra: &[&str]) -> Agent {
        Self::launch(wrap, None, extra, Client::default())
    }

    /// Starts the agent on a given port (a restarted agent that its scraper finds again).
    pub fn start_at(port: u16, extra: &[&str]) -> Agent {
        Self::launch(&[], Some(port), extra, Client::default())
    }

    fn launch(wrap: &[&str], fixed_port: Option<u16>, extra: &[&str], client: Client) -> Agent {
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let stderr_log = dir.path().join("agent.log");
            let port = fixed_port.unwrap_or_else(free_port);
            let listen = format!("127.0.0.1:{port}");
            let mut args = vec!["--listen", &listen, "--scan-interval", "500ms", "--sample-interval", "500ms"];
            // Agents of parallel tests must not share (or leave behind) pinned maps and links:
            // only a test that names a pin directory pins.
            if !extra.contains(&"--pin-path") {
                args.push("--no-pin");
            }
            // CGWATCH_AGENT_ARGS adds flags to every agent a test starts (the VM matrix sets
            // --probe-mode with it).
            let env_args = std::env::var("CGWATCH_AGENT_ARGS").unwrap_or_default();
            args.extend(env_args.split_whitespace());
            args.extend_from_slice(extra);
            let mut cmd = match wrap.split_first() {
                Some((w, rest)) => {
                    let mut c = Command::new(w);
                    c.args(rest).arg(cgwatch_bin());
                    c
                }
                None => Command::new(cgwatch_bin()),
            };
            let child = cmd
                .args(&args)
                .stdout(Stdio::null())
                .stderr(fs::File::create(&stderr_log).unwrap())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", cgwatch_bin().display()));
            let mut agent = Agent { child, port, stderr_log, client: client.clone(), _dir: dir };
            if agent.wait_ready() {
                return agent;
            }
            let log = agent.log();
            if !log.contains("cannot listen") {
                panic!("agent did not come up:\n{log}");
            }
        }
        panic!("agent could not find a free port");
    }

    fn wait_ready(&mut self) -> bool {
        // Under emulation (the VM matrix) a binary's tests start their agents at once on 2 slow
        // vCPUs: with 16 seccomp tests on a loaded host, healthy agents of 6.12 and 7.2 runs had
        // not logged a line at 30 s.
        let secs = if std::env::var_os("CGWATCH_VM").is_some() { 120 } else { 30 };
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if self.try_scrape().is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` and waits for the agent to exit; returns its log.
    pub fn stop(mut self, signal: i32) -> String {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(Instant::now() < deadline, "agent did not stop on signal {signal}");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.log()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// The URL of `path` on the agent, in its client's scheme.
    pub fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.client.scheme(), self.port)
    }

    /// Sends SIGHUP (the agent reloads its web config).
    pub fn sighup(&self) {
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) }, 0);
    }

    pub fn try_scrape(&self) -> Result<String, ureq::Error> {
        let r = self.client.get(&self.url("/metrics"), &[])?;
        if r.status != 200 {
            return Err(ureq::Error::StatusCode(r.status));
        }
        Ok(r.text())
    }

    /// GET `path` with `headers`, any status: (status, response headers, body).
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        self.client.get(&self.url(path), headers).unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log()))
    }

    pub fn scrape(&self) -> Metrics {
        let text = self.try_scrape().unwrap_or_else(|e| panic!("scrape failed: {e}\n{}", self.log()));
        Metrics::parse(&text)
    }

    /// Scrapes until `check` passes or `timeout` elapses; returns the last scrape.
    pub fn scrape_until(&self, timeout: Duration, check: impl Fn(&Metrics) -> bool) -> Metrics {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.scrape();
            if check(&m) || Instant::now() >= deadline {
                return m;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response, whatever its status.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// GET `url` with `headers`; an HTTP error status is a response, not an error.
pub fn http_get(url: &str, headers: &[(&str, &str)]) -> Result<Response, ureq::Error> {
    Client::default().get(url, headers)
}

/// How a test reaches an agent: plain HTTP by default, or HTTPS trusting one CA (and presenting
/// a client certificate), with basic auth credentials or none. Every request is a new
/// connection.
#[derive(Debug, Clone, Default)]
pub struct Client {
    /// The CA certificate (PEM) trusted for HTTPS; `None`: plain HTTP.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate chain and its key (PEM).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    pub basic_auth: Option<(String, String)>,
}

impl Client {
    /// HTTPS, trusting the CA certificate in `ca_pem`.
    pub fn https(ca_pem: &[u8]) -> Client {
        Client { ca_pem: Some(ca_pem.to_vec()), ..Client::default() }
    }

    pub fn identity(mut self, cert_pem: &[u8], key_pem: &[u8]) -> Client {
        self.identity = Some((cert_pem.to_vec(), key_pem.to_vec()));
        self
    }

    pub fn basic_auth(mut self, user: &str, password: &str) -> Client {
        self.basic_auth = Some((user.to_string(), password.to_string()));
        self
    }

    pub fn scheme(&self) -> &'static str {
        if self.ca_pem.is_some() { "https" } else { "http" }
    }

    fn agent(&self) -> ureq::Agent {
        use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
        let mut tls = TlsConfig::builder();
        if let Some(ca) = &self.ca_pem {
            tls = tls.root_certs(RootCerts::new_with_certs(&[Certificate::from_pem(ca).expect("CA PEM")]));
        }
        if let Some((cert, key)) = &self.identity {
            let chain = [Certificate::from_pem(cert).expect("client certificate PEM")];
            tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, PrivateKey::from_pem(key).expect("client key PEM"))));
        }
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .max_idle_connections(0)
            .tls_config(tls.build())
            .build()
            .into()
    }

    /// GET `url` with `headers`; an HTTP error status is a response, not an error.
    pub fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<Response, ureq::Error> {
        use base64::Engine as _;
        let mut req = self.agent().get(url);
        if let Some((user, password)) = &self.basic_auth {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            req = req.header("Authorization", format!("Basic {token}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut resp = req.call()?;
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_ascii_lowercase(), v.to_str().unwrap_or_default().to_string()))
            .collect();
        let status = resp.status().as_u16();
        let body = resp.body_mut().with_config().limit(256 << 20).read_to_vec()?;
        Ok(Response { status, headers, body })
    }
}

/// One parsed sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Metrics {
    /// Parses the text format, unescaping label values.
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            samples.push(parse_line(line).unwrap_or_else(|| panic!("bad exposition line: {line:?}")));
        }
        Metrics { samples, text: text.to_string() }
    }

    /// Samples named `name` whose labels include all of `want`.
    pub fn find(&self, name: &str, want: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| want.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .collect()
    }

    /// Sum of the matching samples (0 when none).
    pub fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.find(name, want).iter().map(|s| s.value).sum()
    }

    /// The one matching sample's value, or `None`.
    pub fn get(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        let found = self.find(name, want);
        assert!(found.len() <= 1, "more than one {name} {want:?}: {found:?}");
        found.first().map(|s| s.value)
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let split = line.find(['{', ' '])?;
    let name = line[..split].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[split..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => break i + 1,
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            '"' => break,
                            c => value.push(c),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                c => key.push(c),
            }
        };
        rest = &body[end..];
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample { name, labels, value })
}

/// A fresh directory on the BPF filesystem at /sys/fs/bpf, for tests that pin; everything
/// pinned below it is removed (`cgwatch --unpin`) on drop. Mounts the filesystem when it is
/// missing (systemd mounts it at boot; this development host's init does not).
pub struct PinDir {
    pub path: PathBuf,
}

impl PinDir {
    pub fn new(name: &str) -> PinDir {
        let is_bpffs = || {
            let c = std::ffi::CString::new("/sys/fs/bpf").unwrap();
            // SAFETY: statfs into a zeroed struct of the right type.
            let mut st: libc::statfs = unsafe { std::mem::zeroed() };
            unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == 0xcafe_4a11 }
        };
        if !is_bpffs() {
            let ok = Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]).status().is_ok_and(|s| s.success());
            assert!(ok && is_bpffs(), "cannot mount a BPF filesystem at /sys/fs/bpf");
        }
        let path = PathBuf::from(format!("/sys/fs/bpf/cgwatch-test-{name}-{}", std::process::id()));
        let _ = fs::create_dir(&path);
        PinDir { path }
    }

    /// The directory, as a flag value.
    pub fn arg(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = Command::new(cgwatch_bin()).arg("--unpin").arg("--pin-path").arg(&self.path).stderr(Stdio::null()).status();
    }
}

/// Runs `f` on a thread that has entered the network namespace of process `pid` (to reach a
/// server that listens only inside a container's namespace).
pub fn in_netns_of<T: Send>(pid: u32, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = fs::File::open(format!("/proc/{pid}/ns/net")).expect("network namespace");
            use std::os::fd::AsRawFd as _;
            // SAFETY: setns on this thread only; the fd is valid for the call.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread")
    })
}

/// A fresh cgroup (v2, plus v1 memory and cpuacct at the same path on hybrid hosts), removed on
/// drop after killing whatever still runs in it.
pub struct TestCgroup {
    /// Path relative to the cgroup2 mount, as the agent labels it.
    pub rel: String,
    pub v2: PathBuf,
    pub memory_v1: Option<PathBuf>,
    pub cpuacct_v1: Option<PathBuf>,
    pub cpu_v1: Option<PathBuf>,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

pub fn layout() -> Layout {
    Layout::detect(Path::new("/sys")).expect("cgroup layout")
}

impl TestCgroup {
    pub fn new(name: &str) -> TestCgroup {
        Self::with_dir_name(&format!("{name}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)))
    }

    /// A cgroup whose directory name is exactly `dir` (below `/cgwatch-test`).
    pub fn with_dir_name(dir: &str) -> TestCgroup {
        Self::at(format!("/cgwatch-test/{dir}"))
    }

    /// A child cgroup `name` below this one. Declare it after its parent so that it is
    /// dropped (removed) first.
    pub fn child(&self, name: &str) -> TestCgroup {
        Self::at(format!("{}/{name}", self.rel))
    }

    /// A cgroup at exactly `rel` (relative to the mount, e.g. a kubelet's layout). Create the
    /// parents first, each as its own `TestCgroup`, so that they are removed after it.
    pub fn at(rel: String) -> TestCgroup {
        let layout = layout();
        // On a v2 host with controllers, enable memory and cpu down to the new cgroup's parent
        // (harmless failure on hybrid hosts, whose v2 tree has no controllers).
        let mut dir = layout.v2.clone();
        for part in rel.trim_start_matches('/').split('/') {
            let _ = fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu");
            dir = dir.join(part);
            let _ = fs::create_dir(&dir);
        }
        let mk = |root: &Path| {
            let p = root.join(rel.trim_start_matches('/'));
            fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
            p
        };
        TestCgroup {
            v2: mk(&layout.v2),
            memory_v1: layout.memory_v1.as_deref().map(mk),
            cpuacct_v1: layout.cpuacct_v1.as_deref().map(mk),
            // co-mounted "cpu,cpuacct" is the same directory
            cpu_v1: layout.cpu_v1.as_deref().filter(|p| Some(*p) != layout.cpuacct_v1.as_deref()).map(mk),
            rel,
        }
    }

    /// Sets a memory limit where this host enforces it (v2 memory.max if the controller is on,
    /// else v1 memory.limit_in_bytes).
    pub fn set_memory_limit(&self, bytes: u64) {
        let v2max = self.v2.join("memory.max");
        if v2max.exists() {
            fs::write(&v2max, bytes.to_string()).unwrap();
            let _ = fs::write(self.v2.join("memory.swap.max"), "0");
        } else {
            let m = self.memory_v1.as_ref().expect("no memory controller on this host");
            fs::write(m.join("memory.limit_in_bytes"), bytes.to_string()).unwrap();
            let _ = fs::write(m.join("memory.memsw.limit_in_bytes"), bytes.to_string());
        }
    }

    fn procs_files(&self) -> Vec<PathBuf> {
        let mut v = vec![self.v2.join("cgroup.procs")];
        v.extend(self.memory_v1.iter().map(|p| p.join("cgroup.procs")));
        v.extend(self.cpuacct_v1.iter().map(|p| p.join("cgroup.procs")));
        v.extend(self.cpu_v1.iter().map(|p| p.join("cgroup.procs")));
        v
    }

    /// Limits CPU to QUOTA_US per PERIOD_US (v2 cpu.max where the controller is on, else v1 CFS).
    pub fn set_cpu_quota(&self, quota_us: u64, period_us: u64) {
        let max = self.v2.join("cpu.max");
        if max.exists() {
            fs::write(&max, format!("{quota_us} {period_us}")).unwrap();
            return;
        }
        let dir = self.cpu_v1.as_ref().or(self.cpuacct_v1.as_ref()).expect("no cpu controller on this host");
        fs::write(dir.join("cpu.cfs_period_us"), period_us.to_string()).unwrap();
        fs::write(dir.join("cpu.cfs_quota_us"), quota_us.to_string()).unwrap();
    }

    /// Seconds throttled by the CPU quota, from the cgroup's own cpu.stat.
    pub fn throttled_seconds_from_files(&self) -> f64 {
        let v2 = fs::read_to_string(self.v2.join("cpu.stat")).unwrap_or_default();
        if let Some(us) = v2.lines().find_map(|l| l.strip_prefix("throttled_usec ")) {
            return us.trim().parse::<f64>().unwrap() / 1e6;
        }
        let dir = self.cpu_v1.as_ref().or(self.cpuacct_v1.as_ref()).unwrap();
        let v1 = fs::read_to_string(dir.join("cpu.stat")).unwrap();
        v1.lines().find_map(|l| l.strip_prefix("throttled_time ")).unwrap().trim().parse::<f64>().unwrap() / 1e9
    }

    /// The workload command, joining this cgroup before running `args`.
    pub fn workload(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(workload_bin());
        for f in self.procs_files() {
            cmd.arg("--join").arg(f);
        }
        cmd.args(args);
        cmd
    }

    /// Runs the workload to completion.
    pub fn run(&self, args: &[&str]) -> ExitStatus {
        self.workload(args).stdout(Stdio::null()).status().expect("run workload")
    }

    /// Starts the workload and waits for it to print "ready".
    pub fn start_ready(&self, args: &[&str]) -> Child {
        let mut child = self.workload(args).stdout(Stdio::piped()).spawn().expect("spawn workload");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "workload did not get ready");
        child
    }

    /// CPU seconds from the file the agent must use on this host.
    pub fn cpu_seconds_from_files(&self) -> f64 {
        let controllers = fs::read_to_string(self.v2.join("cgroup.controllers")).unwrap_or_default();
        if !controllers.split_whitespace().any(|c| c == "cpu")
            && let Some(p) = &self.cpuacct_v1
        {
            return read_num(&p.join("cpuacct.usage")) / 1e9;
        }
        let stat = fs::read_to_string(self.v2.join("cpu.stat")).unwrap();
        let usec = stat.lines().find_map(|l| l.strip_prefix("usage_usec ")).unwrap();
        usec.trim().parse::<f64>().unwrap() / 1e6
    }

    pub fn memory_bytes_from_files(&self) -> f64 {
        let controllers = fs::read_to_string(self.v2.join("cgroup.controllers")).unwrap_or_default();
        if controllers.split_whitespace().any(|c| c == "memory") {
            return read_num(&self.v2.join("memory.current"));
        }
        read_num(&self.memory_v1.as_ref().unwrap().join("memory.usage_in_bytes"))
    }
}

fn read_num(p: &Path) -> f64 {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).trim().parse().unwrap()
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            let procs = fs::read_to_string(self.v2.join("cgroup.procs")).unwrap_or_default();
            if procs.trim().is_empty() {
                break;
            }
            for pid in procs.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for dir in [Some(&self.v2), self.memory_v1.as_ref(), self.cpuacct_v1.as_ref(), self.cpu_v1.as_ref()]
            .into_iter()
            .flatten()
        {
            for _ in 0..50 {
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Runs the agent binary to completion with a timeout; returns (exit code, stderr).
pub fn run_agent_expecting_exit(args: &[&str], wrap: Option<&[&str]>) -> (Option<i32>, String) {
    let mut cmd = match wrap {
        Some(w) => {
            let mut c = Command::new(w[0]);
            c.args(&w[1..]).arg(cgwatch_bin());
            c
        }
        None => Command::new(cgwatch_bin()),
    };
    let mut child = cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cgwatch {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The syscall a kill verdict is reported with: its name, except where only a raw_tp exit probe
/// saw the kill (kernels whose kills raise no signal, or KILL_THREAD of a non-last thread), which
/// cannot read the dead thread's registers.
pub fn killed_syscall(m: &Metrics, via_exit_probe: bool) -> &'static str {
    let raw_exit = m.get("cgwatch_probe_attached", &[("probe", "process_exit"), ("mode", "raw_tp")]) == Some(1.0);
    if raw_exit && via_exit_probe { "syscall_unknown" } else { "getppid" }
}

/// Kernels before 5.17 kill without a signal: the exit probe sees the kill.
pub fn kills_raise_signals() -> bool {
    cgwatch::probes::kernel_version() >= (5, 17)
}

/// Whether the agent behind `m` can tell which memory limit an OOM kill enforced: BTF has the
/// memory cgroup layout, and either `mark_victim` passes the victim task (attached as
/// `oom_mark_victim`) or the `oom_kill_process` kprobe reads the OOM killer's decision. The
/// kernels of the VM matrix all have kprobes: there, a kernel whose `mark_victim` carries only a
/// pid must have the kprobe attached.
pub fn oom_limit_known(m: &Metrics) -> bool {
    use agent_common::config_flags;
    use cgwatch::btf::KernelBtf;
    let Ok(btf) = KernelBtf::from_sysfs(Path::new("/sys")) else { return false };
    let flags = btf.kernel_config().map(|c| c.flags).unwrap_or(0);
    let attached = |probe: &str| m.get("cgwatch_probe_attached", &[("probe", probe)]) == Some(1.0);
    if std::env::var_os("CGWATCH_VM").is_some() && flags & config_flags::MARK_VICTIM_HAS_TASK == 0 {
        assert!(attached("oom_kill_process"), "{:?}", m.find("cgwatch_probe_attached", &[]));
    }
    flags & config_flags::HAS_MEMCG != 0 && (attached("oom_mark_victim") || attached("oom_kill_process"))
}

/// `promtool check metrics` on an exposition: (exit status success, what it said). Its lint
/// findings and parse errors both make it fail.
pub fn promtool_check_metrics(text: &str) -> (bool, String) {
    let promtool = which("promtool").expect("promtool is needed: apt-get install prometheus (cargo xtask test does)");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    (out.status.success(), said)
}

/// The exposition parses with `promtool check metrics`: a parse error must never happen.
pub fn assert_promtool_parses(text: &str) {
    let (_, said) = promtool_check_metrics(text);
    assert!(!said.contains("error while linting") && !said.contains("text format parsing error"), "{said}");
}

/// The root filesystem of the container tests' image, as a tarball written in `dir`:
/// busybox-static (sh, sleep, cat, true), `/cgwatch-workload` and the shared libraries it links
/// (as `ldd` lists them), and an empty `/tmp`.
pub fn image_tar(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    let put = |src: &Path, dest: &str| {
        let d = root.join(dest.trim_start_matches('/'));
        fs::create_dir_all(d.parent().unwrap()).unwrap();
        fs::copy(src, &d).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
    };
    let busybox = which("busybox").expect("busybox-static is not installed");
    put(&busybox, "/bin/busybox");
    for applet in ["sh", "sleep", "cat", "true"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let workload = workload_bin();
    put(&workload, "/cgwatch-workload");
    let ldd = Command::new("ldd").arg(&workload).output().expect("ldd");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = line.split("=>").last().unwrap_or_default().split_whitespace().next().unwrap_or_default();
        if path.starts_with('/') {
            put(Path::new(path), path);
        }
    }
    fs::create_dir_all(root.join("tmp")).unwrap();
    let tar = dir.join("image.tar");
    let ok = Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".").status().unwrap();
    assert!(ok.success(), "tar failed");
    tar
}

/// podman with the flags that work on this host (runc; cgroupfs, as crun fails on hybrid
/// cgroups; no network), and an image of busybox-static plus the test workload.
pub mod podman {
    use super::*;
    use std::sync::OnceLock;

    pub const IMAGE: &str = "localhost/cgwatch-test:latest";

    /// Resource limits within this host's hard limits (CAP_SYS_RESOURCE is dropped here, so
    /// podman's defaults cannot be set).
    pub const ULIMITS: [&str; 4] = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=1000:1000"];

    pub fn command() -> Command {
        let mut c = Command::new("podman");
        c.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
        c
    }

    /// Imports the test image once per test binary ([`image_tar`](super::image_tar)).
    pub fn image() -> &'static str {
        static BUILT: OnceLock<()> = OnceLock::new();
        BUILT.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let tar = super::image_tar(dir.path());
            let out = command().arg("import").arg(&tar).arg(IMAGE).output().expect("podman import");
            assert!(out.status.success(), "podman import: {}", String::from_utf8_lossy(&out.stderr));
        });
        IMAGE
    }

    /// A detached container, removed on drop.
    pub struct Container {
        pub name: String,
        pub id: String,
    }

    impl Container {
        /// `podman run -d --name NAME [run_args] IMAGE command...`.
        pub fn start(name_prefix: &str, run_args: &[&str], command_args: &[&str]) -> Container {
            let name = format!("{name_prefix}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
            let out = command()
                .args(["run", "-d", "--network", "none"])
                .args(ULIMITS)
                .args(["--name", &name])
                .args(run_args)
                .arg(image())
                .args(command_args)
                .output()
                .expect("podman run");
            assert!(out.status.success(), "podman run: {}", String::from_utf8_lossy(&out.stderr));
            let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Container { name, id }
        }

        /// Waits for the container to exit; returns its exit code.
        pub fn wait(&self) -> i32 {
            let out = command().args(["wait", &self.name]).output().expect("podman wait");
            String::from_utf8_lossy(&out.stdout).trim().parse().expect("podman wait: exit code")
        }

        pub fn logs(&self) -> String {
            let out = command().args(["logs", &self.name]).output().expect("podman logs");
            String::from_utf8_lossy(&out.stdout).to_string()
        }

        /// The container's cgroup, as the agent labels it (podman's cgroupfs layout).
        pub fn cgroup(&self) -> String {
            format!("/libpod_parent/libpod-{}", self.id)
        }
    }

    impl Drop for Container {
        fn drop(&mut self) {
            let _ = command()
                .args(["rm", "-f", "-t", "0", &self.name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs of the agent's programs that the kernel skipped (`cgwatch_probe_skipped_runs_total`):
/// 0 where the kernel never preempts a running program (this host; 5.10 to 6.12 as Debian boots
/// them); where it does (sid's `lazy` preemption), each may be an event lost or classified
/// without its mark, and the agent says how many.
pub fn skipped_runs(m: &Metrics) -> f64 {
    m.sum("cgwatch_probe_skipped_runs_total", &[])
}

/// `counted` is `expected`; or, only where the agent reports skipped runs, short of it by no
/// more than those: never more than happened, never less without saying so.
#[track_caller]
pub fn assert_counted(counted: f64, expected: f64, m: &Metrics, what: &str) {
    if counted == expected {
        return;
    }
    let skipped = skipped_runs(m);
    assert!(
        counted < expected && expected - counted <= skipped,
        "{what}: counted {counted}, expected {expected} ({skipped} skipped runs reported){}",
        kernel_misses()
    );
    note(&format!("{what}: counted {counted} of {expected}, {skipped} skipped runs reported (a preemptible kernel)"));
}

/// A measurement worth keeping from a passing test: on stderr, and in the VM matrix on the
/// serial console too (`VMNOTE`, in target/vm/<kernel>-<mode>.log), past the test harness's
/// capture.
pub fn note(line: &str) {
    eprintln!("{line}");
    if std::env::var_os("CGWATCH_VM").is_some()
        && let Ok(mut console) = std::fs::OpenOptions::new().append(true).open("/dev/console")
    {
        let _ = writeln!(console, "VMNOTE {line}");
    }
}

/// Whether fexit attaches to kernel functions on this kernel: x86_64 since 5.5 (every kernel
/// tested), arm64 only since 6.4 (ftrace direct calls; Debian's arm64 6.1 answers ENOTSUPP).
pub fn fexit_on_kernel_functions() -> bool {
    !cfg!(target_arch = "aarch64") || cgwatch::probes::kernel_version() >= (6, 4)
}

/// Whether the kernel's BTF names `__seccomp_filter`'s `recheck_after_trace` parameter (the TRACE
/// hook needs it): every x86_64 kernel tested, not Debian's 5.10 arm64, whose BTF lacks the
/// function.
pub fn btf_names_recheck_after_trace() -> bool {
    let btf = std::fs::read("/sys/kernel/btf/vmlinux").unwrap_or_default();
    btf.windows(20).any(|w| w == b"recheck_after_trace\0")
}

/// What the kernel says it missed, for a failure message: the kprobes' and kretprobes' misses
/// (`kprobe_profile`: name, hits, misses; a kretprobe misses when its instances run out), where
/// tracefs is mounted.
pub fn kernel_misses() -> String {
    ["/sys/kernel/tracing/kprobe_profile", "/sys/kernel/debug/tracing/kprobe_profile"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|t| format!("; kprobe_profile (probe, hits, misses): {}", t.split_whitespace().collect::<Vec<_>>().join(" ")))
        .unwrap_or_default()
}

/// Counts by (label, label) are `want`; or, only where the agent reports skipped runs, off by
/// no more than those (each skipped run loses one event, or moves one to another label when it
/// was the run that marked it), and never more in all than `want`.
#[track_caller]
pub fn assert_counts(got: Vec<(String, String, f64)>, want: Vec<(String, String, f64)>, m: &Metrics, what: &str) {
    if got == want {
        return;
    }
    let skipped = skipped_runs(m);
    let count = |v: &[(String, String, f64)], k: &(String, String)| {
        v.iter().filter(|(a, b, _)| (a, b) == (&k.0, &k.1)).map(|(_, _, n)| n).sum::<f64>()
    };
    let mut keys: Vec<(String, String)> = got.iter().chain(&want).map(|(a, b, _)| (a.clone(), b.clone())).collect();
    keys.sort();
    keys.dedup();
    let off: f64 = keys.iter().map(|k| (count(&got, k) - count(&want, k)).abs()).sum();
    let total = |v: &[(String, String, f64)]| v.iter().map(|(_, _, n)| n).sum::<f64>();
    assert!(
        skipped > 0.0 && total(&got) <= total(&want) && off <= 2.0 * skipped,
        "{what}: counted {got:?}, expected {want:?} ({skipped} skipped runs reported){}",
        kernel_misses()
    );
    note(&format!("{what}: counted {got:?}, expected {want:?}, {skipped} skipped runs reported (a preemptible kernel)"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_escaped_labels() {
        let m = Metrics::parse(
            "# TYPE x counter\nx_total{a=\"q\\\"u\\\\o\\nte\",b=\"\"} 3\ny 1.5\nz{} 2\n# EOF\n",
        );
        assert_eq!(m.samples.len(), 3);
        assert_eq!(m.samples[0].labels["a"], "q\"u\\o\nte");
        assert_eq!(m.samples[0].labels["b"], "");
        assert_eq!(m.get("x_total", &[("b", "")]), Some(3.0));
        assert_eq!(m.get("y", &[]), Some(1.5));
        assert_eq!(m.get("z", &[]), Some(2.0));
    }
}
