//! cgroups: where the hierarchies are and what their files say (`layout`), and which cgroups the
//! agent knows (`registry`) and how their series are labelled (`series`).

pub mod layout;
pub mod registry;
pub mod series;

pub use layout::{CgroupError, Layout, MEMORY_EVENTS, PRESSURE_RESOURCES, Resources, ScannedCgroup, read_pressure};
pub use registry::{Registry, ShownCgroup};
pub use series::{Label, MAX_PATH_LABEL, Series, sanitize_path};
