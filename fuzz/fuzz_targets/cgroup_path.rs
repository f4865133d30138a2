//! A cgroup path as the kernel or a walk of the cgroup2 mount gives it: arbitrary bytes, made a
//! label value by `sanitize_path` (as the registry does), then read by `parse_path`.
#![no_main]

use cgwatch::{
    cgroups::{MAX_PATH_LABEL, sanitize_path},
    containers::{Kind, parse_path},
};
use cgwatch_fuzz::check_identity;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = sanitize_path(data);
    assert!(!path.is_empty() && path.len() <= MAX_PATH_LABEL, "path label of {} bytes", path.len());
    if data.len() <= MAX_PATH_LABEL && std::str::from_utf8(data).is_ok_and(|s| !s.is_empty()) {
        assert_eq!(path.as_bytes(), data, "a valid short path is kept as it is");
    }

    let id = parse_path(&path);
    check_identity(&id);
    // The path alone names nothing but a service (its unit).
    assert!(id.pod.is_empty() && id.namespace.is_empty() && id.image.is_empty(), "{id:?}");
    assert!(!id.attempted, "{id:?}");
    assert_eq!(id.resolved, id.kind == Kind::Service, "{id:?}");
    if id.kind == Kind::Container {
        assert!(!id.container_id.is_empty(), "a container without an id: {id:?}");
        assert!(path.contains(&*id.container_id), "{id:?} not in {path:?}");
        assert!(id.container.is_empty(), "{id:?}");
    }
    if !id.pod_uid.is_empty() {
        // The systemd driver writes the UID's dashes as underscores.
        assert!(path.replace('_', "-").contains(&*id.pod_uid), "{id:?} not in {path:?}");
    }
    // Parsing is a function of the components: empty ones (doubled or trailing slashes) do not
    // matter.
    assert_eq!(parse_path(&format!("/{path}/")), id);
});
