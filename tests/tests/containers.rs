//! Container identity from cgroup layouts and the node's files: real cgroups laid out exactly as
//! a kubelet (systemd and cgroupfs drivers) makes them, real processes in them, the kubelet's
//! and the runtime's files in a `--path.rootfs` tree.

use std::{fs, path::Path, time::Duration};

use cgwatch_tests::{Agent, Metrics, TestCgroup};

const P: &str = "cgwatch_process_exits_total";
const WAIT: Duration = Duration::from_secs(10);

/// A fresh 64-hex container id and an RFC 4122 pod UID, unique per call.
fn ids(seed: u32) -> (String, String) {
    let n = std::process::id();
    let id = format!("{:08x}{:08x}", n, seed).repeat(4);
    let uid = format!("{:08x}-{:04x}-4000-8000-{:012x}", n, seed, u64::from(seed) * 7919);
    (id, uid)
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

/// The kubelet's log layout for one container.
fn kubelet_logs(root: &Path, ns: &str, pod: &str, uid: &str, container: &str, id: &str) {
    write(root, &format!("var/log/pods/{ns}_{pod}_{uid}/{container}/0.log"), "");
    let link = root.join(format!("var/log/containers/{pod}_{ns}_{container}-{id}.log"));
    fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(format!("/var/log/pods/{ns}_{pod}_{uid}/{container}/0.log"), link).unwrap();
}

fn labels_of<'a>(m: &'a Metrics, name: &str, cgroup: &str) -> Vec<&'a std::collections::BTreeMap<String, String>> {
    m.find(name, &[("cgroup", cgroup)]).into_iter().map(|s| &s.labels).collect()
}

#[test]
fn kubernetes_identity_under_both_cgroup_drivers() {
    let root = tempfile::tempdir().unwrap();
    let (id_sd, uid_sd) = ids(1);
    let (id_fs, uid_fs) = ids(2);
    kubelet_logs(root.path(), "shop", "web-0", &uid_sd, "nginx", &id_sd);
    kubelet_logs(root.path(), "data", "pg-0", &uid_fs, "postgres", &id_fs);
    // containerd's bundle of the cgroupfs-driver container tells its runtime and image.
    write(
        root.path(),
        &format!("run/containerd/io.containerd.runtime.v2.task/k8s.io/{id_fs}/config.json"),
        r#"{"annotations":{"io.kubernetes.cri.container-name":"postgres","io.kubernetes.cri.image-name":"docker.io/library/postgres:17"}}"#,
    );
    let agent = Agent::start(&["--path.rootfs", root.path().to_str().unwrap()]);

    // systemd driver
    let kp = TestCgroup::at("/kubepods.slice".into());
    let burst = kp.child("kubepods-burstable.slice");
    let pod_sd = burst.child(&format!("kubepods-burstable-pod{}.slice", uid_sd.replace('-', "_")));
    let ctr_sd = pod_sd.child(&format!("cri-containerd-{id_sd}.scope"));
    // cgroupfs driver
    let kp_fs = TestCgroup::at("/kubepods".into());
    let be = kp_fs.child("besteffort");
    let pod_fs = be.child(&format!("pod{uid_fs}"));
    let ctr_fs = pod_fs.child(&id_fs);

    assert_eq!(ctr_sd.run(&["exit", "3"]).code(), Some(3));
    assert_eq!(ctr_fs.run(&["exit", "4"]).code(), Some(4));
    let mut sleeper = ctr_sd.start_ready(&["alloc", "--mb", "8", "--hold", "30"]);

    let want_sd = [
        ("container_id", id_sd.as_str()),
        ("container", "nginx"),
        ("pod", "web-0"),
        ("namespace", "shop"),
        ("runtime", "containerd"),
    ];
    let want_fs = [
        ("container_id", id_fs.as_str()),
        ("container", "postgres"),
        ("pod", "pg-0"),
        ("namespace", "data"),
        ("runtime", "containerd"),
    ];
    let m = agent.scrape_until(WAIT, |m| {
        m.get(P, &[&want_sd[..], &[("reason", "error")]].concat()).is_some()
            && m.get(P, &[&want_fs[..], &[("reason", "error")]].concat()).is_some()
            && m.get("cgwatch_cgroup_memory_usage_bytes", &want_sd).is_some()
            && !m.find("cgwatch_cgroup_memory_usage_bytes", &[("cgroup", &pod_sd.rel)]).is_empty()
    });
    assert_eq!(m.get(P, &[&want_sd[..], &[("cgroup", &ctr_sd.rel)]].concat()), Some(1.0), "{:?}", labels_of(&m, P, &ctr_sd.rel));
    assert_eq!(m.get(P, &[&want_fs[..], &[("cgroup", &ctr_fs.rel)]].concat()), Some(1.0), "{:?}", labels_of(&m, P, &ctr_fs.rel));
    // Resources of the running container carry the same labels.
    for name in ["cgwatch_cgroup_memory_usage_bytes", "cgwatch_cgroup_cpu_usage_seconds_total"] {
        assert!(m.get(name, &[&want_sd[..], &[("cgroup", &ctr_sd.rel)]].concat()).is_some(), "{name}");
    }
    // The pod cgroup is named by its pod, without a container.
    let pod_series = labels_of(&m, "cgwatch_cgroup_memory_usage_bytes", &pod_sd.rel);
    assert_eq!(pod_series.len(), 1, "{pod_series:?}");
    assert_eq!(pod_series[0]["pod"], "web-0");
    // Empty identity labels are left out (Prometheus treats them as absent anyway).
    assert!(!pod_series[0].contains_key("container"), "{:?}", pod_series[0]);
    // One info series per live container, with the image where the runtime's state has it.
    let info = m.find("cgwatch_container_info", &[("container_id", &id_fs)]);
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].labels["image"], "docker.io/library/postgres:17");
    assert_eq!(info[0].labels["pod"], "pg-0");
    assert!(m.get("cgwatch_container_info", &want_sd).is_some());
    assert!(m.get("cgwatch_containers", &[("runtime", "containerd")]).unwrap() >= 2.0);
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
}

#[test]
fn containers_only_selection_folds_the_rest_into_other() {
    let root = tempfile::tempdir().unwrap();
    let (id, uid) = ids(3);
    kubelet_logs(root.path(), "ops", "job-1", &uid, "worker", &id);
    let agent = Agent::start(&["--path.rootfs", root.path().to_str().unwrap(), "--cgroups", "containers"]);
    let kp = TestCgroup::at("/kubepods".into());
    let pod = kp.child(&format!("pod{uid}"));
    let ctr = pod.child(&id);
    let plain = TestCgroup::new("plain");
    let svc = TestCgroup::at(format!("/cgwatch-test-{}.service", std::process::id()));
    assert_eq!(ctr.run(&["exit", "5"]).code(), Some(5));
    let mut running = ctr.start_ready(&["alloc", "--mb", "4", "--hold", "30"]);
    assert_eq!(plain.run(&["exit", "5"]).code(), Some(5));
    assert_eq!(svc.run(&["exit", "5"]).code(), Some(5));
    let pod_named = |m: &Metrics| m.get("cgwatch_cgroup_memory_usage_bytes", &[("cgroup", &pod.rel), ("pod", "job-1")]).is_some();
    let m = agent.scrape_until(WAIT, |m| m.get(P, &[("container", "worker")]).is_some() && pod_named(m));
    assert!(pod_named(&m), "the pod's resources are named");
    assert_eq!(m.get(P, &[("cgroup", &ctr.rel), ("container", "worker"), ("reason", "error")]), Some(1.0));
    assert!(m.find(P, &[("cgroup", &plain.rel)]).is_empty());
    assert!(m.find(P, &[("cgroup", &svc.rel)]).is_empty());
    // Nothing is lost: the host's exits are summed under cgroup="(other)".
    assert!(m.get(P, &[("cgroup", "(other)"), ("reason", "error")]).unwrap() >= 2.0);
    // Only containers and pods have resource series (other tests' cgroups run beside these).
    for cg in [&plain.rel, &svc.rel, "/", "/cgwatch-test"] {
        assert!(m.find("cgwatch_cgroup_memory_usage_bytes", &[("cgroup", cg)]).is_empty(), "{cg}");
    }
    assert!(m.get("cgwatch_cgroup_memory_usage_bytes", &[("cgroup", &ctr.rel), ("container", "worker")]).is_some());
    running.kill().unwrap();
    running.wait().unwrap();
}

#[test]
fn systemd_services_are_named_by_their_unit() {
    let agent = Agent::start(&["--cgroups", "containers-and-services"]);
    let unit = format!("cgwatch-test-{}.service", std::process::id());
    let slice = TestCgroup::at("/cgwatch-test.slice".into());
    let svc = slice.child(&unit);
    let plain = TestCgroup::new("plain");
    assert_eq!(svc.run(&["exit", "6"]).code(), Some(6));
    assert_eq!(plain.run(&["exit", "6"]).code(), Some(6));
    let m = agent.scrape_until(WAIT, |m| m.get(P, &[("container", &unit)]).is_some());
    assert_eq!(m.get(P, &[("cgroup", &svc.rel), ("container", &unit), ("runtime", "systemd")]), Some(1.0));
    assert!(m.find(P, &[("cgroup", &plain.rel)]).is_empty(), "a plain cgroup is neither container nor service");
}

#[test]
fn an_oom_killed_container_deleted_and_recreated_keeps_its_count_for_the_retain_window() {
    let root = tempfile::tempdir().unwrap();
    let (old_id, uid) = ids(4);
    let (new_id, _) = ids(5);
    kubelet_logs(root.path(), "batch", "eater-0", &uid, "eater", &old_id);
    let agent = Agent::start(&["--path.rootfs", root.path().to_str().unwrap(), "--retain", "4s"]);
    let kp = TestCgroup::at("/kubepods".into());
    let pod = kp.child(&format!("pod{uid}"));
    let old = pod.child(&old_id);
    old.set_memory_limit(32 << 20);
    let status = old.run(&["alloc", "--mb", "256"]);
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
    let oom = [("container_id", old_id.as_str()), ("container", "eater"), ("pod", "eater-0"), ("namespace", "batch")];
    agent.scrape_until(WAIT, |m| m.get("cgwatch_oom_kills_total", &oom) == Some(1.0));

    // The kubelet removes the container's cgroup and starts a new one with a new id.
    drop(old);
    kubelet_logs(root.path(), "batch", "eater-0", &uid, "eater-restarted", &new_id);
    let new = pod.child(&new_id);
    assert_eq!(new.run(&["exit", "0"]).code(), Some(0));
    let new_labels = [("container_id", new_id.as_str()), ("container", "eater-restarted")];
    let m = agent.scrape_until(WAIT, |m| m.get(P, &new_labels).is_some());
    // The old container's series is still there, with its names, for increase() to see.
    assert_eq!(m.get("cgwatch_oom_kills_total", &oom), Some(1.0));
    assert_eq!(m.get(P, &[&oom[..], &[("reason", "oom_kill")]].concat()), Some(1.0));
    assert!(m.get("cgwatch_container_info", &[("container_id", &old_id)]).is_none(), "the old container is not live");
    // After the retain window it goes.
    let m = agent.scrape_until(Duration::from_secs(15), |m| m.get("cgwatch_oom_kills_total", &oom).is_none());
    assert!(m.get(P, &new_labels).is_some());
    drop(new);
}

#[test]
fn hostile_container_names_keep_the_exposition_valid() {
    let root = tempfile::tempdir().unwrap();
    let (id, _) = ids(6);
    // JSON-escaped: a quote, a brace, a newline and a fake TYPE line, a backslash, 600 bytes.
    let hostile_json = format!(r#"evil\"}} 1\n# TYPE x counter\\{}\u00fc"#, "x".repeat(600));
    write(
        root.path(),
        "var/lib/containers/storage/overlay-containers/containers.json",
        &format!(r#"[{{"id":"{id}","names":["{hostile_json}"]}}]"#),
    );
    let agent = Agent::start(&["--path.rootfs", root.path().to_str().unwrap()]);
    let parent = TestCgroup::at("/cgwatch-test-libpod".into());
    let ctr = parent.child(&format!("libpod-{id}"));
    assert_eq!(ctr.run(&["exit", "9"]).code(), Some(9));
    let named = |m: &Metrics| m.find(P, &[("container_id", &id)]).iter().any(|s| s.labels.contains_key("container"));
    let m = agent.scrape_until(WAIT, named);
    let s = &m.find(P, &[("container_id", &id), ("runtime", "podman")])[0];
    // Our parser rejects any malformed line; the name comes back byte for byte, bounded.
    assert!(s.labels["container"].starts_with("evil\"} 1\n# TYPE x counter\\xxx"), "{:?}", s.labels["container"]);
    assert!(s.labels["container"].len() <= 256);
    cgwatch_tests::assert_promtool_parses(&m.text);
}

/// Runtime state files that are hostile or broken: a 100 KB name full of quotes and newlines, a
/// truncated file, a FIFO (would block a reader forever), a symlink to /dev/zero, JSON nested a
/// million deep, a file over the 16 MiB read bound. The agent names what it can, bounds what it
/// names, never blocks or crashes, and a well-formed container beside them is still named.
#[test]
fn hostile_runtime_state_files_never_block_or_break_the_agent() {
    let root = tempfile::tempdir().unwrap();
    let cfg = |id: &str| format!("var/lib/docker/containers/{id}/config.v2.json");
    let ids: Vec<String> = (10..17).map(|i| ids(i).0).collect();
    let [long, truncated, fifo, zero, nested, huge, good] = [0, 1, 2, 3, 4, 5, 6].map(|i| ids[i].as_str());
    let long_name = format!("{}\\\"}}\\n# TYPE x counter", "q\\\"\\n".repeat(100_000 / 4));
    write(root.path(), &cfg(long), &format!(r#"{{"Name":"/{long_name}","Config":{{"Image":"img"}}}}"#));
    write(root.path(), &cfg(truncated), r#"{"Name":"/trunc","Config":{"Ima"#);
    let fifo_path = root.path().join(cfg(fifo));
    fs::create_dir_all(fifo_path.parent().unwrap()).unwrap();
    let c = std::ffi::CString::new(fifo_path.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let zero_path = root.path().join(cfg(zero));
    fs::create_dir_all(zero_path.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &zero_path).unwrap();
    write(root.path(), &cfg(nested), &"[".repeat(1_000_000));
    write(root.path(), &cfg(huge), &format!(r#"{{"Name":"/huge"{}}}"#, " ".repeat(17 << 20)));
    write(root.path(), &cfg(good), r#"{"Name":"/well-formed","Config":{"Image":"registry.example/app:1"}}"#);

    let agent = Agent::start(&["--path.rootfs", root.path().to_str().unwrap()]);
    let docker = TestCgroup::at("/docker".into());
    let cgs: Vec<TestCgroup> = ids.iter().map(|id| docker.child(id)).collect();
    for cg in &cgs {
        assert_eq!(cg.run(&["exit", "5"]).code(), Some(5));
    }
    let all_shown = |m: &Metrics| ids.iter().all(|id| m.get(P, &[("container_id", id), ("reason", "error")]).is_some());
    let m = agent.scrape_until(Duration::from_secs(20), |m| {
        all_shown(m) && m.get(P, &[("container_id", good), ("container", "well-formed")]).is_some()
    });
    assert!(all_shown(&m), "not every container's series is there:\n{}", agent.log());
    // The well-formed one is named, with its image, despite its neighbours.
    assert_eq!(m.get(P, &[("container_id", good), ("container", "well-formed"), ("runtime", "docker")]), Some(1.0));
    assert_eq!(m.get("cgwatch_container_info", &[("container_id", good), ("image", "registry.example/app:1")]), Some(1.0));
    // The long name is there, bounded, byte for byte as far as it goes.
    let s = &m.find(P, &[("container_id", long)])[0];
    let name = &s.labels["container"];
    assert!(name.len() <= 256 && name.starts_with("q\"\nq\"\n"), "{:?}", &name[..name.len().min(40)]);
    // The broken ones are unnamed, not stuck: their series carry the id and the runtime.
    for id in [truncated, fifo, zero, nested, huge] {
        let s = &m.find(P, &[("container_id", id)])[0];
        assert!(!s.labels.contains_key("container"), "{id}: {:?}", s.labels);
        assert_eq!(s.labels["runtime"], "docker");
    }
    cgwatch_tests::assert_promtool_parses(&m.text);
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
    drop(cgs);
}
