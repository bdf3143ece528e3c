//! Kubernetes discovery (cargo feature `kubernetes`): the pods matching `discovery.k8s_label_selector` in
//! `discovery.k8s_namespace`, through the Kubernetes API (list, then watch).
//!
//! Guarantees:
//! - [`KubernetesDiscovery::new`] contacts nothing; the API client is built on the first round and retried on
//!   every round until it can be built, so a node starts while the API server (or its config) is missing. The
//!   client comes from `discovery.k8s_api_url` when set (plain `http://` allowed, no credentials, e.g. behind
//!   `kubectl proxy`), else from the in-cluster config (service account token and CA,
//!   `KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT`), else from the kubeconfig (`KUBECONFIG` or
//!   `~/.kube/config`). When none is usable the round fails with "error getting kubernetes config" and both
//!   causes.
//! - A round lists the pods (`GET /api/v1/namespaces/{ns}/pods?labelSelector=...`) and returns `podIP:gossip.port`
//!   for each pod whose `status.phase` is `Running`, that has a `status.podIP` and that is not being deleted
//!   (`metadata.deletionTimestamp` unset). The selector is applied by the API server; nothing else is filtered
//!   here (the discovery loop removes this node's own address and applies `allowed_address_space`).
//! - After the first successful list, one background task watches the same pods from the list's
//!   `resourceVersion` and notifies [`Discovery::changed`] on every pod event (`ADDED`, `MODIFIED`,
//!   `DELETED`), so a new pod is tried at once instead of at the next interval. A watch that ends normally
//!   (the server's `timeoutSeconds`) is reopened from the last seen `resourceVersion`; a watch that fails or
//!   expires (`410 Gone`) is followed by a re-list (which also notifies `changed`) and a new watch, with
//!   exponential backoff between failed attempts. The task is the only one per backend and is stopped when the
//!   backend is dropped.
//! - A `403` names the missing RBAC permission (which verb on pods, in which namespace, and the Role to grant);
//!   a `401` points at the token. Every error names the API server URL and the cause.
//! - `register`/`deregister` do nothing: the pods are the registry.
//!
//! Log lines: "error listing pods" (warning, with namespace, selector, API URL and cause) when a list fails,
//! "error watching pods" (warning, same fields) when a watch fails, and "kubernetes watch expired, re-listing"
//! (debug) on a `410 Gone`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::Status;
use kube::{Client, Config};
use tokio::sync::{Notify, OnceCell};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use url::Url;

use super::{BoxFuture, Discovery, DiscoveryError, LocalNode, error_chain};
use crate::config::DiscoveryConfig;
use crate::sync::LockClean;

const BACKEND: &str = "kubernetes";

/// How long past its `timeoutSeconds` a watch may stay silent before it is presumed dead and reopened.
const WATCH_GRACE: Duration = Duration::from_secs(10);

/// Knobs of the Kubernetes backend that are not in the config file. The defaults suit production; tests
/// shorten the backoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesOptions {
    /// Server-side duration of one watch request (`timeoutSeconds`); the watch is then reopened from the last
    /// seen `resourceVersion`. A watch silent for this plus 10 s is presumed dead and reopened. Default 290 s
    /// (kube's default). Rounded down to whole seconds, at least 1 s.
    pub watch_timeout: Duration,
    /// Delay after the first failed watch or re-list; doubled on each consecutive failure. Default 500 ms.
    pub backoff_min: Duration,
    /// Largest delay between two attempts. Default 30 s. Must be at least `backoff_min` (the larger wins).
    pub backoff_max: Duration,
    /// A kubeconfig file to use *instead of* the in-cluster config and `KUBECONFIG`/`~/.kube/config`. Default
    /// none. Ignored when `discovery.k8s_api_url` is set.
    pub kubeconfig: Option<PathBuf>,
}

impl Default for KubernetesOptions {
    fn default() -> KubernetesOptions {
        KubernetesOptions {
            watch_timeout: Duration::from_secs(290),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            kubeconfig: None,
        }
    }
}

impl KubernetesOptions {
    fn watch_timeout_secs(&self) -> u32 {
        u32::try_from(self.watch_timeout.as_secs())
            .unwrap_or(u32::MAX)
            .max(1)
    }

    /// The delay before attempt `failures + 1` after `failures` consecutive failures (`failures >= 1`).
    fn backoff(&self, failures: u32) -> Duration {
        let max = self.backoff_max.max(self.backoff_min);
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.backoff_min.saturating_mul(factor).min(max)
    }
}

/// The Kubernetes discovery method. See the module docs for what it guarantees.
pub struct KubernetesDiscovery {
    namespace: String,
    selector: String,
    gossip_port: u16,
    api_url: Option<Url>,
    options: KubernetesOptions,
    conn: OnceCell<Conn>,
    shared: Arc<Shared>,
    watch: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for KubernetesDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesDiscovery")
            .field("namespace", &self.namespace)
            .field("selector", &self.selector)
            .field("gossip_port", &self.gossip_port)
            .field("api_url", &self.api_url.as_ref().map(Url::as_str))
            .finish_non_exhaustive()
    }
}

/// The API client, built once it could be.
#[derive(Clone)]
struct Conn {
    api: Api<Pod>,
    /// The API server URL, for errors and logs.
    target: String,
}

/// What the backend and its watch task share.
#[derive(Default)]
struct Shared {
    changed: Arc<Notify>,
    lists: AtomicU64,
    list_failures: AtomicU64,
    watches_opened: AtomicU64,
    watch_events: AtomicU64,
    watch_failures: AtomicU64,
    last_watch_error: Mutex<Option<DiscoveryError>>,
}

impl Shared {
    fn set_watch_error(&self, error: Option<DiscoveryError>) {
        let mut slot = self.last_watch_error.lock_clean();
        *slot = error;
    }
}

/// Which API call failed (it decides the RBAC verb an error names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    List,
    Watch,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::List => "list",
            Verb::Watch => "watch",
        }
    }
}

impl KubernetesDiscovery {
    /// The backend for `config` (`k8s_namespace`, `k8s_label_selector`, `k8s_api_url`), appending
    /// `local.gossip_port` to pod IPs. Contacts nothing.
    ///
    /// # Errors
    /// [`DiscoveryError::Setup`] when `k8s_label_selector` is missing or blank.
    pub async fn new(
        config: &DiscoveryConfig,
        local: &LocalNode,
    ) -> Result<KubernetesDiscovery, DiscoveryError> {
        let selector = match config.k8s_label_selector.as_deref().map(str::trim) {
            Some(s) if !s.is_empty() => s.to_owned(),
            _ => {
                return Err(DiscoveryError::Setup {
                    backend: BACKEND,
                    reason: "cluster_config.discovery.k8s_label_selector: required for kubernetes discovery \
                             (e.g. \"app=bifrost\"); without it every pod of the namespace would be a peer"
                        .into(),
                });
            }
        };
        Ok(KubernetesDiscovery {
            namespace: config.k8s_namespace.clone(),
            selector,
            gossip_port: local.gossip_port,
            api_url: config.k8s_api_url.clone(),
            options: KubernetesOptions::default(),
            conn: OnceCell::new(),
            shared: Arc::new(Shared::default()),
            watch: Mutex::new(None),
        })
    }

    /// Replaces the [`KubernetesOptions`] (before the first round).
    #[must_use]
    pub fn with_options(mut self, options: KubernetesOptions) -> KubernetesDiscovery {
        self.options = options;
        self
    }

    /// The last failure of the background watch, until a later watch request is accepted (e.g. a
    /// [`DiscoveryError::Forbidden`] when the service account may list pods but not watch them). `None` when
    /// the watch is healthy or not started.
    pub fn last_watch_error(&self) -> Option<DiscoveryError> {
        self.shared.last_watch_error.lock_clean().clone()
    }

    async fn conn(&self) -> Result<&Conn, DiscoveryError> {
        self.conn
            .get_or_try_init(|| async {
                let config = self.client_config().await?;
                let target = config.cluster_url.to_string();
                // kube's rustls connector uses the process-wide crypto provider; two providers in the graph
                // make that ambiguous, so install ring's (an error only means one is already installed).
                let _ = rustls::crypto::ring::default_provider().install_default();
                let client = Client::try_from(config).map_err(|e| DiscoveryError::Setup {
                    backend: BACKEND,
                    reason: format!(
                        "cannot build the API client for {target}: {}",
                        error_chain(&e)
                    ),
                })?;
                Ok(Conn {
                    api: Api::namespaced(client, &self.namespace),
                    target,
                })
            })
            .await
    }

    /// `k8s_api_url`, else the options' kubeconfig file, else in-cluster, else the default kubeconfig.
    async fn client_config(&self) -> Result<Config, DiscoveryError> {
        if let Some(url) = &self.api_url {
            let uri = url.as_str().parse().map_err(|e| DiscoveryError::Setup {
                backend: BACKEND,
                reason: format!(
                    "cluster_config.discovery.k8s_api_url: {url} is not a usable URI: {e}"
                ),
            })?;
            return Ok(Config::new(uri));
        }
        let config_error = |reason: String| DiscoveryError::Setup {
            backend: BACKEND,
            reason: format!(
                "error getting kubernetes config: {reason}; run in a pod with a service account, provide a \
                 kubeconfig, or set cluster_config.discovery.k8s_api_url"
            ),
        };
        if let Some(path) = &self.options.kubeconfig {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| {
                config_error(format!(
                    "kubeconfig {}: {}",
                    path.display(),
                    error_chain(&e)
                ))
            })?;
            return Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| {
                    config_error(format!(
                        "kubeconfig {}: {}",
                        path.display(),
                        error_chain(&e)
                    ))
                });
        }
        match Config::incluster() {
            Ok(config) => Ok(config),
            Err(in_cluster) => Config::from_kubeconfig(&KubeConfigOptions::default())
                .await
                .map_err(|kubeconfig| {
                    config_error(format!(
                        "in-cluster config: {}; kubeconfig: {}",
                        error_chain(&in_cluster),
                        error_chain(&kubeconfig)
                    ))
                }),
        }
    }

    async fn discover_pods(&self) -> Result<Vec<SocketAddr>, DiscoveryError> {
        let conn = self.conn().await?;
        let list = list_pods(conn, &self.selector, &self.namespace, &self.shared).await?;
        let addrs = list
            .items
            .iter()
            .filter_map(|pod| pod_address(pod, self.gossip_port))
            .collect();
        self.ensure_watch(conn, list.metadata.resource_version.unwrap_or_default());
        Ok(addrs)
    }

    /// Starts the watch task unless one is running.
    fn ensure_watch(&self, conn: &Conn, resource_version: String) {
        let mut slot = self.watch.lock_clean();
        if slot.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        let watcher = Watcher {
            conn: conn.clone(),
            selector: self.selector.clone(),
            namespace: self.namespace.clone(),
            options: self.options.clone(),
            shared: Arc::clone(&self.shared),
        };
        *slot = Some(tokio::spawn(watcher.run(resource_version)));
    }
}

impl KubernetesDiscovery {
    /// Stops the watch task, if any.
    fn stop_watch(&self) {
        let mut slot = self.watch.lock_clean();
        if let Some(task) = slot.take() {
            task.abort();
        }
    }
}

impl Drop for KubernetesDiscovery {
    fn drop(&mut self) {
        self.stop_watch();
    }
}

impl Discovery for KubernetesDiscovery {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn discover(&self) -> BoxFuture<'_, Result<Vec<SocketAddr>, DiscoveryError>> {
        Box::pin(self.discover_pods())
    }

    /// Nothing to withdraw (pods are the registry); stops the watch so it does not outlive a graceful leave.
    fn deregister(&self) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        self.stop_watch();
        Box::pin(async { Ok(()) })
    }

    fn changed(&self) -> Option<Arc<Notify>> {
        Some(Arc::clone(&self.shared.changed))
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = &self.shared;
        vec![
            ("pod_lists", s.lists.load(Ordering::Relaxed)),
            ("pod_list_failures", s.list_failures.load(Ordering::Relaxed)),
            ("watches_opened", s.watches_opened.load(Ordering::Relaxed)),
            ("watch_events", s.watch_events.load(Ordering::Relaxed)),
            ("watch_failures", s.watch_failures.load(Ordering::Relaxed)),
        ]
    }
}

/// Lists the pods, logging "error listing pods" on failure.
async fn list_pods(
    conn: &Conn,
    selector: &str,
    namespace: &str,
    shared: &Shared,
) -> Result<kube::core::ObjectList<Pod>, DiscoveryError> {
    match conn.api.list(&ListParams::default().labels(selector)).await {
        Ok(list) => {
            shared.lists.fetch_add(1, Ordering::Relaxed);
            Ok(list)
        }
        Err(e) => {
            shared.list_failures.fetch_add(1, Ordering::Relaxed);
            let error = map_error(&e, Verb::List, namespace, &conn.target);
            tracing::warn!(
                namespace,
                selector,
                api = %conn.target,
                %error,
                "error listing pods"
            );
            Err(error)
        }
    }
}

/// The background watch: see the module docs.
struct Watcher {
    conn: Conn,
    selector: String,
    namespace: String,
    options: KubernetesOptions,
    shared: Arc<Shared>,
}

/// How one watch request ended.
enum WatchEnd {
    /// The server closed it (its `timeoutSeconds`) or it stayed silent past the grace: reopen from the last
    /// `resourceVersion`. `events` counts the lines it delivered.
    Closed { events: u64 },
    /// It failed or expired: re-list before watching again.
    Failed { error: DiscoveryError, gone: bool },
}

impl Watcher {
    async fn run(self, mut resource_version: String) {
        let mut failures: u32 = 0;
        loop {
            let started = Instant::now();
            match self.watch_once(&mut resource_version).await {
                WatchEnd::Closed { events } => {
                    if events == 0 && started.elapsed() < Duration::from_secs(1) {
                        // A server (or proxy) that closes watches at once must not make us spin.
                        failures = failures.saturating_add(1);
                        tokio::time::sleep(self.options.backoff(failures)).await;
                    } else {
                        failures = 0;
                    }
                }
                WatchEnd::Failed { error, gone } => {
                    if gone {
                        tracing::debug!(namespace = %self.namespace, %error, "kubernetes watch expired, re-listing");
                    } else {
                        self.shared.watch_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            namespace = %self.namespace,
                            selector = %self.selector,
                            api = %self.conn.target,
                            %error,
                            "error watching pods"
                        );
                        self.shared.set_watch_error(Some(error));
                    }
                    failures = failures.saturating_add(1);
                    tokio::time::sleep(self.options.backoff(failures)).await;
                    resource_version = self.relist(&mut failures).await;
                    // Changes during the gap were not seen: let the loop run a round.
                    self.shared.changed.notify_one();
                }
            }
        }
    }

    /// Lists until it succeeds (with backoff) and returns the list's `resourceVersion`.
    async fn relist(&self, failures: &mut u32) -> String {
        loop {
            match list_pods(&self.conn, &self.selector, &self.namespace, &self.shared).await {
                Ok(list) => return list.metadata.resource_version.unwrap_or_default(),
                Err(_) => {
                    *failures = failures.saturating_add(1);
                    tokio::time::sleep(self.options.backoff(*failures)).await;
                }
            }
        }
    }

    async fn watch_once(&self, resource_version: &mut String) -> WatchEnd {
        let params = WatchParams::default()
            .labels(&self.selector)
            .timeout(self.options.watch_timeout_secs());
        let deadline = Instant::now() + self.options.watch_timeout + WATCH_GRACE;
        let stream =
            match tokio::time::timeout_at(deadline, self.conn.api.watch(&params, resource_version))
                .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    return WatchEnd::Failed {
                        gone: matches!(&e, kube::Error::Api(s) if s.code == 410),
                        error: map_error(&e, Verb::Watch, &self.namespace, &self.conn.target),
                    };
                }
                Err(_) => {
                    return WatchEnd::Failed {
                        gone: false,
                        error: DiscoveryError::Unreachable {
                            backend: BACKEND,
                            target: self.conn.target.clone(),
                            reason: format!(
                                "watch pods in namespace {:?}: no answer within {:?}",
                                self.namespace,
                                self.options.watch_timeout + WATCH_GRACE
                            ),
                        },
                    };
                }
            };
        self.shared.watches_opened.fetch_add(1, Ordering::Relaxed);
        self.shared.set_watch_error(None);
        let mut stream = std::pin::pin!(stream);
        let mut events = 0u64;
        loop {
            let next = match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(next)) => next,
                Ok(None) | Err(_) => return WatchEnd::Closed { events },
            };
            events += 1;
            match next {
                Ok(
                    WatchEvent::Added(pod) | WatchEvent::Modified(pod) | WatchEvent::Deleted(pod),
                ) => {
                    if let Some(version) = pod.metadata.resource_version {
                        *resource_version = version;
                    }
                    self.shared.watch_events.fetch_add(1, Ordering::Relaxed);
                    self.shared.changed.notify_one();
                }
                Ok(WatchEvent::Bookmark(bookmark)) => {
                    *resource_version = bookmark.metadata.resource_version;
                }
                Ok(WatchEvent::Error(status)) => {
                    return WatchEnd::Failed {
                        gone: status.code == 410,
                        error: map_status(&status, Verb::Watch, &self.namespace, &self.conn.target),
                    };
                }
                Err(e) => {
                    return WatchEnd::Failed {
                        gone: matches!(&e, kube::Error::Api(s) if s.code == 410),
                        error: map_error(&e, Verb::Watch, &self.namespace, &self.conn.target),
                    };
                }
            }
        }
    }
}

/// `podIP:port` when the pod is a usable peer: `status.phase` is `Running`, `status.podIP` is set and is an IP
/// address, and `metadata.deletionTimestamp` is unset (not terminating).
fn pod_address(pod: &Pod, port: u16) -> Option<SocketAddr> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip: IpAddr = status.pod_ip.as_deref()?.trim().parse().ok()?;
    Some(SocketAddr::new(ip, port))
}

/// A [`DiscoveryError`] for a failed API call: 403/401 become [`DiscoveryError::Forbidden`] naming the
/// permission, other API answers [`DiscoveryError::BadAnswer`], transport failures
/// [`DiscoveryError::Unreachable`].
fn map_error(error: &kube::Error, verb: Verb, namespace: &str, target: &str) -> DiscoveryError {
    match error {
        kube::Error::Api(status) => map_status(status, verb, namespace, target),
        kube::Error::SerdeError(e) => DiscoveryError::BadAnswer {
            backend: BACKEND,
            reason: format!(
                "{} pods in namespace {namespace:?} at {target}: cannot decode the answer: {e}",
                verb.as_str()
            ),
        },
        kube::Error::Auth(e) => DiscoveryError::Setup {
            backend: BACKEND,
            reason: format!(
                "cannot load the credentials for {target}: {}",
                error_chain(e)
            ),
        },
        other => DiscoveryError::Unreachable {
            backend: BACKEND,
            target: target.to_owned(),
            reason: format!(
                "{} pods in namespace {namespace:?}: {}",
                verb.as_str(),
                error_chain(other)
            ),
        },
    }
}

/// [`map_error`] for a Kubernetes `Status` (an error answer, or an `ERROR` watch event).
fn map_status(status: &Status, verb: Verb, namespace: &str, target: &str) -> DiscoveryError {
    let verb = verb.as_str();
    let said = if status.message.is_empty() {
        status.reason.clone()
    } else {
        status.message.clone()
    };
    match status.code {
        403 => DiscoveryError::Forbidden {
            backend: BACKEND,
            reason: format!(
                "the service account cannot {verb} pods in namespace {namespace:?}: grant a Role with verbs \
                 get, list, watch on pods (apiGroups [\"\"]) and bind it to the pod's ServiceAccount \
                 (API server {target} answered 403 Forbidden: {said})"
            ),
        },
        401 => DiscoveryError::Forbidden {
            backend: BACKEND,
            reason: format!(
                "the API server {target} rejected the credentials (401 Unauthorized) to {verb} pods in \
                 namespace {namespace:?}: check the service account token \
                 (/var/run/secrets/kubernetes.io/serviceaccount/token; automountServiceAccountToken must not \
                 be false) or the kubeconfig user ({said})"
            ),
        },
        410 => DiscoveryError::BadAnswer {
            backend: BACKEND,
            reason: format!(
                "{verb} pods in namespace {namespace:?} at {target}: resourceVersion expired (410 Gone: \
                 {said}); re-listing"
            ),
        },
        code => DiscoveryError::BadAnswer {
            backend: BACKEND,
            reason: format!(
                "{verb} pods in namespace {namespace:?} at {target}: HTTP {code} {}: {said}",
                if status.reason.is_empty() {
                    "(no reason)"
                } else {
                    status.reason.as_str()
                }
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("pod json")
    }

    fn running(ip: &str) -> serde_json::Value {
        serde_json::json!({
            "metadata": { "name": "p", "labels": { "app": "bifrost" } },
            "status": { "phase": "Running", "podIP": ip }
        })
    }

    #[test]
    fn a_running_pod_with_an_ip_is_a_peer_on_the_gossip_port() {
        assert_eq!(
            pod_address(&pod(running("10.1.2.3")), 10101),
            Some("10.1.2.3:10101".parse().expect("addr"))
        );
        assert_eq!(
            pod_address(&pod(running("fd00::7")), 7946),
            Some("[fd00::7]:7946".parse().expect("addr"))
        );
    }

    #[test]
    fn pending_ipless_terminating_or_garbled_pods_are_not_peers() {
        let pending = serde_json::json!({
            "metadata": { "name": "p" },
            "status": { "phase": "Pending", "podIP": "10.1.2.3" }
        });
        let no_ip =
            serde_json::json!({ "metadata": { "name": "p" }, "status": { "phase": "Running" } });
        let no_status = serde_json::json!({ "metadata": { "name": "p" } });
        let mut terminating = running("10.1.2.3");
        terminating["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
        let succeeded = serde_json::json!({
            "metadata": { "name": "p" },
            "status": { "phase": "Succeeded", "podIP": "10.1.2.3" }
        });
        for (what, json) in [
            ("pending", pending),
            ("no ip", no_ip),
            ("no status", no_status),
            ("terminating", terminating),
            ("succeeded", succeeded),
            ("not an ip", running("pod-a.example")),
            ("empty ip", running("")),
        ] {
            assert_eq!(pod_address(&pod(json), 10101), None, "{what}");
        }
    }

    fn status(json: serde_json::Value) -> Status {
        serde_json::from_value(json).expect("status json")
    }

    #[test]
    fn a_403_names_the_verb_the_namespace_and_the_role_to_grant() {
        let forbidden = status(serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
            "message": "pods is forbidden: User \"system:serviceaccount:prod:bifrost\" cannot list resource \"pods\""
        }));
        for (verb, word) in [(Verb::List, "list"), (Verb::Watch, "watch")] {
            let error = map_status(&forbidden, verb, "prod", "https://10.0.0.1:443/");
            let DiscoveryError::Forbidden { backend, reason } = &error else {
                panic!("not Forbidden: {error:?}");
            };
            assert_eq!(*backend, "kubernetes");
            assert!(
                reason.starts_with(&format!(
                    "the service account cannot {word} pods in namespace \"prod\": grant a Role with verbs \
                     get, list, watch on pods (apiGroups [\"\"]) and bind it to the pod's ServiceAccount"
                )),
                "{reason}"
            );
            assert!(reason.contains("https://10.0.0.1:443/"), "{reason}");
            assert!(
                reason.contains("system:serviceaccount:prod:bifrost"),
                "{reason}"
            );
        }
    }

    #[test]
    fn a_401_points_at_the_token_and_other_codes_are_bad_answers() {
        let unauthorized = status(serde_json::json!({
            "kind": "Status", "status": "Failure", "reason": "Unauthorized", "code": 401, "message": "Unauthorized"
        }));
        let error = map_status(&unauthorized, Verb::List, "default", "https://k8s:6443/");
        let DiscoveryError::Forbidden { reason, .. } = &error else {
            panic!("not Forbidden: {error:?}");
        };
        assert!(reason.contains("401 Unauthorized"), "{reason}");
        assert!(reason.contains("serviceaccount/token"), "{reason}");

        let bad_selector = status(serde_json::json!({
            "kind": "Status", "status": "Failure", "reason": "BadRequest", "code": 400,
            "message": "unable to parse requirement"
        }));
        let error = map_status(
            &bad_selector,
            Verb::List,
            "default",
            "http://127.0.0.1:8001/",
        );
        assert_eq!(
            error.to_string(),
            "kubernetes: unexpected answer: list pods in namespace \"default\" at http://127.0.0.1:8001/: \
             HTTP 400 BadRequest: unable to parse requirement"
        );

        let gone = status(
            serde_json::json!({ "code": 410, "reason": "Expired", "message": "too old resource version: 1 (5)" }),
        );
        let error = map_status(&gone, Verb::Watch, "default", "http://127.0.0.1:8001/");
        assert!(error.to_string().contains("410 Gone"), "{error}");
    }

    #[test]
    fn transport_failures_are_unreachable_with_the_cause_and_the_url() {
        let refused = kube::Error::Service(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        )));
        let error = map_error(&refused, Verb::List, "default", "http://127.0.0.1:9/");
        let DiscoveryError::Unreachable {
            backend,
            target,
            reason,
        } = &error
        else {
            panic!("not Unreachable: {error:?}");
        };
        assert_eq!(
            (*backend, target.as_str()),
            ("kubernetes", "http://127.0.0.1:9/")
        );
        assert!(
            reason.contains("list pods in namespace \"default\""),
            "{reason}"
        );
        assert!(reason.contains("connection refused"), "{reason}");

        let garbled = serde_json::from_str::<Pod>("{").expect_err("not json");
        let error = map_error(
            &kube::Error::SerdeError(garbled),
            Verb::List,
            "ns",
            "http://x/",
        );
        assert!(
            matches!(error, DiscoveryError::BadAnswer { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn backoff_doubles_from_the_minimum_up_to_the_maximum() {
        let options = KubernetesOptions {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            ..KubernetesOptions::default()
        };
        let delays: Vec<u128> = (1..=6).map(|n| options.backoff(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(options.backoff(u32::MAX).as_millis(), 1000);
        assert_eq!(KubernetesOptions::default().watch_timeout_secs(), 290);
    }

    #[tokio::test]
    async fn a_missing_or_blank_selector_is_a_setup_error_and_new_contacts_nothing() {
        let local = LocalNode {
            node_id: "n".into(),
            gossip_addr: "127.0.0.1:10101".parse().expect("addr"),
            gossip_port: 10101,
            secret: None,
        };
        let mut config = DiscoveryConfig::default();
        for selector in [None, Some("  ".to_owned())] {
            config.k8s_label_selector = selector;
            let error = KubernetesDiscovery::new(&config, &local)
                .await
                .expect_err("no selector");
            assert!(error.to_string().contains("k8s_label_selector"), "{error}");
        }
        // An API URL nobody listens on: construction still succeeds (nothing is contacted yet).
        config.k8s_label_selector = Some("app=bifrost".into());
        config.k8s_api_url = Some(Url::parse("http://127.0.0.1:9").expect("url"));
        let backend = KubernetesDiscovery::new(&config, &local)
            .await
            .expect("built without contacting anything");
        assert_eq!(backend.name(), "kubernetes");
        assert!(backend.last_watch_error().is_none());
    }
}
