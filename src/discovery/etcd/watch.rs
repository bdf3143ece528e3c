//! The background watch of the prefix: it wakes the discovery loop on every put and delete under the prefix,
//! and reconnects with backoff after errors, resuming after the last revision seen (from now again when etcd
//! compacted the revisions it missed, with one extra wake-up since changes may have been missed).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use etcd_client::WatchOptions;
use tokio::task::JoinHandle;

use super::{BACKEND, EtcdDiscovery, Inner};
use crate::discovery::DiscoveryError;

/// Longest pause between two watch reconnection attempts.
const MAX_WATCH_BACKOFF: Duration = Duration::from_secs(10);
/// First pause after a watch error (doubled on each further error, reset once a watch is created).
const MIN_WATCH_BACKOFF: Duration = Duration::from_millis(250);

impl EtcdDiscovery {
    /// Starts the watch from `revision` (the revision after the last get) unless one is running.
    pub(super) fn ensure_watch(&self, revision: i64) {
        let mut tasks = self.tasks();
        if tasks.watch.as_ref().is_none_or(JoinHandle::is_finished) {
            tasks.watch = Some(tokio::spawn(Arc::clone(&self.inner).watch_loop(revision)));
        }
    }
}

impl Inner {
    /// Watches the prefix from `revision` (0: from now), notifying `changed` on every event; reconnects after
    /// errors with backoff, resuming after the last revision seen. Runs until aborted.
    async fn watch_loop(self: Arc<Inner>, mut revision: i64) {
        let mut backoff = MIN_WATCH_BACKOFF;
        loop {
            let error = self.watch_once(&mut revision, &mut backoff).await;
            self.watch_restarts.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                endpoints = %self.target,
                prefix = %self.prefix,
                %error,
                retry_in = ?backoff,
                "etcd client error: watch failed; reconnecting"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_WATCH_BACKOFF);
        }
    }

    async fn watch_once(&self, revision: &mut i64, backoff: &mut Duration) -> DiscoveryError {
        let deadline = self.task_deadline();
        let mut client = match self.client(deadline).await {
            Ok(client) => client,
            Err(error) => return error,
        };
        let mut options = WatchOptions::new().with_prefix();
        if *revision > 0 {
            options = options.with_start_revision(*revision);
        }
        let mut stream = match self
            .call(
                "watch",
                deadline,
                client.watch(self.prefix.as_str(), Some(options)),
            )
            .await
        {
            Ok(stream) => stream,
            Err(error) => return error,
        };
        loop {
            // No bound here: a watch waits for events; a dead connection is detected by the HTTP/2 pings.
            let message = match stream.message().await {
                Ok(Some(message)) => message,
                Ok(None) => {
                    return DiscoveryError::Unreachable {
                        backend: BACKEND,
                        target: self.target.clone(),
                        reason: "watch: the stream was closed".into(),
                    };
                }
                Err(error) => return self.map_error("watch", &error),
            };
            if message.canceled() {
                if message.compact_revision() > 0 {
                    // Events were compacted away: start again from now, and run a round since we may have
                    // missed changes.
                    *revision = 0;
                    self.changed.notify_one();
                }
                return DiscoveryError::BadAnswer {
                    backend: BACKEND,
                    reason: format!(
                        "watch of {} at {} canceled: {} (compact revision {})",
                        self.prefix,
                        self.target,
                        message.cancel_reason(),
                        message.compact_revision()
                    ),
                };
            }
            if message.created() {
                *backoff = MIN_WATCH_BACKOFF;
            }
            let events = message.events();
            if events.is_empty() {
                continue;
            }
            for event in events {
                if let Some(kv) = event.kv() {
                    *revision = (*revision).max(kv.mod_revision() + 1);
                }
            }
            if let Some(header) = message.header() {
                *revision = (*revision).max(header.revision() + 1);
            }
            self.watch_events
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            tracing::debug!(
                prefix = %self.prefix,
                events = events.len(),
                "etcd watch: registrations changed"
            );
            self.changed.notify_one();
        }
    }
}
