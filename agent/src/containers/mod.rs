//! Which container, pod or service a cgroup is.
//!
//! [`parse_path`] reads the container id, pod UID and runtime out of a cgroup path, for the
//! layouts that docker, containerd, CRI-O, podman, systemd and the kubelet create under both the
//! systemd and the cgroupfs cgroup drivers. A component is taken as a container only when it has
//! the runtime's exact shape (prefix, a full 64-hex id, `.scope` suffix or the runtime's parent
//! directory), never by a prefix alone. Names (container, pod, namespace, image) come from the
//! node's own files, read by [`metadata::Resolver`] off the scrape path.

pub mod metadata;

use std::sync::Arc;

/// Longest container / pod / namespace / image name exported as a label value.
pub const MAX_NAME_LABEL: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Runtime {
    #[default]
    Unknown,
    Docker,
    Containerd,
    CriO,
    Podman,
    Systemd,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Unknown => "",
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Podman => "podman",
            Runtime::Systemd => "systemd",
        }
    }
}

/// What kind of workload a cgroup holds, for `--cgroups`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Kind {
    /// Host slices, sessions, ad-hoc cgroups.
    #[default]
    Other,
    /// A systemd service (`*.service`) outside any container.
    Service,
    /// A Kubernetes pod's cgroup (above its containers).
    Pod,
    /// A container, or a cgroup nested inside one.
    Container,
}

/// The identity of a cgroup as exported in its labels. Empty strings where unknown.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Identity {
    pub kind: Kind,
    pub runtime: Runtime,
    pub container_id: Arc<str>,
    pub pod_uid: Arc<str>,
    /// Container name (for a service: the unit name).
    pub container: Arc<str>,
    pub pod: Arc<str>,
    pub namespace: Arc<str>,
    pub image: Arc<str>,
    /// Names have been found.
    pub resolved: bool,
    /// A lookup has run (found or not). Until then the cgroup's series are held back, so that a
    /// new container's first series already carry its names instead of appearing twice.
    pub attempted: bool,
}

impl Identity {
    /// The identity labels, known or not (`cgwatch_container_info` carries all of them).
    pub fn labels(&self) -> [(&'static str, &str); 5] {
        [
            ("container_id", &self.container_id),
            ("container", &self.container),
            ("pod", &self.pod),
            ("namespace", &self.namespace),
            ("runtime", self.runtime.as_str()),
        ]
    }

    /// The labels every per-cgroup series carries besides `cgroup`: those that are known. An
    /// empty label is the same as none to Prometheus, and leaving them out keeps a scrape of
    /// thousands of plain cgroups small.
    pub fn known_labels(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.labels().into_iter().filter(|(_, v)| !v.is_empty())
    }

    /// Whether names still need a lookup.
    pub fn needs_names(&self) -> bool {
        !self.resolved && matches!(self.kind, Kind::Container | Kind::Pod)
    }

    /// No lookup has run yet: hold the series back.
    pub fn pending(&self) -> bool {
        self.needs_names() && !self.attempted
    }

    pub fn is_container(&self) -> bool {
        self.kind == Kind::Container && !self.container_id.is_empty()
    }
}

/// Makes an untrusted name safe as a label value: no NULs, bounded length at a char boundary.
/// (The exposition encoder escapes quotes, backslashes and newlines.)
pub fn sanitize_name(s: &str) -> Arc<str> {
    let s = s.trim_matches('\0');
    let mut end = s.len().min(MAX_NAME_LABEL);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Arc::from(s[..end].replace('\0', "").as_str())
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A Kubernetes pod UID (RFC 4122 text form), as written in cgroup names.
fn is_pod_uid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) { b == b'-' } else { b.is_ascii_hexdigit() }
        })
}

/// `kubepods-burstable-pod<uid>.slice` / `kubepods-pod<uid>.slice` (systemd driver, dashes of
/// the UID written as underscores) or `pod<uid>` below `kubepods` (cgroupfs driver).
fn pod_uid_of(component: &str, under_kubepods: bool) -> Option<String> {
    if let Some(rest) = component.strip_prefix("kubepods-").and_then(|r| r.strip_suffix(".slice")) {
        let uid = rest.rsplit_once("pod").map(|(_, u)| u)?;
        let uid = uid.replace('_', "-");
        return is_pod_uid(&uid).then_some(uid);
    }
    if under_kubepods && let Some(uid) = component.strip_prefix("pod") {
        return is_pod_uid(uid).then(|| uid.to_string());
    }
    None
}

/// A podman pod: `<pod id>` below `libpod_parent` (cgroupfs driver) or
/// `machine-libpod_pod_<pod id>.slice` (systemd driver). Its containers are below it.
fn is_podman_pod(component: &str, parent: Option<&str>) -> bool {
    if parent == Some("libpod_parent") && is_hex_id(component) {
        return true;
    }
    component
        .strip_prefix("machine-libpod_pod_")
        .and_then(|r| r.strip_suffix(".slice"))
        .is_some_and(is_hex_id)
}

/// A container component: `(runtime if the shape tells it, 64-hex id)`.
fn container_of(component: &str, parent: Option<&str>, in_pod: bool) -> Option<(Runtime, String)> {
    // systemd driver: <prefix>-<id>.scope
    if let Some(stem) = component.strip_suffix(".scope") {
        let (prefix, id) = stem.rsplit_once('-')?;
        if !is_hex_id(id) {
            return None;
        }
        let runtime = match prefix {
            "docker" => Runtime::Docker,
            "cri-containerd" | "nerdctl" => Runtime::Containerd,
            "crio" => Runtime::CriO,
            "libpod" => Runtime::Podman,
            // conmon / the runtime's monitor processes are not the container.
            _ => return None,
        };
        return Some((runtime, id.to_string()));
    }
    // cgroupfs driver: libpod-<id> (podman), crio-<id> (CRI-O)
    if let Some((prefix, id)) = component.split_once('-')
        && is_hex_id(id)
    {
        return match prefix {
            "libpod" => Some((Runtime::Podman, id.to_string())),
            "crio" => Some((Runtime::CriO, id.to_string())),
            _ => None,
        };
    }
    // cgroupfs driver: /docker/<id>; /kubepods/<qos>/pod<uid>/<id> (containerd or docker);
    // /<containerd namespace>/<id> (nerdctl, or a --cgroup-parent): the resolver tells the
    // runtime from its state files.
    if is_hex_id(component) {
        let runtime = if parent == Some("docker") && !in_pod { Runtime::Docker } else { Runtime::Unknown };
        return Some((runtime, component.to_string()));
    }
    None
}

/// Reads what the cgroup path itself says. Names are filled in later by the resolver.
pub fn parse_path(path: &str) -> Identity {
    let mut id = Identity::default();
    let mut parent: Option<&str> = None;
    let mut under_kubepods = false;
    for component in path.split('/').filter(|c| !c.is_empty()) {
        if id.kind == Kind::Container {
            // Nested cgroups inside a container belong to it.
            break;
        }
        if component == "kubepods" || component.starts_with("kubepods.slice") {
            under_kubepods = true;
        }
        if let Some(uid) = pod_uid_of(component, under_kubepods) {
            id.kind = Kind::Pod;
            id.pod_uid = Arc::from(uid.as_str());
        } else if is_podman_pod(component, parent) {
            id.kind = Kind::Pod;
            id.runtime = Runtime::Podman;
        } else if let Some((runtime, cid)) = container_of(component, parent, id.kind == Kind::Pod) {
            id.kind = Kind::Container;
            id.runtime = runtime;
            id.container_id = Arc::from(cid.as_str());
            id.container = Arc::from("");
        } else if id.kind != Kind::Pod
            && let Some(unit) = component.strip_suffix(".service")
            && !unit.is_empty()
        {
            id.kind = Kind::Service;
            id.runtime = Runtime::Systemd;
            id.container = sanitize_name(component);
        }
        parent = Some(component);
    }
    if id.kind == Kind::Service {
        // A service needs no lookup: its name is the unit.
        id.resolved = true;
    }
    id
}

/// `--cgroups`: which cgroups get series of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Selection {
    /// Containers and Kubernetes pods.
    Containers,
    /// Containers, pods and systemd services.
    #[value(name = "containers-and-services")]
    ContainersAndServices,
    /// Every cgroup.
    All,
}

impl Selection {
    pub fn selects(self, kind: Kind) -> bool {
        match self {
            Selection::All => true,
            Selection::ContainersAndServices => kind != Kind::Other,
            Selection::Containers => matches!(kind, Kind::Container | Kind::Pod),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "639ad46330a17a0deb02c58143ffaa8d48df92df91e249bbe88c69750cffd0de";
    const UID: &str = "0f3c7b1e-2a4d-4c6b-9e8f-1a2b3c4d5e6f";

    fn container(path: &str) -> (Runtime, String, String) {
        let id = parse_path(path);
        assert_eq!(id.kind, Kind::Container, "{path}");
        (id.runtime, id.container_id.to_string(), id.pod_uid.to_string())
    }

    #[test]
    fn runtime_layouts_under_both_drivers() {
        let cases = [
            (format!("/system.slice/docker-{ID}.scope"), Runtime::Docker),
            (format!("/docker/{ID}"), Runtime::Docker),
            (format!("/machine.slice/libpod-{ID}.scope"), Runtime::Podman),
            (format!("/machine.slice/libpod-{ID}.scope/container"), Runtime::Podman),
            (format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"), Runtime::Podman),
            (format!("/libpod_parent/libpod-{ID}"), Runtime::Podman),
            (format!("/system.slice/nerdctl-{ID}.scope"), Runtime::Containerd),
            (format!("/default/{ID}"), Runtime::Unknown),
            (format!("/system.slice/crio-{ID}.scope"), Runtime::CriO),
            (format!("/system.slice/cri-containerd-{ID}.scope"), Runtime::Containerd),
        ];
        for (path, runtime) in cases {
            assert_eq!(container(&path), (runtime, ID.to_string(), String::new()), "{path}");
        }
    }

    /// `podman pod create` / `podman kube play`: the pod's cgroup is a pod, its containers are
    /// below it (not nested cgroups of a container named by the pod id).
    #[test]
    fn podman_pods_under_both_drivers() {
        const POD: &str = "900263b5686b6bccd5f2f5b202b404be812a653e9dab3780bdc577b75aaf0d03";
        for pod in [format!("/libpod_parent/{POD}"), format!("/machine.slice/machine-libpod_pod_{POD}.slice")] {
            let p = parse_path(&pod);
            assert_eq!((p.kind, p.runtime, &*p.container_id), (Kind::Pod, Runtime::Podman, ""), "{pod}");
            let inner = if pod.ends_with(".slice") { format!("{pod}/libpod-{ID}.scope") } else { format!("{pod}/libpod-{ID}") };
            assert_eq!(container(&inner), (Runtime::Podman, ID.to_string(), String::new()), "{inner}");
        }
    }

    #[test]
    fn kubernetes_layouts() {
        let sd_uid = UID.replace('-', "_");
        let cases = [
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{sd_uid}.slice/cri-containerd-{ID}.scope"),
                Runtime::Containerd,
            ),
            (format!("/kubepods.slice/kubepods-pod{sd_uid}.slice/crio-{ID}.scope"), Runtime::CriO),
            (
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{sd_uid}.slice/docker-{ID}.scope"),
                Runtime::Docker,
            ),
            (format!("/kubepods/burstable/pod{UID}/{ID}"), Runtime::Unknown),
            (format!("/kubepods/pod{UID}/{ID}"), Runtime::Unknown),
            (format!("/kubepods/besteffort/pod{UID}/crio-{ID}"), Runtime::CriO),
        ];
        for (path, runtime) in cases {
            assert_eq!(container(&path), (runtime, ID.to_string(), UID.to_string()), "{path}");
        }
        let pod = parse_path(&format!("/kubepods/burstable/pod{UID}"));
        assert_eq!((pod.kind, &*pod.pod_uid), (Kind::Pod, UID));
    }

    #[test]
    fn lookalikes_are_not_containers() {
        for path in [
            "/",
            "/system.slice",
            "/user.slice/user-0.slice/session-3.scope",
            &format!("/system.slice/libpod-conmon-{ID}.scope"),
            &format!("/system.slice/crio-conmon-{ID}.scope"),
            &format!("/system.slice/docker-{}.scope", &ID[..63]),
            &format!("/system.slice/docker-{}.scope", ID.to_uppercase()),
            "/libpod_parent/libpod-notanid",
            &format!("/pod{UID}"),
            "/kubepods-burstable-podnot-a-uid.slice",
        ] {
            let id = parse_path(path);
            assert!(matches!(id.kind, Kind::Other), "{path}: {id:?}");
            assert!(id.container_id.is_empty(), "{path}");
        }
    }

    #[test]
    fn services() {
        let id = parse_path("/system.slice/nginx.service");
        assert_eq!((id.kind, id.runtime, &*id.container), (Kind::Service, Runtime::Systemd, "nginx.service"));
        assert!(!id.needs_names());
        // A container started inside a user service is the container, not the service.
        let id = parse_path(&format!("/user.slice/user-1000.slice/user@1000.service/app.slice/libpod-{ID}.scope"));
        assert_eq!(id.kind, Kind::Container);
        assert!(id.container.is_empty());
    }

    #[test]
    fn selection() {
        assert!(Selection::Containers.selects(Kind::Pod));
        assert!(!Selection::Containers.selects(Kind::Service));
        assert!(Selection::ContainersAndServices.selects(Kind::Service));
        assert!(!Selection::ContainersAndServices.selects(Kind::Other));
        assert!(Selection::All.selects(Kind::Other));
    }

    #[test]
    fn hostile_names_are_bounded() {
        let n = sanitize_name(&"ü".repeat(400));
        assert!(n.len() <= MAX_NAME_LABEL && n.chars().all(|c| c == 'ü'));
        assert_eq!(&*sanitize_name("a\0b\"c"), "ab\"c");
    }
}
