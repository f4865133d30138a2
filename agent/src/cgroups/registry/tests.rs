//! Tests of the registry: admission under --max-cgroups, the retain window, names, successors.

use super::*;

fn scanned(id: u64, path: &str, populated: bool) -> ScannedCgroup {
    ScannedCgroup { id, path: path.into(), populated }
}

#[test]
fn max_cgroups_prefers_event_cgroups_and_folds_overflow() {
    let now = Instant::now();
    let r = Registry::new(2, Duration::from_secs(60));
    r.apply_scan(
        vec![scanned(1, "/", true), scanned(2, "/a", true), scanned(3, "/b", false), scanned(4, "/c", false)],
        now,
    );
    assert_eq!(r.shown_live().len(), 2);
    // An event cgroup evicts a merely populated one.
    assert_eq!(r.event_label(3), Label::Path("/b".into()));
    assert_eq!(r.event_label(4), Label::Path("/c".into()));
    // Now both shown cgroups have events: a third one is folded, never dropped.
    assert_eq!(r.event_label(2), Label::Overflow);
    // An id nobody named is folded too when there is no room.
    assert_eq!(r.event_label(99), Label::Overflow);
    assert_eq!(r.not_shown(), 2, "/ and /a are live but not shown");
}

#[test]
fn removed_cgroups_are_kept_for_the_retain_window() {
    let t0 = Instant::now();
    let r = Registry::new(10, Duration::from_secs(60));
    r.apply_scan(vec![scanned(1, "/", true), scanned(2, "/x", true)], t0);
    assert_eq!(r.event_label(2), Label::Path("/x".into()));
    r.cgroup_removed(2, b"", t0);
    assert_eq!(r.event_label(2), Label::Path("/x".into()), "still labelled while retained");
    assert!(r.purge_expired(t0 + Duration::from_secs(59)).is_empty());
    assert_eq!(r.purge_expired(t0 + Duration::from_secs(60)), vec![(2, None)]);
}

/// Counts of an id the registry never saw (its cgroup went before this agent started, with
/// pinned counters) are shown as "(unknown id N)" for one retain window, then purged.
#[test]
fn unknown_ids_are_shown_for_one_retain_window_then_purged() {
    let r = Registry::new(10, Duration::from_millis(50));
    assert_eq!(r.event_label(42), Label::Path("(unknown id 42)".into()));
    assert!(r.purge_expired(Instant::now()).is_empty());
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(r.purge_expired(Instant::now()), vec![(42, None)]);
    // An rmdir event names a cgroup made and removed while the agent was away.
    r.cgroup_removed(43, b"/job/while-down", Instant::now());
    assert_eq!(r.event_label(43), Label::Path("/job/while-down".into()));
}

#[test]
fn a_scan_racing_with_mkdir_does_not_remove_the_new_cgroup() {
    let t0 = Instant::now();
    let r = Registry::new(10, Duration::from_secs(60));
    r.apply_scan(vec![scanned(1, "/", true)], t0);
    let scan_started = t0 + Duration::from_millis(10);
    // The mkdir event arrives while the walk (which missed the new directory) runs.
    r.cgroup_created(5, b"/new", scan_started + Duration::from_millis(1));
    r.apply_scan(vec![scanned(1, "/", true)], scan_started);
    assert_eq!(r.event_label(5), Label::Path("/new".into()));
    assert_eq!(r.shown_live().iter().filter(|c| &*c.path == "/new").count(), 1);
    // A later walk that still does not find it does remove it.
    r.apply_scan(vec![scanned(1, "/", true)], scan_started + Duration::from_secs(1));
    assert!(r.shown_live().iter().all(|c| &*c.path != "/new"));
}

#[test]
fn container_series_wait_for_the_first_name_lookup() {
    let id = "ab".repeat(32);
    let t0 = Instant::now();
    let r = Registry::new(10, Duration::from_secs(60));
    assert!(r.cgroup_created(3, format!("/docker/{id}").as_bytes(), t0), "a container wakes the resolver");
    assert!(!r.cgroup_created(4, b"/plain", t0));
    assert!(r.event_series(3).pending());
    assert!(!r.event_series(4).pending());
    // Removed before any lookup: still looked up once, so its counts are not held forever.
    r.cgroup_removed(3, b"", t0);
    let todo = r.needs_names();
    assert_eq!(todo.len(), 1);
    let mut named = (*todo[0].1).clone();
    named.attempted = true;
    r.set_identity(3, named);
    assert!(!r.event_series(3).pending());
    assert!(r.needs_names().is_empty(), "a removed container is not retried");
    assert_eq!(r.event_series(3).labels()[1], ("container_id", id));
    assert_eq!(r.event_series(4).labels(), vec![("cgroup", "/plain".to_string())], "unknown identity: no empty labels");
}

/// The event collectors' shortcut says what `event_series` says: the rendered labels,
/// nothing while a container's names are looked up, folds over --max-cgroups.
#[test]
fn event_labels_agree_with_event_series() {
    let t0 = Instant::now();
    let r = Registry::new(3, Duration::from_secs(60));
    r.cgroup_created(1, b"/a", t0);
    r.cgroup_created(2, format!("/docker/{}", "cd".repeat(32)).as_bytes(), t0);
    for id in [3, 4, 5] {
        r.cgroup_created(id, format!("/x{id}").as_bytes(), t0);
    }
    let ids = [1, 2, 3, 4, 5, 1];
    let labels = r.event_labels_many(ids);
    let series = r.event_series_many(ids);
    for (l, s) in labels.iter().zip(&series) {
        assert_eq!(l.as_deref(), (!s.pending()).then_some(&*s.rendered), "{s:?}");
    }
    assert_eq!(labels[0].as_deref(), Some("cgroup=\"/a\""));
    assert_eq!(labels[1], None, "a container waits for its names");
    assert_eq!(labels[4].as_deref(), Some("cgroup=\"(overflow)\""));
}

#[test]
fn mkdir_events_name_short_lived_cgroups() {
    let t0 = Instant::now();
    let r = Registry::new(10, Duration::from_secs(60));
    r.cgroup_created(7, b"/job/short", t0);
    r.cgroup_removed(7, b"", t0);
    assert_eq!(r.event_label(7), Label::Path("/job/short".into()));
    // A later scan that no longer finds it keeps the first removal time.
    r.apply_scan(vec![scanned(1, "/", true)], t0 + Duration::from_secs(30));
    assert_eq!(r.purge_expired(t0 + Duration::from_secs(60)), vec![(7, None)]);
}

/// A restarted container's new cgroup at the old one's path is the successor that carries
/// the old counts on; a live holder wins over a removed one.
#[test]
fn an_expired_cgroup_hands_its_path_to_the_cgroup_that_took_it() {
    let t0 = Instant::now();
    let r = Registry::new(10, Duration::from_secs(60));
    for (id, at) in [(1, 0), (2, 10), (3, 20)] {
        r.cgroup_created(id, b"/docker/restarted", t0 + Duration::from_secs(at));
    }
    r.cgroup_created(4, b"/docker/other", t0);
    r.cgroup_removed(1, b"", t0 + Duration::from_secs(5));
    r.cgroup_removed(2, b"", t0 + Duration::from_secs(15));
    r.cgroup_removed(4, b"", t0 + Duration::from_secs(5));
    let mut purged = r.purge_expired(t0 + Duration::from_secs(66));
    purged.sort();
    assert_eq!(purged, vec![(1, Some(3)), (4, None)]);
    // The last one removed still holds the path once no live one does.
    r.cgroup_removed(3, b"", t0 + Duration::from_secs(70));
    r.cgroup_created(5, b"/docker/restarted", t0 + Duration::from_secs(71));
    r.cgroup_removed(5, b"", t0 + Duration::from_secs(72));
    assert_eq!(r.purge_expired(t0 + Duration::from_secs(75)), vec![(2, Some(5))]);
}

/// A cgroup from a mkdir event is watched for its first process for a while; once populated it
/// is shown and handed to the sampler once, and again under its names when they arrive.
#[test]
fn young_cgroups_are_watched_then_shown_and_sampled_once() {
    let t0 = Instant::now();
    let r = Registry::new(10, Duration::from_secs(60));
    r.apply_scan(vec![scanned(1, "/", true), scanned(2, "/old", false)], t0);
    let _ = r.take_unsampled();
    r.cgroup_created(3, b"/new", t0);
    r.cgroup_created(4, b"/newer", t0 + Duration::from_millis(5));
    // Only mkdir-made cgroups, newest first when capped; none once the window has passed.
    let young = |now, max| r.unpopulated_young(now, Duration::from_secs(30), max).into_iter().map(|(id, _)| id).collect::<Vec<_>>();
    assert_eq!(young(t0 + Duration::from_secs(1), 1), vec![4]);
    let mut both = young(t0 + Duration::from_secs(1), 10);
    both.sort();
    assert_eq!(both, vec![3, 4]);
    assert!(young(t0 + Duration::from_secs(31), 10).is_empty());
    // Populated: shown, no longer watched, sampled once.
    r.mark_populated(&[3]);
    assert_eq!(young(t0 + Duration::from_secs(1), 10), vec![4]);
    let new: Vec<u64> = r.take_unsampled().iter().map(|c| c.id).collect();
    assert_eq!(new, vec![3]);
    assert!(r.take_unsampled().is_empty());
    // A container cgroup waits for its first name lookup, then is sampled under its names.
    let path = b"/machine.slice/libpod-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope";
    assert!(r.cgroup_created(5, path, t0), "a container needs names");
    assert!(r.young_unnamed(t0 + Duration::from_secs(1), Duration::from_secs(10)));
    r.mark_populated(&[5]);
    assert!(r.take_unsampled().is_empty(), "held back until a lookup ran");
    let (_, identity) = r.describe(5).unwrap();
    let mut named = (*identity).clone();
    named.attempted = true;
    named.resolved = true;
    named.container = "web".into();
    r.set_identity(5, named);
    let new = r.take_unsampled();
    assert_eq!(new.len(), 1);
    assert!(new[0].rendered.contains("container=\"web\""), "{}", new[0].rendered);
    assert!(!r.young_unnamed(t0 + Duration::from_secs(1), Duration::from_secs(10)));
}
