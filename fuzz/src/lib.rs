//! Invariants shared by the fuzz targets in `fuzz_targets/`: what the agent promises about every
//! label value it derives from outside text (docs/metrics.md: valid UTF-8, at most 1024 bytes for
//! paths and 256 for names; a container id is the full 64-hex id).

use cgwatch::containers::{Identity, Kind, MAX_NAME_LABEL, Runtime};

/// A name label value (container, pod, namespace, image): bounded, no NUL. (Valid UTF-8 holds by
/// type.)
pub fn check_name(what: &str, v: &str) {
    assert!(v.len() <= MAX_NAME_LABEL, "{what} label is {} bytes: {v:?}", v.len());
    assert!(!v.contains('\0'), "{what} label has a NUL: {v:?}");
}

/// A container id as exported: empty, or 64 lowercase hex digits.
pub fn check_container_id(v: &str) {
    assert!(
        v.is_empty() || (v.len() == 64 && v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))),
        "container_id is not 64 lowercase hex: {v:?}"
    );
}

/// A pod UID as parsed from a cgroup path: empty, or the RFC 4122 text form.
pub fn check_pod_uid(v: &str) {
    let ok = v.len() == 36
        && v.bytes().enumerate().all(|(i, b)| if matches!(i, 8 | 13 | 18 | 23) { b == b'-' } else { b.is_ascii_hexdigit() });
    assert!(v.is_empty() || ok, "pod_uid is not a UID: {v:?}");
}

/// Every label an identity exports, and the consistency of its kind with its ids.
pub fn check_identity(id: &Identity) {
    check_container_id(&id.container_id);
    check_pod_uid(&id.pod_uid);
    check_name("container", &id.container);
    check_name("pod", &id.pod);
    check_name("namespace", &id.namespace);
    check_name("image", &id.image);
    for (name, value) in id.labels() {
        assert!(value.len() <= MAX_NAME_LABEL.max(64), "{name} label is {} bytes", value.len());
    }
    if !id.container_id.is_empty() {
        assert_eq!(id.kind, Kind::Container, "a container id on a {:?}: {id:?}", id.kind);
    }
    if id.kind == Kind::Service {
        assert_eq!(id.runtime, Runtime::Systemd, "{id:?}");
        assert!(!id.container.is_empty(), "a service without its unit name: {id:?}");
    }
}
