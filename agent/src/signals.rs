//! SIGHUP, received in one place and broadcast: each part that reloads something subscribes.

use log::debug;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};

/// Hangups received so far; `changed()` on a receiver wakes on each new one.
pub type Hangups = watch::Receiver<u64>;

/// Takes over SIGHUP (its default action ends the process) and broadcasts every one received.
/// Subscribers clone the receiver: the web config reloads on it today, and anything else that
/// rereads its files can listen the same way. Must be called inside the runtime.
pub fn hangups() -> std::io::Result<Hangups> {
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = watch::channel(0u64);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            debug!("SIGHUP received");
            tx.send_modify(|n| *n += 1);
        }
    });
    Ok(rx)
}
