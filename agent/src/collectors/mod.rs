//! Prometheus collectors. Each builds const metrics at scrape time from kernel maps, the cgroup
//! registry snapshot or cheap files, so the series of a cgroup disappear once it leaves the
//! retain window. Slow work lives in the tasks of `crate::tasks`. Names, types and help texts
//! come from `crate::catalog`.

pub mod agent;
pub mod cgroup_resources;
pub mod containers;
pub mod events;
pub mod exits;
pub mod host;
pub mod oom;
pub mod seccomp;

use std::{collections::BTreeMap, fmt};

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

use crate::catalog::{Kind, Metric};

/// Label names and values of one series.
pub type Labels = Vec<(&'static str, String)>;

/// Starts the family of a catalog metric.
pub fn descriptor<'e>(encoder: &'e mut DescriptorEncoder, m: &'e Metric) -> Result<MetricEncoder<'e>, fmt::Error> {
    encoder.encode_descriptor(m.name, m.help, None, m.kind.metric_type())
}

/// Encodes one family of const metrics, one per label set.
fn family<N: Copy, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    m: &Metric,
    series: &BTreeMap<Labels, N>,
    metric: impl Fn(N) -> M,
) -> fmt::Result {
    let mut family = descriptor(encoder, m)?;
    for (labels, value) in series {
        metric(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// Encodes one counter family.
pub fn counter_family<N>(encoder: &mut DescriptorEncoder, m: &Metric, series: &BTreeMap<Labels, N>) -> fmt::Result
where
    N: Copy,
    ConstCounter<N>: EncodeMetric,
{
    debug_assert_eq!(m.kind, Kind::Counter, "{}", m.name);
    family(encoder, m, series, ConstCounter::new)
}

/// Encodes one gauge family.
pub fn gauge_family<N>(encoder: &mut DescriptorEncoder, m: &Metric, series: &BTreeMap<Labels, N>) -> fmt::Result
where
    N: Copy,
    ConstGauge<N>: EncodeMetric,
{
    debug_assert_eq!(m.kind, Kind::Gauge, "{}", m.name);
    family(encoder, m, series, ConstGauge::new)
}

/// Encodes a gauge with no labels.
pub fn single_gauge<N>(encoder: &mut DescriptorEncoder, m: &Metric, value: N) -> fmt::Result
where
    ConstGauge<N>: EncodeMetric,
{
    debug_assert_eq!(m.kind, Kind::Gauge, "{}", m.name);
    ConstGauge::new(value).encode(descriptor(encoder, m)?)
}
