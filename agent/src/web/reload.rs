//! The web config in force, and its reloads: when the file or a file it names changes (polled
//! every second, applied once two polls agree, so that a file caught mid-write is not taken)
//! and on SIGHUP. A valid new config applies to new connections (TLS) and to every request
//! from then on (basic auth, headers); an invalid one is logged and the old one stays.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use log::{error, info};

use super::config::{self, Sources, WebConfigError, WebSecurity};
use crate::signals::Hangups;

/// How often the web config file and the files it names are read for changes.
pub const POLL_EVERY: Duration = Duration::from_secs(1);

/// The web config in force.
#[derive(Debug, Default)]
pub struct Live {
    current: RwLock<Arc<WebSecurity>>,
}

impl Live {
    pub fn current(&self) -> Arc<WebSecurity> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set(&self, security: WebSecurity) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(security);
    }
}

/// Loads the web config at start-up (an error stops the agent) and, when there is a file,
/// watches it and reloads on `hangups`. Without a file: plain HTTP, no authentication.
pub fn start(path: Option<&Path>, hangups: Hangups) -> Result<Arc<Live>, WebConfigError> {
    let live = Arc::new(Live::default());
    let Some(path) = path else {
        return Ok(live);
    };
    let attempt = config::load(path);
    let security = attempt.result?;
    info!("web config {}: {}", path.display(), security.describe());
    live.set(security);
    tokio::spawn(watch(live.clone(), path.to_path_buf(), attempt.sources, hangups));
    Ok(live)
}

async fn watch(live: Arc<Live>, path: PathBuf, mut sources: Sources, mut hangups: Hangups) {
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hangups_open = true;
    // A change seen once: applied when the next poll sees the same.
    let mut pending: Option<u64> = None;
    loop {
        let hangup = tokio::select! {
            _ = tick.tick() => false,
            changed = hangups.changed(), if hangups_open => {
                hangups_open = changed.is_ok();
                hangups_open
            }
        };
        if !hangup {
            let watched = sources.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || watched.fingerprint_now()).await else { continue };
            if now == sources.fingerprint {
                pending = None;
                continue;
            }
            if pending != Some(now) {
                pending = Some(now);
                continue;
            }
        }
        pending = None;
        let p = path.clone();
        let Ok(attempt) = tokio::task::spawn_blocking(move || config::load(&p)).await else { continue };
        let why = if hangup { "SIGHUP" } else { "changed" };
        match attempt.result {
            Ok(security) => {
                info!("web config {} reloaded ({why}): {}", path.display(), security.describe());
                live.set(security);
            }
            Err(e) => error!("{e}; not applied ({why}): the previous web config stays in force"),
        }
        sources = attempt.sources;
    }
}
