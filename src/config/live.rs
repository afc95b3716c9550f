//! The config in force, which a reload replaces (see [`crate::reload`]).
//!
//! A `tokio::sync::watch` channel holds it: readers take the current
//! `Arc<Config>` with [`LiveConfig::get`] at the moment they use it, and
//! the few that must act on a change (the health monitor adds and removes
//! service tasks) wait on [`LiveConfig::subscribe`]. Nothing else is told;
//! a collector that reads its section at the start of each round simply
//! sees the new one.

use std::sync::Arc;

use tokio::sync::watch;

use super::Config;

/// The shared, replaceable config.
#[derive(Clone)]
pub struct LiveConfig(Arc<watch::Sender<Arc<Config>>>);

impl LiveConfig {
    pub fn new(config: Config) -> LiveConfig {
        LiveConfig(Arc::new(watch::Sender::new(Arc::new(config))))
    }

    /// The config in force now.
    pub fn get(&self) -> Arc<Config> {
        self.0.borrow().clone()
    }

    /// A receiver that sees every later replacement.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Config>> {
        self.0.subscribe()
    }

    /// Puts `config` in force (the reloader, and nothing else).
    pub fn replace(&self, config: Config) {
        self.0.send_replace(Arc::new(config));
    }
}
