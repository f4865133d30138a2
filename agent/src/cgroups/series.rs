//! The labels of a cgroup's series: its path (bounded, valid UTF-8) or a fold, its container
//! identity, and both rendered once for the encoder.

use std::sync::Arc;

use crate::{containers::Identity, encoding::render_labels};

/// Longest cgroup path exported as a label value; longer ones are cut at a char boundary.
pub const MAX_PATH_LABEL: usize = 1024;

/// Makes an untrusted cgroup path safe as a label value: valid UTF-8, bounded length. The
/// exposition encoder escapes quotes, backslashes and newlines.
pub fn sanitize_path(raw: &[u8]) -> Arc<str> {
    let s = String::from_utf8_lossy(raw);
    let s = if s.is_empty() { "/" } else { &s };
    if s.len() <= MAX_PATH_LABEL {
        return Arc::from(s);
    }
    let mut end = MAX_PATH_LABEL;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Arc::from(&s[..end])
}

/// What a per-cgroup series is labelled with.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Label {
    Path(Arc<str>),
    /// Over `--max-cgroups`: summed into one series so that no count is lost.
    Overflow,
    /// Not chosen by `--cgroups`: summed into one series so that no count is lost.
    Unselected,
    /// An id the agent never saw created (its mkdir event was lost and it is gone).
    Unknown(u64),
}

impl Label {
    pub fn as_value(&self) -> String {
        match self {
            Label::Path(p) => p.to_string(),
            Label::Overflow => "(overflow)".to_string(),
            Label::Unselected => "(other)".to_string(),
            Label::Unknown(id) => format!("(unknown id {id})"),
        }
    }
}

/// The labels of one cgroup's series: its path (or a fold) and its container identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    pub label: Label,
    pub identity: Arc<Identity>,
    /// `labels()` rendered for the encoder (`crate::encoding::render_labels`): the registry
    /// keeps it with the cgroup, so that thousands of series per scrape do not escape it again.
    pub rendered: Arc<str>,
}

impl Series {
    pub fn new(label: Label, identity: Arc<Identity>) -> Self {
        let rendered = render(&label, &identity);
        Series { label, identity, rendered }
    }

    pub fn folded(label: Label) -> Self {
        Self::new(label, Arc::default())
    }

    /// The names of this container are being looked up: its series wait for them (the
    /// counters are kept in the kernel meanwhile, nothing is lost).
    pub fn pending(&self) -> bool {
        self.identity.pending()
    }

    /// `cgroup`, then the known ones of `container_id`, `container`, `pod`, `namespace`,
    /// `runtime` (`Identity::known_labels`).
    pub fn labels(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::with_capacity(8);
        out.push(("cgroup", self.label.as_value()));
        out.extend(self.identity.known_labels().map(|(k, v)| (k, v.to_string())));
        out
    }
}

/// `cgroup` and the known identity labels of a cgroup, rendered.
pub fn render(label: &Label, identity: &Identity) -> Arc<str> {
    let cgroup = match label {
        Label::Path(p) => std::borrow::Cow::Borrowed(&**p),
        other => std::borrow::Cow::Owned(other.as_value()),
    };
    render_labels(std::iter::once(("cgroup", &*cgroup)).chain(identity.known_labels()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_paths_are_bounded_and_valid_utf8() {
        let p = sanitize_path(b"/a\xff\"b\nc");
        assert_eq!(&*p, "/a\u{fffd}\"b\nc");
        let long = "é".repeat(2000);
        let p = sanitize_path(long.as_bytes());
        assert!(p.len() <= MAX_PATH_LABEL && p.chars().all(|c| c == 'é'));
    }

    #[test]
    fn rendered_labels_are_the_labels_escaped() {
        let id = Identity { container_id: "abc".into(), container: "web\"1".into(), ..Identity::default() };
        let s = Series::new(Label::Path("/x\ny".into()), Arc::new(id));
        assert_eq!(&*s.rendered, "cgroup=\"/x\\ny\",container_id=\"abc\",container=\"web\\\"1\"");
        assert_eq!(&*Series::folded(Label::Overflow).rendered, "cgroup=\"(overflow)\"");
    }
}
