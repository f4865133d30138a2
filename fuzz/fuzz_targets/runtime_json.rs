//! The container runtimes' state files as the name resolver reads them, through the same
//! functions: docker's config.v2.json, a containerd task bundle's config.json, containers/storage's
//! containers.json and bundle userdata/config.json (podman, CRI-O), and the kubelet's log
//! directory and file names. Every input goes through every format; the names found then become
//! an identity's labels (`named`), which must be sanitized (bounded, no NUL).
#![no_main]

use cgwatch::containers::{
    Identity, Kind,
    metadata::{
        Names, container_of_log_file, named, names_from_containerd_bundle, names_from_docker_config,
        names_from_storage, pod_of_log_dir, storage_entries,
    },
    parse_path,
};
use cgwatch_fuzz::check_identity;
use libfuzzer_sys::fuzz_target;

const ID: &str = "639ad46330a17a0deb02c58143ffaa8d48df92df91e249bbe88c69750cffd0de";

fn check(identities: &[Identity], names: &Names) {
    for id in identities {
        let out = named(id, names);
        check_identity(&out);
        assert!(out.attempted);
        assert_eq!((out.kind, &out.container_id, &out.pod_uid), (id.kind, &id.container_id, &id.pod_uid));
        match id.kind {
            Kind::Container => assert_eq!(out.resolved, names.container.is_some()),
            Kind::Pod => assert_eq!(out.resolved, names.pod.is_some()),
            _ => assert!(out.resolved),
        }
        if id.kind != Kind::Container {
            assert!(out.container.is_empty(), "{out:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let identities = [
        parse_path(&format!("/docker/{ID}")),
        parse_path(&format!("/kubepods/burstable/pod0f3c7b1e-2a4d-4c6b-9e8f-1a2b3c4d5e6f/{ID}")),
        parse_path("/kubepods/burstable/pod0f3c7b1e-2a4d-4c6b-9e8f-1a2b3c4d5e6f"),
        parse_path(&format!("/libpod_parent/libpod-{ID}")),
    ];

    check(&identities, &names_from_docker_config(data));
    check(&identities, &names_from_containerd_bundle(data));
    if let Some(names) = names_from_storage(data, None) {
        check(&identities, &names);
    }
    for entry in storage_entries(data).into_values().take(8) {
        check(&identities, &names_from_storage(b"", Some(entry.clone())).expect("an entry names"));
        check(&identities, &names_from_storage(data, Some(entry)).expect("an entry names"));
    }

    // Directory entry names: the resolver skips those that are not UTF-8.
    if let Ok(name) = std::str::from_utf8(data) {
        if let Some((uid, namespace, pod)) = pod_of_log_dir(name) {
            assert!(!namespace.contains('_') && !pod.contains('_'), "{name:?}");
            let _ = uid;
            let names = Names { pod: Some(pod.into()), namespace: Some(namespace.into()), ..Names::default() };
            check(&identities, &names);
        }
        if let Some((id, container)) = container_of_log_file(name) {
            assert!(!id.contains('-'), "{id}");
            check(&identities, &Names { container: Some(container.into()), ..Names::default() });
        }
    }
});
