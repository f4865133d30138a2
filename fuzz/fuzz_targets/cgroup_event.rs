//! Ring-buffer records from the cgroup mkdir / rmdir probe: arbitrary bytes, cut into records
//! (the last one may be short), applied to a fresh `Registry` by `apply_cgroup_event`. The first
//! byte picks `--cgroups` and `--max-cgroups`.
#![no_main]

use std::time::{Duration, Instant};

use agent_common::{CgroupEvent, cgroup_event};
use cgwatch::{
    cgroups::{Label, MAX_PATH_LABEL, Registry},
    containers::Selection,
    tasks::apply_cgroup_event,
};
use cgwatch_fuzz::check_identity;
use libfuzzer_sys::fuzz_target;

const SELECTIONS: [Selection; 3] = [Selection::All, Selection::Containers, Selection::ContainersAndServices];

fn check_path(path: &str) {
    assert!(!path.is_empty() && path.len() <= MAX_PATH_LABEL, "path of {} bytes", path.len());
    assert!(!path.contains('\0'), "NUL in {path:?}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&config, records)) = data.split_first() else { return };
    let max_shown = usize::from(config >> 4);
    let registry = Registry::with_selection(max_shown, Duration::from_secs(60), SELECTIONS[usize::from(config & 3) % 3]);
    let start = Instant::now();
    let size = size_of::<CgroupEvent>();
    let mut applied = 0;
    for (i, record) in records.chunks(size).enumerate() {
        let now = start + Duration::from_millis(i as u64);
        let wants_names = apply_cgroup_event(&registry, record, now);
        if record.len() < size {
            assert!(!wants_names);
            continue;
        }
        applied += 1;
        // SAFETY: `record` holds a whole CgroupEvent; read unaligned, as the agent does.
        let ev: CgroupEvent = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
        let path = registry.path_of(ev.id);
        if let Some(p) = &path {
            check_path(p);
        }
        if ev.kind == cgroup_event::MKDIR {
            let len = (ev.path_len as usize).min(ev.path.len());
            if ev.path[..len].split(|&b| b == 0).next().is_some_and(|p| !p.is_empty()) {
                assert!(path.is_some(), "a named mkdir is registered");
            }
        }
        let series = registry.event_series(ev.id);
        check_identity(&series.identity);
        match &series.label {
            Label::Path(p) => check_path(p),
            Label::Unknown(id) => assert_eq!(*id, ev.id),
            Label::Overflow | Label::Unselected => {}
        }
        if wants_names {
            // (A folded series, over --max-cgroups or unselected, carries no identity.)
            assert!(registry.needs_names().iter().any(|(id, i)| *id == ev.id && i.needs_names()), "cgroup {}", ev.id);
        }
    }
    assert!(registry.len() <= applied);
    assert!(registry.shown_live().len() <= max_shown);
    for c in registry.shown_live() {
        check_path(&c.path);
        check_identity(&c.identity);
    }
    for (_, identity) in registry.needs_names() {
        check_identity(&identity);
    }
    for (_, successor) in registry.purge_expired(start + Duration::from_secs(3600)) {
        assert!(successor.is_none_or(|s| registry.path_of(s).is_some()));
    }
});
