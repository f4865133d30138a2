//! Container, pod and namespace names from the node's own files, without credentials or a
//! runtime API client:
//!
//! - docker: `<data root>/containers/<id>/config.v2.json` (name, image, and the kubelet's
//!   `io.kubernetes.*` labels under dockershim / cri-dockerd), the data root being
//!   `--docker.data-root` (dockerd's `--data-root`, `/var/lib/docker` by default);
//! - containerd: the OCI bundle of a running task,
//!   `/run/containerd/io.containerd.runtime.v2.task/<namespace>/<id>/config.json`, whose
//!   annotations carry the CRI plugin's container, sandbox and image names (the same data the
//!   CRI socket answers with), or nerdctl's name;
//! - podman and CRI-O (containers/storage): `overlay-containers/containers.json` (names, image)
//!   and the bundle's `userdata/config.json` annotations, under `/var/lib/containers/storage`
//!   and `/run/containers/storage`;
//! - the kubelet: `/var/log/pods/<namespace>_<pod>_<uid>/` and
//!   `/var/log/containers/<pod>_<namespace>_<container>-<id>.log`, there on every node whatever
//!   the runtime.
//!
//! All paths are below `--path.rootfs`. Files are bounded in size and parsed leniently; a
//! missing or unreadable file is a miss, retried on the next round. A docker container (by its
//! cgroup path) still without its `config.v2.json` on a second lookup is logged, once: dockerd
//! most likely keeps its state under another data root than `--docker.data-root`.

use std::{
    collections::HashMap,
    fs,
    io::Read as _,
    path::{Component, Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use log::warn;
use serde_json::Value;

use super::{Identity, Kind, Runtime, sanitize_name};

/// dockerd's default data root (its `--data-root`), as the host names it.
pub const DOCKER_DATA_ROOT: &str = "/var/lib/docker";

/// Largest state file read (containers.json of a busy host is a few hundred KiB).
const MAX_FILE: u64 = 16 << 20;

const CONTAINERD_TASKS: &str = "run/containerd/io.containerd.runtime.v2.task";
const STORAGE_ROOTS: [&str; 2] = ["var/lib/containers/storage", "run/containers/storage"];

/// A state file's bytes, bounded; `None` when it is missing, unreadable or not a regular file
/// (a FIFO would block the resolver forever, a device would feed it garbage: opened without
/// blocking, checked on the open descriptor). The parsers below (`names_from_*`,
/// [`storage_entries`]) take what this returns, so that each can be tested (and fuzzed) on
/// bytes alone.
fn read_file(path: &Path) -> Option<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut buf = Vec::new();
    file.take(MAX_FILE).read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// The `annotations` object of an OCI bundle's `config.json`; `Null` when absent or not JSON.
fn bundle_annotations(bytes: &[u8]) -> Value {
    serde_json::from_slice::<Value>(bytes).ok().and_then(|v| v.get("annotations").cloned()).unwrap_or(Value::Null)
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer)?.as_str().filter(|s| !s.is_empty())
}

/// Names found for one container; `None` where a source did not say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    pub runtime: Option<Runtime>,
    pub container: Option<String>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub image: Option<String>,
}

impl Names {
    /// Fills what is still unknown from `other`.
    fn or(mut self, other: Names) -> Names {
        self.runtime = self.runtime.or(other.runtime);
        self.container = self.container.or(other.container);
        self.pod = self.pod.or(other.pod);
        self.namespace = self.namespace.or(other.namespace);
        self.image = self.image.or(other.image);
        self
    }

    fn from_annotations(a: &Value) -> Names {
        let get = |keys: &[&str]| keys.iter().find_map(|k| str_at(a, &format!("/{}", k.replace('/', "~1")))).map(str::to_string);
        Names {
            runtime: None,
            container: get(&["io.kubernetes.cri.container-name", "io.kubernetes.container.name", "nerdctl/name"]),
            pod: get(&["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"]),
            namespace: get(&["io.kubernetes.cri.sandbox-namespace", "io.kubernetes.pod.namespace"]),
            image: get(&["io.kubernetes.cri.image-name", "io.kubernetes.cri-o.ImageName"]),
        }
    }
}

/// A container's record in containers/storage's `containers.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageEntry {
    pub name: Option<String>,
    pub image: Option<String>,
}

#[derive(Debug, Default)]
struct StorageIndex {
    stamp: Option<(SystemTime, u64)>,
    by_id: HashMap<String, StorageEntry>,
}

/// Looks names up; keeps indexes of the files that list many containers.
#[derive(Debug)]
pub struct Resolver {
    rootfs: PathBuf,
    /// docker's data root as the host names it (`--docker.data-root`).
    docker_data_root: PathBuf,
    /// `<rootfs>/<docker data root>/containers`.
    docker_containers: PathBuf,
    /// The `config.v2.json` a docker container was found without, once it was logged.
    docker_miss_logged: Option<PathBuf>,
    storage: [StorageIndex; 2],
    /// pod UID -> (namespace, pod), from /var/log/pods.
    pods: HashMap<String, (String, String)>,
    /// container id -> container name, from /var/log/containers.
    log_names: HashMap<String, String>,
}

impl Resolver {
    /// A resolver reading below `rootfs`, docker's state below `<rootfs>/<docker_data_root>`
    /// (`docker_data_root` is the host's path, as dockerd's `--data-root` names it).
    pub fn new(rootfs: impl Into<PathBuf>, docker_data_root: &Path) -> Self {
        let rootfs = rootfs.into();
        // Path::join would replace rootfs with an absolute path: joined below it instead.
        let below_root: PathBuf = docker_data_root.components().filter(|c| !matches!(c, Component::RootDir)).collect();
        Resolver {
            docker_containers: rootfs.join(below_root).join("containers"),
            docker_data_root: docker_data_root.to_path_buf(),
            docker_miss_logged: None,
            rootfs,
            storage: Default::default(),
            pods: HashMap::new(),
            log_names: HashMap::new(),
        }
    }

    /// Fills the names of a container or pod identity. `resolved` is set when the container
    /// (or, for a pod cgroup, the pod) was found; otherwise the caller retries later.
    pub fn resolve(&mut self, id: &Identity) -> Identity {
        let mut names = Names::default();
        let cid = &*id.container_id;
        if !cid.is_empty() {
            names = self.docker(id).or(self.containerd(cid)).or(self.storage(cid));
        }
        if !id.pod_uid.is_empty() {
            names = names.or(self.kubelet(&id.pod_uid, cid));
        }
        named(id, &names)
    }

    fn docker(&mut self, id: &Identity) -> Names {
        let path = self.docker_containers.join(&*id.container_id).join("config.v2.json");
        match read_file(&path) {
            Some(bytes) => names_from_docker_config(&bytes),
            None => {
                // Not on the first lookup: a container removed at once (`docker run --rm`) may
                // be gone with its state before it was looked up; one whose cgroup is still
                // there on the next lookup has its config.v2.json written.
                if id.runtime == Runtime::Docker && id.attempted && self.docker_miss_logged.is_none() {
                    warn!("{}", docker_miss_message(&id.container_id, &path, &self.docker_data_root));
                    self.docker_miss_logged = Some(path);
                }
                Names::default()
            }
        }
    }

    fn containerd(&self, cid: &str) -> Names {
        let Ok(namespaces) = fs::read_dir(self.rootfs.join(CONTAINERD_TASKS)) else { return Names::default() };
        for ns in namespaces.flatten() {
            let bundle = ns.path().join(cid);
            if !bundle.is_dir() {
                continue;
            }
            return names_from_containerd_bundle(&read_file(&bundle.join("config.json")).unwrap_or_default());
        }
        Names::default()
    }

    fn storage(&mut self, cid: &str) -> Names {
        for (root, index) in STORAGE_ROOTS.iter().zip(self.storage.iter_mut()) {
            let root = self.rootfs.join(root).join("overlay-containers");
            let bundle = read_file(&root.join(cid).join("userdata/config.json")).unwrap_or_default();
            let entry = index.get(&root.join("containers.json"), cid);
            if let Some(names) = names_from_storage(&bundle, entry) {
                return names;
            }
        }
        Names::default()
    }

    fn kubelet(&mut self, pod_uid: &str, cid: &str) -> Names {
        if !self.pods.contains_key(pod_uid) || (!cid.is_empty() && !self.log_names.contains_key(cid)) {
            self.reload_kubelet_logs();
        }
        let (namespace, pod) = self.pods.get(pod_uid).cloned().unzip();
        Names { runtime: None, container: self.log_names.get(cid).cloned(), pod, namespace, image: None }
    }

    fn reload_kubelet_logs(&mut self) {
        self.pods.clear();
        if let Ok(dirs) = fs::read_dir(self.rootfs.join("var/log/pods")) {
            for d in dirs.flatten() {
                let name = d.file_name();
                if let Some((uid, ns, pod)) = name.to_str().and_then(pod_of_log_dir) {
                    self.pods.insert(uid.to_string(), (ns.to_string(), pod.to_string()));
                }
            }
        }
        self.log_names.clear();
        if let Ok(links) = fs::read_dir(self.rootfs.join("var/log/containers")) {
            for l in links.flatten() {
                let name = l.file_name();
                if let Some((id, container)) = name.to_str().and_then(container_of_log_file) {
                    self.log_names.insert(id.to_string(), container.to_string());
                }
            }
        }
    }
}

/// What the log says, once, when a docker container has no `config.v2.json` where the agent
/// looks.
fn docker_miss_message(cid: &str, path: &Path, data_root: &Path) -> String {
    let short = cid.get(..12).unwrap_or(cid);
    format!(
        "docker container {short}: no {}, its name, image and labels stay empty (said once, not for \
         each container). dockerd's data root is taken to be {}: if dockerd runs with another \
         --data-root (daemon.json \"data-root\"), set --docker.data-root (CGWATCH_DOCKER_DATA_ROOT) to it",
        path.display(),
        data_root.display()
    )
}

impl StorageIndex {
    /// The containers.json entry of `cid`, re-reading the file when it changed.
    fn get(&mut self, file: &Path, cid: &str) -> Option<StorageEntry> {
        let meta = fs::metadata(file).ok()?;
        let stamp = (meta.modified().ok()?, meta.len());
        if self.stamp != Some(stamp) {
            self.stamp = Some(stamp);
            self.by_id = read_file(file).map(|bytes| storage_entries(&bytes)).unwrap_or_default();
        }
        self.by_id.get(cid).cloned()
    }
}

/// The identity `id` with the names found: label values sanitized ([`sanitize_name`]), the
/// runtime from the state files when the path did not tell it, `resolved` when the container
/// (or, for a pod cgroup, the pod) was found.
pub fn named(id: &Identity, names: &Names) -> Identity {
    let found = match id.kind {
        Kind::Container => names.container.is_some(),
        Kind::Pod => names.pod.is_some(),
        _ => true,
    };
    let runtime = if id.runtime == Runtime::Unknown { names.runtime.unwrap_or_default() } else { id.runtime };
    let name = |n: &Option<String>| n.as_deref().map(sanitize_name).unwrap_or_else(|| Arc::from(""));
    Identity {
        kind: id.kind,
        runtime,
        container_id: id.container_id.clone(),
        pod_uid: id.pod_uid.clone(),
        container: if id.kind == Kind::Container { name(&names.container) } else { Arc::from("") },
        pod: name(&names.pod),
        namespace: name(&names.namespace),
        image: name(&names.image),
        resolved: found,
        attempted: true,
    }
}

/// docker's `config.v2.json`: name, image and the kubelet's labels (dockershim, cri-dockerd).
/// Nothing when it is not JSON.
pub fn names_from_docker_config(bytes: &[u8]) -> Names {
    let Ok(v) = serde_json::from_slice::<Value>(bytes) else { return Names::default() };
    let labels = v.pointer("/Config/Labels").cloned().unwrap_or(Value::Null);
    let k8s = Names::from_annotations(&labels);
    Names {
        runtime: Some(Runtime::Docker),
        // The kubelet's container name, else docker's own ("/name").
        container: k8s.container.clone().or_else(|| str_at(&v, "/Name").map(|n| n.trim_start_matches('/').to_string())),
        image: str_at(&v, "/Config/Image").map(str::to_string),
        ..Names::default()
    }
    .or(k8s)
}

/// The `config.json` of a containerd task bundle (empty when the bundle has none): the CRI
/// plugin's or nerdctl's annotations. The bundle's existence tells the runtime.
pub fn names_from_containerd_bundle(bytes: &[u8]) -> Names {
    let annotations = bundle_annotations(bytes);
    let mut names = Names::from_annotations(&annotations);
    names.runtime = Some(Runtime::Containerd);
    // A CRI sandbox (the pause container) has no container name of its own.
    if str_at(&annotations, "/io.kubernetes.cri.container-type") == Some("sandbox") {
        names.container = Some("POD".into());
    }
    names
}

/// containers/storage (podman, CRI-O): a container's bundle `userdata/config.json` (empty when
/// missing) and its `containers.json` entry. `None` when neither knows the container.
pub fn names_from_storage(bundle_config: &[u8], entry: Option<StorageEntry>) -> Option<Names> {
    let annotations = bundle_annotations(bundle_config);
    if entry.is_none() && annotations.is_null() {
        return None;
    }
    let mut names = Names::from_annotations(&annotations);
    names.runtime = match str_at(&annotations, "/io.container.manager") {
        Some("libpod") => Some(Runtime::Podman),
        _ if names.pod.is_some() => Some(Runtime::CriO),
        _ if entry.is_some() => Some(Runtime::Podman),
        _ => None,
    };
    if let Some(e) = entry {
        names = names.or(Names { container: e.name, image: e.image, ..Names::default() });
    }
    Some(names)
}

/// containers/storage's `containers.json`: container id -> entry. Empty when it is not a JSON
/// array.
pub fn storage_entries(bytes: &[u8]) -> HashMap<String, StorageEntry> {
    let mut by_id = HashMap::new();
    if let Ok(Value::Array(list)) = serde_json::from_slice::<Value>(bytes) {
        for c in list {
            let Some(id) = str_at(&c, "/id") else { continue };
            // podman keeps the image name in a JSON string inside the record.
            let meta: Value = str_at(&c, "/metadata").and_then(|m| serde_json::from_str(m).ok()).unwrap_or(Value::Null);
            let entry = StorageEntry {
                name: str_at(&c, "/names/0").or_else(|| str_at(&meta, "/name")).map(str::to_string),
                image: str_at(&meta, "/image-name").map(str::to_string),
            };
            by_id.insert(id.to_string(), entry);
        }
    }
    by_id
}

/// A kubelet pod log directory, `/var/log/pods/<namespace>_<pod>_<uid>` (none of the three
/// contains '_'): (uid, namespace, pod).
pub fn pod_of_log_dir(name: &str) -> Option<(&str, &str, &str)> {
    let mut parts = name.splitn(3, '_');
    let (ns, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    Some((uid, ns, pod))
}

/// A kubelet container log link, `/var/log/containers/<pod>_<namespace>_<container>-<id>.log`:
/// (id, container).
pub fn container_of_log_file(name: &str) -> Option<(&str, &str)> {
    let stem = name.strip_suffix(".log")?;
    let (rest, id) = stem.rsplit_once('-')?;
    let mut parts = rest.splitn(3, '_');
    let (_pod, _ns, container) = (parts.next()?, parts.next()?, parts.next()?);
    Some((id, container))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containers::parse_path;

    const ID: &str = "639ad46330a17a0deb02c58143ffaa8d48df92df91e249bbe88c69750cffd0de";
    const UID: &str = "0f3c7b1e-2a4d-4c6b-9e8f-1a2b3c4d5e6f";

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    #[test]
    fn podman_containers_json() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "var/lib/containers/storage/overlay-containers/containers.json",
            &format!(
                r#"[{{"id":"{ID}","names":["web"],"image":"abc","metadata":"{{\"image-name\":\"localhost/app:1\",\"name\":\"web\"}}"}}]"#
            ),
        );
        let mut r = Resolver::new(dir.path(), DOCKER_DATA_ROOT.as_ref());
        let id = r.resolve(&parse_path(&format!("/libpod_parent/libpod-{ID}")));
        assert!(id.resolved);
        assert_eq!((&*id.container, &*id.image, id.runtime), ("web", "localhost/app:1", Runtime::Podman));
    }

    #[test]
    fn docker_config_with_kubelet_labels() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &format!("var/lib/docker/containers/{ID}/config.v2.json"),
            r#"{"Name":"/k8s_app_web-0_shop_x_0","Config":{"Image":"nginx:1.27","Labels":{"io.kubernetes.container.name":"app","io.kubernetes.pod.name":"web-0","io.kubernetes.pod.namespace":"shop"}}}"#,
        );
        let mut r = Resolver::new(dir.path(), DOCKER_DATA_ROOT.as_ref());
        let id = r.resolve(&parse_path(&format!("/docker/{ID}")));
        assert_eq!(
            (&*id.container, &*id.pod, &*id.namespace, &*id.image, id.runtime),
            ("app", "web-0", "shop", "nginx:1.27", Runtime::Docker)
        );
    }

    #[test]
    fn docker_state_is_read_below_rootfs_under_the_data_root() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &format!("data/docker/containers/{ID}/config.v2.json"), r#"{"Name":"/web","Config":{"Image":"nginx:1.27"}}"#);
        let parsed = parse_path(&format!("/system.slice/docker-{ID}.scope"));
        let mut r = Resolver::new(dir.path(), Path::new("/data/docker/"));
        let id = r.resolve(&parsed);
        assert!(id.resolved);
        assert_eq!((&*id.container, &*id.image, id.runtime), ("web", "nginx:1.27", Runtime::Docker));
        assert_eq!(r.docker_miss_logged, None);
    }

    #[test]
    fn a_docker_container_without_its_config_is_logged_once_from_its_second_lookup() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &format!("data/docker/containers/{ID}/config.v2.json"), r#"{"Name":"/web"}"#);
        let mut r = Resolver::new(dir.path(), DOCKER_DATA_ROOT.as_ref());
        let first = r.resolve(&parse_path(&format!("/docker/{ID}")));
        assert!(!first.resolved && first.attempted && first.container.is_empty());
        // The first lookup may come after a container removed at once took its state along.
        assert_eq!(r.docker_miss_logged, None);
        let second = r.resolve(&first);
        assert!(!second.resolved);
        let looked_at = dir.path().join(format!("var/lib/docker/containers/{ID}/config.v2.json"));
        assert_eq!(r.docker_miss_logged.as_deref(), Some(looked_at.as_path()));
        let said = docker_miss_message(ID, &looked_at, DOCKER_DATA_ROOT.as_ref());
        assert!(said.contains(&looked_at.display().to_string()) && said.contains("--docker.data-root"), "{said}");
        assert!(said.contains("CGWATCH_DOCKER_DATA_ROOT") && said.starts_with("docker container 639ad46330a1: "), "{said}");
        // Not a docker cgroup: nothing to say about docker's data root.
        let mut r = Resolver::new(dir.path(), DOCKER_DATA_ROOT.as_ref());
        let podman = r.resolve(&parse_path(&format!("/libpod_parent/libpod-{ID}")));
        r.resolve(&podman);
        assert_eq!(r.docker_miss_logged, None);
    }

    #[test]
    fn containerd_bundle_annotations_tell_the_runtime() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &format!("{CONTAINERD_TASKS}/k8s.io/{ID}/config.json"),
            r#"{"annotations":{"io.kubernetes.cri.container-name":"db","io.kubernetes.cri.sandbox-name":"pg-0","io.kubernetes.cri.sandbox-namespace":"data","io.kubernetes.cri.image-name":"postgres:17"}}"#,
        );
        let mut r = Resolver::new(dir.path(), DOCKER_DATA_ROOT.as_ref());
        let id = r.resolve(&parse_path(&format!("/kubepods/burstable/pod{UID}/{ID}")));
        assert_eq!(
            (&*id.container, &*id.pod, &*id.namespace, &*id.image, id.runtime),
            ("db", "pg-0", "data", "postgres:17", Runtime::Containerd)
        );
    }

    #[test]
    fn kubelet_log_layout_names_pods_and_containers() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &format!("var/log/pods/shop_web-0_{UID}/app/0.log"), "");
        write(dir.path(), &format!("var/log/containers/web-0_shop_app-{ID}.log"), "");
        let mut r = Resolver::new(dir.path(), DOCKER_DATA_ROOT.as_ref());
        let sd = UID.replace('-', "_");
        let path = format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{sd}.slice/cri-containerd-{ID}.scope");
        let id = r.resolve(&parse_path(&path));
        assert!(id.resolved);
        assert_eq!((&*id.container, &*id.pod, &*id.namespace), ("app", "web-0", "shop"));
        let pod = r.resolve(&parse_path(&format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{sd}.slice")));
        assert!(pod.resolved && pod.container.is_empty());
        assert_eq!((&*pod.pod, &*pod.namespace), ("web-0", "shop"));
    }

    #[test]
    fn a_miss_is_retried_and_hostile_names_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Resolver::new(dir.path(), DOCKER_DATA_ROOT.as_ref());
        let parsed = parse_path(&format!("/libpod_parent/libpod-{ID}"));
        assert!(!r.resolve(&parsed).resolved);
        let hostile = format!("{}\"}}\\n{}", "x".repeat(300), "ü");
        let json = serde_json::json!([{ "id": ID, "names": [hostile] }]);
        write(dir.path(), "var/lib/containers/storage/overlay-containers/containers.json", &json.to_string());
        let id = r.resolve(&parsed);
        assert!(id.resolved && id.container.len() <= crate::containers::MAX_NAME_LABEL);
        assert!(id.container.starts_with("xxx"));
    }
}
