//! The cgroup file parsers of `cgroups::layout` fed arbitrary text, as each cgroup file is:
//! cpu.stat, memory.stat, memory.events, cgroup.events, the *.pressure files and the
//! single-number files (v2 memory.current / memory.max, v1 memory.usage_in_bytes,
//! memory.limit_in_bytes, cpuacct.usage, memory.oom_control, cpu.stat).
#![no_main]

use cgwatch::cgroups::{
    MEMORY_EVENTS,
    layout::{keyed, parse_memory_events, parse_populated, parse_pressure, parse_u64, parse_v1_limit},
};
use libfuzzer_sys::fuzz_target;

/// Every key the agent reads with `keyed`, by file.
const KEYS: [&str; 6] = ["usage_usec", "throttled_usec", "inactive_file", "total_inactive_file", "oom_kill", "throttled_time"];

fuzz_target!(|data: &[u8]| {
    // The agent reads these files with read_to_string: text that is not UTF-8 is a read error.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let lines = text.lines().count();

    let pressure = parse_pressure(text);
    assert!(pressure.len() <= lines);
    for (kind, seconds) in &pressure {
        assert!(matches!(*kind, "some" | "full"), "{kind}");
        assert!(seconds.is_finite() && *seconds >= 0.0, "{seconds}");
    }

    let events = parse_memory_events(text);
    let mut at = 0;
    for (event, _) in &events {
        // A fixed set, each at most once, in the catalog's order: bounded label cardinality.
        let i = MEMORY_EVENTS.iter().position(|e| e == event).expect("an exported memory event");
        assert!(i >= at, "{events:?}");
        at = i + 1;
    }

    for key in KEYS {
        if let Some(v) = keyed(text, key) {
            assert!(text.lines().any(|l| l.starts_with(&format!("{key} "))), "{key}={v}");
            // What the readers make of it (usec or nsec to seconds) stays finite.
            assert!((v as f64 / 1e6).is_finite() && (v as f64 / 1e9).is_finite());
        }
    }

    let value = parse_u64(text);
    if let Some(limit) = parse_v1_limit(text) {
        assert_eq!(Some(limit), value);
        assert!(limit < 1 << 62, "v1 'unlimited' is no limit");
    }
    if parse_populated(text) {
        assert!(text.contains("populated 1"));
    }
});
