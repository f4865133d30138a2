//! The agent's JSON event stream, read back by tests: every line parsed and checked against the
//! schema the agent documents (`cgwatch::events::schema`).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::Value;

/// An event file the agent writes (`--events PATH`), in a directory removed on drop.
pub struct EventLog {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Default for EventLog {
    fn default() -> Self {
        let dir = tempfile::tempdir().unwrap();
        EventLog { path: dir.path().join("events.json"), _dir: dir }
    }
}

impl EventLog {
    /// The flags that make an agent write here.
    pub fn flag(&self) -> [&str; 2] {
        ["--events", self.path.to_str().unwrap()]
    }

    /// Every line so far, parsed; panics on a line that is not JSON or breaks the schema.
    pub fn read(&self) -> Vec<Value> {
        read(&self.path)
    }

    /// The events of `cgroup` (its path as the metrics label it).
    pub fn of(&self, cgroup: &str) -> Vec<Value> {
        self.read().into_iter().filter(|e| e["cgroup"] == cgroup).collect()
    }

    /// Reads until `done` holds for the events of `cgroup` (or `timeout`); returns them.
    pub fn wait_for(&self, cgroup: &str, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let events = self.of(cgroup);
            if done(&events) || Instant::now() >= deadline {
                return events;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The lines of an event file, parsed and checked against the schema.
pub fn read(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // A line still being written has no newline yet.
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    complete
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if let Err(e) = cgwatch::events::schema::check(&v) {
                panic!("breaks the schema ({e}): {line}");
            }
            v
        })
        .collect()
}

/// The events of one type.
pub fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}
