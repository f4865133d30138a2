//! cgroups: where the hierarchies are and what their files say (`layout`), and which cgroups the
//! agent knows and how their series are labelled (`registry`).

pub mod layout;
pub mod registry;

pub use layout::{CgroupError, Layout, MEMORY_EVENTS, PRESSURE_RESOURCES, Resources, ScannedCgroup, read_pressure};
pub use registry::{Label, MAX_PATH_LABEL, Registry, Series, ShownCgroup, sanitize_path};
