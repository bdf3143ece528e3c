//! The registration: a lease with a TTL, the key put on it, a background task that keeps the lease alive (and
//! re-registers when renewing fails), and the revoke on a graceful leave.
//!
//! Guarantees: at most one keep-alive task runs per backend; the key is only ever put on a lease this backend
//! granted, and deleted on leave only while it still holds this node's address (a replacement process with the
//! same node id is never removed).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::time::Instant;

use super::{BACKEND, EtcdDiscovery, Inner};
use crate::discovery::DiscoveryError;
use crate::sync::LockClean;

impl EtcdDiscovery {
    pub(super) async fn do_register(&self) -> Result<(), DiscoveryError> {
        if self
            .tasks()
            .keep_alive
            .as_ref()
            .is_some_and(|t| !t.is_finished())
        {
            return Ok(());
        }
        let lease = match self.inner.grant_and_put(self.inner.loop_deadline()).await {
            Ok(lease) => lease,
            Err(error) => {
                tracing::warn!(
                    endpoints = %self.inner.target,
                    key = %self.inner.key,
                    %error,
                    "failed to register with etcd"
                );
                return Err(error);
            }
        };
        tracing::info!(
            endpoints = %self.inner.target,
            key = %self.inner.key,
            value = %self.inner.value,
            lease = format_args!("{lease:x}"),
            ttl_s = self.inner.lease_ttl_s,
            tls = self.inner.tls.as_ref().map_or("none (http)", |t| t.summary.as_str()),
            "registered with etcd"
        );
        let task = tokio::spawn(Arc::clone(&self.inner).keep_alive_loop(lease));
        if let Some(old) = self.tasks().keep_alive.replace(task) {
            old.abort();
        }
        Ok(())
    }

    pub(super) async fn do_deregister(&self) -> Result<(), DiscoveryError> {
        let keep_alive = self.tasks().keep_alive.take();
        if let Some(task) = keep_alive {
            task.abort();
            // Wait for it to stop so it cannot re-grant after the revoke.
            let _ = task.await;
        }
        if let Some(task) = self.tasks().watch.take() {
            task.abort();
        }
        let inner = &self.inner;
        let lease = inner.lease.lock_clean().take();
        let deadline = inner.loop_deadline();
        let mut client = inner.client(deadline).await?;
        if let Some(lease) = lease {
            inner
                .call("lease revoke", deadline, client.lease_revoke(lease))
                .await?;
        }
        // A registration cut short (the keep-alive task stopped between a grant and recording it) may have
        // left the key on a lease we do not know: delete it too, but only while it still holds our address, so
        // a replacement process with the same node id is never removed.
        let txn = Txn::new()
            .when([Compare::value(
                inner.key.as_str(),
                CompareOp::Equal,
                inner.value.as_str(),
            )])
            .and_then([TxnOp::delete(inner.key.as_str(), None)]);
        inner.call("delete", deadline, client.txn(txn)).await?;
        tracing::info!(endpoints = %inner.target, key = %inner.key, "deregistered from etcd (lease revoked)");
        Ok(())
    }
}

impl Inner {
    /// Grants a lease and puts the key on it; records the lease. A lease whose put failed is revoked (best
    /// effort; it would expire anyway).
    async fn grant_and_put(&self, deadline: Instant) -> Result<i64, DiscoveryError> {
        let mut client = self.client(deadline).await?;
        let lease = self
            .call(
                "lease grant",
                deadline,
                client.lease_grant(self.lease_ttl_s, None),
            )
            .await?;
        if !lease.error().is_empty() {
            return Err(DiscoveryError::BadAnswer {
                backend: BACKEND,
                reason: format!("lease grant at {}: {}", self.target, lease.error()),
            });
        }
        let id = lease.id();
        let put = self
            .call(
                "put",
                deadline,
                client.put(
                    self.key.as_str(),
                    self.value.as_str(),
                    Some(PutOptions::new().with_lease(id)),
                ),
            )
            .await;
        if let Err(error) = put {
            let _ = self
                .call(
                    "lease revoke",
                    self.task_deadline(),
                    client.lease_revoke(id),
                )
                .await;
            return Err(error);
        }
        *self.lease.lock_clean() = Some(id);
        Ok(id)
    }

    pub(super) fn renew_every(&self) -> Duration {
        // lease_ttl_s >= 1, so this is at least 333 ms.
        Duration::from_millis(u64::try_from(self.lease_ttl_s).unwrap_or(1) * 1000 / 3)
    }

    /// Renews `lease` every TTL/3; after a failure, grants a new lease and puts the key again every TTL/3
    /// until that succeeds, then renews the new lease. Runs until aborted.
    async fn keep_alive_loop(self: Arc<Inner>, mut lease: i64) {
        loop {
            let error = self.renew(lease).await;
            self.keep_alive_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                endpoints = %self.target,
                key = %self.key,
                lease = format_args!("{lease:x}"),
                %error,
                "etcd client error: lease keep-alive failed; granting a new lease and putting the key again"
            );
            loop {
                tokio::time::sleep(self.renew_every()).await;
                match self.grant_and_put(self.task_deadline()).await {
                    Ok(new) => {
                        lease = new;
                        self.lease_regrants.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            endpoints = %self.target,
                            key = %self.key,
                            lease = format_args!("{lease:x}"),
                            "registered with etcd again (new lease)"
                        );
                        break;
                    }
                    Err(error) => tracing::warn!(
                        endpoints = %self.target,
                        key = %self.key,
                        %error,
                        "failed to register with etcd; retrying"
                    ),
                }
            }
        }
    }

    /// Keeps `lease` alive until something fails; returns why.
    async fn renew(&self, lease: i64) -> DiscoveryError {
        let mut client = match self.client(self.task_deadline()).await {
            Ok(client) => client,
            Err(error) => return error,
        };
        let (mut keeper, mut responses) = match self
            .call(
                "lease keep-alive",
                self.task_deadline(),
                client.lease_keep_alive(lease),
            )
            .await
        {
            Ok(pair) => pair,
            Err(error) => return error,
        };
        loop {
            tokio::time::sleep(self.renew_every()).await;
            let deadline = self.task_deadline();
            if let Err(error) = self
                .call("lease keep-alive", deadline, keeper.keep_alive())
                .await
            {
                return error;
            }
            match self
                .call("lease keep-alive", deadline, responses.message())
                .await
            {
                Ok(Some(answer)) if answer.ttl() > 0 => {}
                Ok(Some(_)) => {
                    return DiscoveryError::BadAnswer {
                        backend: BACKEND,
                        reason: format!(
                            "lease {lease:x} at {} expired or was revoked",
                            self.target
                        ),
                    };
                }
                Ok(None) => {
                    return DiscoveryError::Unreachable {
                        backend: BACKEND,
                        target: self.target.clone(),
                        reason: "lease keep-alive: the stream was closed".into(),
                    };
                }
                Err(error) => return error,
            }
        }
    }
}
