//! The DaemonSet's pod, run for real: `podman kube play` of the pod template rendered by
//! `kubectl kustomize deploy/kubernetes`, from the image `cargo xtask image` built. The
//! containerised agent must attach with the manifest's capabilities only, count what happens in
//! the host's cgroups and name containers through the host paths mounted at /host.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use cgwatch_tests::{Metrics, PinDir, TestCgroup, deploy, http_get, in_netns_of, podman, proc_caps};

/// A pod started by `podman kube play`, removed on drop.
struct PlayedPod {
    name: String,
    _dir: tempfile::TempDir,
}

impl PlayedPod {
    fn play(pod: &deploy::Yaml) -> PlayedPod {
        let name = pod["metadata"]["name"].as_str().unwrap().to_string();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pod.yaml");
        std::fs::write(&file, serde_yaml_ng::to_string(pod).unwrap()).unwrap();
        // podman's default ulimits exceed this host's hard limits (CAP_SYS_RESOURCE is dropped
        // here); podman run takes them as flags (podman::ULIMITS), kube play from its config.
        let conf = dir.path().join("containers.conf");
        std::fs::write(&conf, "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=1000:1000\"]\n").unwrap();
        let out = podman::command()
            .env("CONTAINERS_CONF", &conf)
            .args(["kube", "play", "--replace"])
            .arg(&file)
            .output()
            .expect("podman kube play");
        let played = PlayedPod { name, _dir: dir };
        assert!(out.status.success(), "podman kube play: {}", String::from_utf8_lossy(&out.stderr));
        played
    }

    /// The host pid of the container's process, once it runs.
    fn pid(&self, container: &str) -> u32 {
        let ctr = format!("{}-{container}", self.name);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = podman::command().args(["inspect", "--format", "{{.State.Pid}}", &ctr]).output().unwrap();
            let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
            if pid != 0 {
                return pid;
            }
            assert!(Instant::now() < deadline, "{ctr} does not run:\n{}", self.logs(container));
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn logs(&self, container: &str) -> String {
        let out = podman::command().args(["logs", &format!("{}-{container}", self.name)]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    }
}

impl Drop for PlayedPod {
    fn drop(&mut self) {
        let _ = podman::command()
            .args(["pod", "rm", "-f", "-t", "0", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

const CAP_SYS_RESOURCE: u64 = 1 << 24;
const CAP_PERFMON: u64 = 1 << 38;
const CAP_BPF: u64 = 1 << 39;

#[test]
fn the_daemonset_pod_runs_the_agent_from_the_image_with_its_capabilities_only() {
    deploy::image();
    let ds = deploy::daemonset("deploy/kubernetes");
    let mut pod = deploy::pod_from_daemonset(&ds, &format!("cgwatch-kube-{}", std::process::id()));
    // Pins go to a directory of this test on the host's BPF filesystem (not the default
    // /sys/fs/bpf/cgwatch, which an agent of the host may use), removed at the end.
    let pins = PinDir::new("kube");
    let pin_path = format!("--pin-path={}", pins.arg());
    pod["spec"]["containers"][0]["args"].as_sequence_mut().unwrap().push(pin_path.as_str().into());
    let played = PlayedPod::play(&pod);
    let pid = played.pid("cgwatch");
    let port = ds["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"].as_u64().unwrap();
    let get = |path: &str| {
        let url = format!("http://127.0.0.1:{port}{path}");
        in_netns_of(pid, move || http_get(&url, &[]))
    };

    // Ready once the probes are attached (the manifest's readiness probe).
    let deadline = Instant::now() + Duration::from_secs(60);
    let ready = loop {
        match get("/readyz") {
            Ok(r) if r.status == 200 => break r.text(),
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            other => panic!("not ready: {other:?}\n{}", played.logs("cgwatch")),
        }
    };
    assert!(ready.lines().any(|l| l == "process_exit tp_btf 1"), "{ready}");
    assert!(ready.lines().any(|l| l == "seccomp_signal tp_btf 1"), "{ready}");
    assert!(!ready.lines().skip(1).any(|l| l.ends_with(" 0") && !l.contains(" off ")), "a probe failed:\n{ready}");

    // The manifest adds BPF, PERFMON and SYS_RESOURCE (podman grants SYS_RESOURCE only where
    // the host has it; this development host does not): the agent started with those, and
    // once attached it holds none (it runs as root in the container: it reads the runtimes'
    // root-owned state without CAP_DAC_READ_SEARCH).
    let bounding = proc_caps(std::process::id(), "CapBnd:");
    assert_eq!(proc_caps(pid, "CapBnd:"), (CAP_BPF | CAP_PERFMON | CAP_SYS_RESOURCE) & bounding, "the pod's capabilities");
    assert_eq!((proc_caps(pid, "CapEff:"), proc_caps(pid, "CapPrm:")), (0, 0), "dropped after attaching");

    // A denial in a host service, counted exactly (the manifest selects containers and
    // services: plain cgroups are summed into "(other)").
    let slice = TestCgroup::at(format!("/cgwatch-kube-{}.slice", std::process::id()));
    let cg = slice.child("cgwatch-kube-test.service");
    assert!(cg.run(&["seccomp", "--action", "errno", "--count", "17"]).success());
    // A container of the host, named through /host (podman's state under /var/lib/containers).
    let c = podman::Container::start("cgwatch-kube-named", &[], &["/cgwatch-workload", "acct", "--count", "5"]);
    assert_eq!(c.wait(), 0);
    let want = [("container", c.name.as_str()), ("runtime", "podman"), ("syscall", "acct"), ("action", "errno")];
    let deadline = Instant::now() + Duration::from_secs(30);
    let m = loop {
        let m = get("/metrics").map(|r| Metrics::parse(&r.text())).unwrap();
        let done = m.get("cgwatch_seccomp_violations_total", &[("cgroup", &cg.rel)]) == Some(17.0)
            && m.get("cgwatch_seccomp_violations_total", &want) == Some(5.0);
        if done || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let service = [("cgroup", cg.rel.as_str()), ("container", "cgwatch-kube-test.service"), ("runtime", "systemd")];
    assert_eq!(m.get("cgwatch_seccomp_violations_total", &[&service[..], &[("syscall", "getppid")]].concat()), Some(17.0));
    assert_eq!(m.get("cgwatch_seccomp_violations_total", &want), Some(5.0), "{}", played.logs("cgwatch"));
    // Pinned on the host's BPF filesystem with the manifest's capabilities.
    assert_eq!(m.get("cgwatch_pinned", &[]), Some(1.0), "{}", played.logs("cgwatch"));
    // Host CPU and memory come from the host's /proc, mounted at /host/proc.
    let host_total = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: f64 = host_total.lines().next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(m.get("cgwatch_host_memory_total_bytes", &[]), Some(kb * 1024.0));
}
