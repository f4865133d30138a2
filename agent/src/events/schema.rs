//! The event stream's schema: every field, its JSON type and the event types that carry it.
//! The encoder writes only these fields, the integration tests check every line against this
//! table, and `docs/events.md` is generated from it.

use std::fmt::Write as _;

/// The values of the `type` field.
pub const TYPES: [&str; 5] = ["seccomp", "oom_kill", "exit", "container_start", "exec_session"];

/// A field's JSON type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Json {
    String,
    /// A whole number.
    Integer,
    /// A number, possibly fractional.
    Number,
    /// true or false.
    Boolean,
}

impl Json {
    pub fn as_str(self) -> &'static str {
        match self {
            Json::String => "string",
            Json::Integer => "integer",
            Json::Number => "number",
            Json::Boolean => "boolean",
        }
    }
}

/// One field of the stream.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub json: Json,
    /// The event types carrying it (present in every record of these types, absent from others).
    pub types: &'static [&'static str],
    /// `null` is allowed: the value is not known (a kernel that does not tell, a name not found).
    pub nullable: bool,
    pub meaning: &'static str,
}

const ALL: &[&str] = &TYPES;
const SECCOMP: &[&str] = &["seccomp"];
const OOM: &[&str] = &["oom_kill"];
const EXIT: &[&str] = &["exit"];
const START: &[&str] = &["container_start"];
const EXEC: &[&str] = &["exec_session"];

const fn field(name: &'static str, json: Json, types: &'static [&'static str], nullable: bool, meaning: &'static str) -> Field {
    Field { name, json, types, nullable, meaning }
}

/// Every field, in the order records carry them.
pub const FIELDS: &[Field] = &[
    field("time", Json::String, ALL, false, "When the kernel saw it: RFC 3339, UTC, nanoseconds."),
    field("type", Json::String, ALL, false, "seccomp, oom_kill, exit, container_start or exec_session."),
    field("cgroup", Json::String, ALL, false, "The cgroup v2 path, as the `cgroup` label of the metrics says it."),
    field("container_id", Json::String, ALL, true, "Container identity, as the metrics' labels say it; null where the cgroup is not a container's or the name is not known."),
    field("container", Json::String, ALL, true, "Container name (for a systemd service: the unit)."),
    field("pod", Json::String, ALL, true, "Kubernetes pod name."),
    field("namespace", Json::String, ALL, true, "Kubernetes namespace."),
    field("runtime", Json::String, ALL, true, "Container runtime (containerd, crio, docker, podman, systemd)."),
    field("image", Json::String, ALL, true, "Container image, where the runtime's state names it."),
    field("pid", Json::Integer, ALL, false, "Process id (thread group id) in the host's PID namespace."),
    field("tid", Json::Integer, ALL, false, "Thread id in the host's PID namespace."),
    field("comm", Json::String, ALL, false, "The thread's command name (at most 15 bytes)."),
    field("parent_comm", Json::String, ALL, true, "The parent process's command name."),
    field("suppressed", Json::Integer, ALL, false, "Events of this cgroup and type that the rate limit suppressed since the previous one written (counted in cgwatch_events_suppressed_total)."),
    field("syscall", Json::String, SECCOMP, false, "The syscall's name (as the metrics' syscall label: syscall_N when unknown)."),
    field("syscall_nr", Json::Integer, SECCOMP, true, "The syscall's number; null when the probe could not read it."),
    field("action", Json::String, SECCOMP, false, "The filter's verdict: errno, trap, kill_process, kill_thread, log, trace (a TRACE that stopped at a tracer) or user_notif (a USER_NOTIF the syscall did not run after)."),
    field("errno", Json::Integer, SECCOMP, true, "The errno an errno verdict returned; null for other verdicts and where the probe sees the verdict but not the value (the fexit / kprobe fast path)."),
    field("rss_anon_bytes", Json::Integer, OOM, true, "The victim's anonymous resident memory when it was chosen; null where the kernel does not pass the victim (kernels before 6.8: the kill is seen at its exit, its memory already freed)."),
    field("rss_file_bytes", Json::Integer, OOM, true, "The victim's file-backed resident memory; null as for rss_anon_bytes."),
    field("rss_shmem_bytes", Json::Integer, OOM, true, "The victim's shared-memory resident memory; null as for rss_anon_bytes."),
    field("limit", Json::String, OOM, false, "Which limit fired: own (the victim's cgroup), ancestor (a parent's, named by limit_cgroup), host (a global OOM) or unknown."),
    field("limit_cgroup", Json::String, OOM, true, "The memory cgroup whose limit fired; null for a global OOM or when not known."),
    field("reason", Json::String, EXIT, false, "success, error (non-zero exit code), signal, oom_kill or seccomp_kill."),
    field("exit_code", Json::Integer, EXIT, true, "The exit code; null when a signal ended it."),
    field("signal", Json::String, EXIT, true, "The signal that ended it (SIGSEGV, SIGKILL...); null when it exited by itself."),
    field("scope", Json::String, EXIT, false, "container for a container's exit (of the task that started it, or of its PID namespace's init when the start was not seen: docs/lifecycle.md), else process. Every container exit is written; a process exit only when its reason is not success."),
    field("lifetime_seconds", Json::Number, EXIT, true, "How long the process (its thread group leader) ran."),
    field("start_latency_seconds", Json::Number, START, false, "From the container cgroup's creation to the entrypoint's exec, as cgwatch_container_start_duration_seconds observes it (docs/lifecycle.md)."),
    field("path", Json::String, EXEC, true, "The file exec'd, as the exec asked for it (the kernel's linux_binprm.filename: not resolved, a script's own path, /dev/fd/N for fexecve), at most 255 bytes (invalid UTF-8 replaced); null when the probe could not read it."),
    field("path_truncated", Json::Boolean, EXEC, false, "true when path is cut at 255 bytes, the exec'd path being longer."),
];

/// The field named `name`.
pub fn field_named(name: &str) -> Option<&'static Field> {
    FIELDS.iter().find(|f| f.name == name)
}

/// The fields table of `docs/events.md`.
pub fn markdown_table() -> String {
    let mut out = String::from("| field | JSON type | in | meaning |\n| --- | --- | --- | --- |\n");
    for f in FIELDS {
        let types = if f.types.len() == TYPES.len() { "all".to_string() } else { f.types.join(", ") };
        let json = if f.nullable { format!("{} or null", f.json.as_str()) } else { f.json.as_str().to_string() };
        let _ = writeln!(out, "| `{}` | {json} | {types} | {} |", f.name, f.meaning);
    }
    out
}

/// Checks one record against the schema: every field known and of its type, every field of its
/// type present. `Err` says what is wrong.
pub fn check(record: &serde_json::Value) -> Result<(), String> {
    let obj = record.as_object().ok_or("not an object")?;
    let kind = obj.get("type").and_then(|t| t.as_str()).ok_or("no type")?;
    if !TYPES.contains(&kind) {
        return Err(format!("unknown type {kind}"));
    }
    for (name, value) in obj {
        let f = field_named(name).ok_or_else(|| format!("unknown field {name}"))?;
        if !f.types.contains(&kind) {
            return Err(format!("field {name} in a {kind} event"));
        }
        let ok = match (value, f.json) {
            (serde_json::Value::Null, _) => f.nullable,
            (serde_json::Value::String(_), Json::String) => true,
            (serde_json::Value::Number(n), Json::Integer) => n.is_u64() || n.is_i64(),
            (serde_json::Value::Number(_), Json::Number) => true,
            (serde_json::Value::Bool(_), Json::Boolean) => true,
            _ => false,
        };
        if !ok {
            return Err(format!("field {name} is {value}, not {}", f.json.as_str()));
        }
    }
    for f in FIELDS.iter().filter(|f| f.types.contains(&kind)) {
        if !obj.contains_key(f.name) {
            return Err(format!("{kind} event without {}", f.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_type_has_the_common_fields() {
        let mut seen = std::collections::HashSet::new();
        for f in FIELDS {
            assert!(seen.insert(f.name), "{} twice", f.name);
            assert!(!f.types.is_empty());
            assert!(f.types.iter().all(|t| TYPES.contains(t)), "{}", f.name);
        }
    }

    #[test]
    fn check_refuses_what_the_schema_does_not_allow() {
        let ok = serde_json::json!({
            "time": "2026-12-02T08:00:00.000000001Z", "type": "exit", "cgroup": "/a",
            "container_id": null, "container": null, "pod": null, "namespace": null, "runtime": null,
            "image": null, "pid": 1, "tid": 1, "comm": "x", "parent_comm": null, "suppressed": 0,
            "reason": "signal", "exit_code": null, "signal": "SIGSEGV", "scope": "process",
            "lifetime_seconds": 0.5
        });
        assert_eq!(check(&ok), Ok(()));
        let mut extra = ok.clone();
        extra["syscall"] = "keyctl".into();
        assert!(check(&extra).is_err(), "a seccomp field in an exit event");
        let mut missing = ok.clone();
        missing.as_object_mut().unwrap().remove("scope");
        assert!(check(&missing).is_err());
        let mut null = ok.clone();
        null["pid"] = serde_json::Value::Null;
        assert!(check(&null).is_err(), "pid is never null");
        let mut wrong = ok.clone();
        wrong["exit_code"] = "1".into();
        assert!(check(&wrong).is_err());
        // An exec session: its path and a boolean, never null, saying whether it is cut.
        let mut exec = ok;
        for f in ["reason", "exit_code", "signal", "scope", "lifetime_seconds"] {
            exec.as_object_mut().unwrap().remove(f);
        }
        exec["type"] = "exec_session".into();
        exec["path"] = "/bin/sh".into();
        exec["path_truncated"] = false.into();
        assert_eq!(check(&exec), Ok(()));
        for bad in [serde_json::Value::Null, "false".into(), 0.into()] {
            let mut wrong = exec.clone();
            wrong["path_truncated"] = bad;
            assert!(check(&wrong).is_err(), "{wrong}");
        }
    }

    /// The example lines of docs/events.md are lines the schema allows, one of each type at least.
    #[test]
    fn the_examples_in_docs_events_md_follow_the_schema() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/events.md");
        let text = std::fs::read_to_string(path).unwrap();
        let mut types = std::collections::BTreeSet::new();
        for line in text.lines().filter(|l| l.starts_with("{\"time\"")) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert_eq!(check(&v), Ok(()), "{line}");
            types.insert(v["type"].as_str().unwrap().to_string());
        }
        assert!(types.len() >= 3 && types.contains("container_start") && types.contains("exec_session"), "{types:?}");
    }

    /// `CGWATCH_BLESS=1 cargo test -p cgwatch --lib events` rewrites docs/events.md's table.
    #[test]
    fn docs_events_md_is_generated_from_the_schema() {
        crate::catalog::assert_generated_section(
            "docs/events.md",
            "cgwatch::events::schema::markdown_table",
            &markdown_table(),
            "CGWATCH_BLESS=1 cargo test -p cgwatch --lib events",
        );
    }
}
