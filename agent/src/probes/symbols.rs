//! Kernel symbol resolution for kprobes: a static function the compiler cloned (`name.isra.0`,
//! `name.constprop.0`) has only the clone's name in `/proc/kallsyms`, and a kprobe by the plain
//! name finds nothing.

use std::{
    fs::File,
    io::{BufRead as _, BufReader},
    path::Path,
};

/// Clone suffixes that keep the function's whole body and return value (`.part.N` is a piece of
/// it, `.cold` its unlikely paths: neither is the function).
const CLONE_SUFFIXES: [&str; 2] = [".isra.", ".constprop."];

/// The one compiler clone of `function` in a kallsyms listing: `Ok(None)` when the function has
/// its own name there (or no clone), an error when several clones make the choice ambiguous.
pub fn clone_of(kallsyms: &Path, function: &str) -> Result<Option<String>, String> {
    let file = File::open(kallsyms).map_err(|e| format!("{}: {e}", kallsyms.display()))?;
    let mut clones = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| format!("{}: {e}", kallsyms.display()))?;
        // "ffffffff8148a510 t seccomp_do_user_notification.isra.0" (and "\t[module]" after it).
        let Some(name) = line.split_whitespace().nth(2) else { continue };
        if name == function {
            return Ok(None);
        }
        if let Some(rest) = name.strip_prefix(function)
            && CLONE_SUFFIXES.iter().any(|s| rest.starts_with(s))
            && !rest.contains(".part.")
            && !rest.contains(".cold")
            && !clones.iter().any(|c| c == name)
        {
            clones.push(name.to_string());
        }
    }
    match clones.len() {
        0 | 1 => Ok(clones.pop()),
        _ => Err(format!("{function} has several compiler clones ({}): none is the whole function", clones.join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_is_found_and_an_own_name_or_two_clones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let listing = dir.path().join("kallsyms");
        std::fs::write(
            &listing,
            "ffffffff8148a500 t __pfx_seccomp_do_user_notification.isra.0\n\
             ffffffff8148a510 t seccomp_do_user_notification.isra.0\n\
             ffffffff8148aab0 t __seccomp_filter\n\
             ffffffff81480000 t __seccomp_filter_orphan\n\
             ffffffff81490000 t twice.isra.0\n\
             ffffffff81490100 t twice.constprop.0\n\
             ffffffff81490200 t piece.part.0\n\
             ffffffff81490300 t mod_fn.isra.0\t[some_module]\n",
        )
        .unwrap();
        assert_eq!(clone_of(&listing, "seccomp_do_user_notification"), Ok(Some("seccomp_do_user_notification.isra.0".into())));
        assert_eq!(clone_of(&listing, "__seccomp_filter"), Ok(None));
        assert_eq!(clone_of(&listing, "piece"), Ok(None));
        assert_eq!(clone_of(&listing, "mod_fn"), Ok(Some("mod_fn.isra.0".into())));
        assert!(clone_of(&listing, "twice").unwrap_err().contains("twice.isra.0, twice.constprop.0"));
        assert!(clone_of(&dir.path().join("missing"), "x").is_err());
    }

    /// The running kernel's own listing: `__seccomp_filter` by its name, and the USER_NOTIF
    /// function by its name or its one clone (6.18 here: `.isra.0`).
    #[test]
    fn the_running_kernel_resolves() {
        let kallsyms = Path::new("/proc/kallsyms");
        let Ok(found) = clone_of(kallsyms, "__seccomp_filter") else { return };
        assert_eq!(found, None);
        let listing = std::fs::read_to_string(kallsyms).unwrap();
        let names: Vec<&str> = listing.lines().filter_map(|l| l.split_whitespace().nth(2)).collect();
        let f = "seccomp_do_user_notification";
        match clone_of(kallsyms, f).unwrap() {
            None => assert!(names.contains(&f) || !names.iter().any(|n| n.starts_with(f))),
            Some(clone) => assert!(names.contains(&clone.as_str()) && !names.contains(&f), "{clone}"),
        }
    }
}
