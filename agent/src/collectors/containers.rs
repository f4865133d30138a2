//! `cgwatch_container_info{container_id,container,pod,namespace,runtime,image}` and
//! `cgwatch_containers{runtime}`, from the registry's live container cgroups.

use std::{collections::BTreeMap, sync::Arc};

use super::{Collector, Labels, gauge_family};
use crate::{catalog, cgroups::Registry, encoding::Encoder};

#[derive(Debug)]
pub struct ContainerCollector {
    pub registry: Arc<Registry>,
}

impl Collector for ContainerCollector {
    fn encode(&self, encoder: &mut Encoder<'_>) {
        let mut info: BTreeMap<Labels, i64> = BTreeMap::new();
        let mut count: BTreeMap<Labels, i64> = BTreeMap::new();
        for c in self.registry.live_containers() {
            let mut labels: Labels = c.labels().into_iter().map(|(k, v)| (k, v.to_string())).collect();
            labels.push(("image", c.image.to_string()));
            info.insert(labels, 1);
            *count.entry(vec![("runtime", c.runtime.as_str().to_string())]).or_default() += 1;
        }
        gauge_family(encoder, &catalog::CONTAINER_INFO, &info);
        gauge_family(encoder, &catalog::CONTAINERS, &count);
    }
}
