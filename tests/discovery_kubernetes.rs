//! Kubernetes discovery against a test double of the Kubernetes API.
//!
//! No Kubernetes API server can run here (no cluster, no container runtime, no network), so these tests run
//! an in-test HTTP server on 127.0.0.1 that follows the documented API for what the backend uses:
//! - list and watch of pods, `GET /api/v1/namespaces/{namespace}/pods` with `labelSelector`, and with
//!   `watch=true` (or `1`) and `resourceVersion` for a watch:
//!   <https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/pod-v1/#list-list-or-watch-objects-of-kind-pod>
//! - the list's `metadata.resourceVersion`, watch events as a chunked stream of newline-delimited
//!   `{"type":"ADDED|MODIFIED|DELETED|ERROR","object":...}` kept open, events after the requested
//!   `resourceVersion` replayed, and an expired `resourceVersion` answered with an `ERROR` event carrying a
//!   `410` `Status`: <https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes>
//!   and <https://kubernetes.io/docs/reference/using-api/api-concepts/#410-gone-responses>
//! - equality-based label selectors (`k=v`, `k==v`, comma = and):
//!   <https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors>
//! - error answers as a `Status` object (`reason: Forbidden`, `code: 403`):
//!   <https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/status/> and
//!   <https://kubernetes.io/docs/reference/access-authn-authz/rbac/>
//!
//! The double records every request (path and raw query) so the tests assert the exact request shapes kube
//! sends. Every address used is on 127.0.0.0/8; every wait is a bounded poll.
#![cfg(feature = "kubernetes")]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bifrost_cluster::config::{DiscoveryConfig, load_from_str};
use bifrost_cluster::discovery::kubernetes::{KubernetesDiscovery, KubernetesOptions};
use bifrost_cluster::discovery::{Discovery, DiscoveryError, LocalNode};
use bifrost_cluster::membership::MemberState;
use bifrost_cluster::node::{Cluster, NodeOptions};
use bifrost_cluster::transport::TransportOptions;
use serde_json::{Value, json};
use tokio::sync::mpsc;

mod support;
use support::{increment_everywhere_and_converge, wait_for};

const NS: &str = "bifrost-test";
const GOSSIP_PORT: u16 = 10101;

// ---------------------------------------------------------------------------------------------------------
// The API double
// ---------------------------------------------------------------------------------------------------------

/// One request as the double received it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    path: String,
    /// The raw query string, exactly as sent.
    query: String,
    /// For a list: the `metadata.resourceVersion` the double answered.
    list_rv: Option<u64>,
}

impl Seen {
    fn params(&self) -> BTreeMap<String, String> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .into_owned()
            .collect()
    }

    fn is_watch(&self) -> bool {
        matches!(
            self.params().get("watch").map(String::as_str),
            Some("true" | "1")
        )
    }
}

struct Watcher {
    namespace: String,
    selector: Vec<(String, String)>,
    tx: mpsc::UnboundedSender<String>,
}

#[derive(Default)]
struct DoubleState {
    resource_version: u64,
    /// (namespace, name) → pod object.
    pods: BTreeMap<(String, String), Value>,
    /// (resourceVersion, event type, pod), for replaying a watch from an older resourceVersion.
    events: Vec<(u64, &'static str, Value)>,
    requests: Vec<Seen>,
    watchers: Vec<Watcher>,
    /// The verb ("list" or "watch") answered with 403 Forbidden.
    forbid: Option<&'static str>,
    /// Answer the next watch with a 410 `ERROR` event (its resourceVersion "expired").
    expire_next_watch: bool,
}

#[derive(Clone)]
struct Double {
    state: Arc<Mutex<DoubleState>>,
    addr: SocketAddr,
}

/// How a pod should look.
struct PodSpec<'a> {
    name: &'a str,
    namespace: &'a str,
    labels: &'a [(&'a str, &'a str)],
    phase: &'a str,
    ip: Option<&'a str>,
    terminating: bool,
}

impl<'a> PodSpec<'a> {
    fn running(name: &'a str, ip: &'a str) -> PodSpec<'a> {
        PodSpec {
            name,
            namespace: NS,
            labels: &[("app", "bifrost")],
            phase: "Running",
            ip: Some(ip),
            terminating: false,
        }
    }
}

impl Double {
    async fn start() -> Double {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the API double");
        let addr = listener.local_addr().expect("addr");
        let double = Double {
            state: Arc::new(Mutex::new(DoubleState {
                resource_version: 100,
                ..DoubleState::default()
            })),
            addr,
        };
        let app = Router::new()
            .route("/api/v1/namespaces/{namespace}/pods", get(pods))
            .fallback(not_found)
            .with_state(double.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        double
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DoubleState> {
        self.state.lock().expect("double state")
    }

    /// Creates or updates a pod: an `ADDED` or `MODIFIED` event for the watchers that select it.
    fn put_pod(&self, spec: PodSpec<'_>) {
        let mut s = self.lock();
        s.resource_version += 1;
        let rv = s.resource_version;
        let labels: serde_json::Map<String, Value> = spec
            .labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect();
        let mut pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": spec.name,
                "namespace": spec.namespace,
                "uid": format!("uid-{}-{}", spec.namespace, spec.name),
                "resourceVersion": rv.to_string(),
                "labels": labels,
            },
            "spec": { "containers": [{ "name": "bifrost", "image": "bifrost:test" }] },
            "status": { "phase": spec.phase },
        });
        if let Some(ip) = spec.ip {
            pod["status"]["podIP"] = ip.into();
            pod["status"]["podIPs"] = json!([{ "ip": ip }]);
        }
        if spec.terminating {
            pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
        }
        let key = (spec.namespace.to_owned(), spec.name.to_owned());
        let kind = if s.pods.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        s.pods.insert(key, pod.clone());
        s.events.push((rv, kind, pod.clone()));
        s.send(kind, &pod);
    }

    /// Deletes a pod: a `DELETED` event.
    fn delete_pod(&self, namespace: &str, name: &str) {
        let mut s = self.lock();
        let Some(mut pod) = s.pods.remove(&(namespace.to_owned(), name.to_owned())) else {
            panic!("no pod {namespace}/{name}");
        };
        s.resource_version += 1;
        let rv = s.resource_version;
        pod["metadata"]["resourceVersion"] = rv.to_string().into();
        s.events.push((rv, "DELETED", pod.clone()));
        s.send("DELETED", &pod);
    }

    fn requests(&self) -> Vec<Seen> {
        self.lock().requests.clone()
    }

    fn open_watches(&self) -> usize {
        let mut s = self.lock();
        s.watchers.retain(|w| !w.tx.is_closed());
        s.watchers.len()
    }

    fn resource_version(&self) -> u64 {
        self.lock().resource_version
    }
}

impl DoubleState {
    fn send(&mut self, kind: &str, pod: &Value) {
        let line = event_line(kind, pod);
        let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        self.watchers.retain(|w| {
            if w.namespace != namespace || !selects(&w.selector, pod) {
                return !w.tx.is_closed();
            }
            w.tx.send(line.clone()).is_ok()
        });
    }
}

fn event_line(kind: &str, object: &Value) -> String {
    let mut line = json!({ "type": kind, "object": object }).to_string();
    line.push('\n');
    line
}

/// An equality-based selector: `k=v`, `k==v`, joined by commas (every requirement must hold).
fn parse_selector(text: &str) -> Result<Vec<(String, String)>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|req| {
            let (k, v) = req
                .split_once("==")
                .or_else(|| req.split_once('='))
                .ok_or_else(|| format!("unable to parse requirement: {req:?}"))?;
            if k.is_empty() || k.ends_with('!') {
                return Err(format!("unable to parse requirement: {req:?}"));
            }
            Ok((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

fn selects(selector: &[(String, String)], pod: &Value) -> bool {
    selector
        .iter()
        .all(|(k, v)| pod["metadata"]["labels"][k].as_str() == Some(v.as_str()))
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "details": { "kind": "pods" }, "code": code.as_u16(),
    });
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn not_found() -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource".into(),
    )
}

async fn pods(
    State(double): State<Double>,
    Path(namespace): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let seen = Seen {
        path: format!("/api/v1/namespaces/{namespace}/pods"),
        query: query.unwrap_or_default(),
        list_rv: None,
    };
    let params = seen.params();
    let watch = seen.is_watch();
    let mut s = double.lock();
    let list_rv = s.resource_version;
    s.requests.push(Seen {
        list_rv: (!watch).then_some(list_rv),
        ..seen
    });
    let verb = if watch { "watch" } else { "list" };
    if s.forbid == Some(verb) {
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "pods is forbidden: User \"system:serviceaccount:{namespace}:default\" cannot {verb} resource \
                 \"pods\" in API group \"\" in the namespace \"{namespace}\""
            ),
        );
    }
    let selector = match parse_selector(params.get("labelSelector").map_or("", String::as_str)) {
        Ok(selector) => selector,
        Err(message) => return status(StatusCode::BAD_REQUEST, "BadRequest", message),
    };
    if !watch {
        let items: Vec<Value> = s
            .pods
            .iter()
            .filter(|((ns, _), pod)| *ns == namespace && selects(&selector, pod))
            .map(|(_, pod)| pod.clone())
            .collect();
        let body = json!({
            "apiVersion": "v1", "kind": "PodList",
            "metadata": { "resourceVersion": s.resource_version.to_string() },
            "items": items,
        });
        return (
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
    }
    let from: u64 = match params.get("resourceVersion").map(|v| v.parse()) {
        Some(Ok(v)) => v,
        _ => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "this double only serves watches from a resourceVersion".into(),
            );
        }
    };
    if std::mem::take(&mut s.expire_next_watch) {
        let gone = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {from} ({})", s.resource_version),
            "reason": "Expired", "code": 410,
        });
        return (
            [(header::CONTENT_TYPE, "application/json")],
            event_line("ERROR", &gone),
        )
            .into_response();
    }
    let (tx, rx) = mpsc::unbounded_channel();
    for (rv, kind, pod) in &s.events {
        if *rv > from
            && pod["metadata"]["namespace"].as_str() == Some(namespace.as_str())
            && selects(&selector, pod)
        {
            let _ = tx.send(event_line(kind, pod));
        }
    }
    s.watchers.push(Watcher {
        namespace,
        selector,
        tx,
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, Infallible>(line), rx))
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------

fn local() -> LocalNode {
    LocalNode {
        node_id: "node-under-test".into(),
        gossip_addr: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), GOSSIP_PORT),
        gossip_port: GOSSIP_PORT,
        secret: None,
    }
}

fn discovery_config(api_url: Option<&str>, selector: &str) -> DiscoveryConfig {
    DiscoveryConfig {
        enabled: true,
        k8s_namespace: NS.into(),
        k8s_label_selector: Some(selector.into()),
        k8s_api_url: api_url.map(|u| url::Url::parse(u).expect("url")),
        ..DiscoveryConfig::default()
    }
}

fn fast() -> KubernetesOptions {
    KubernetesOptions {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        ..KubernetesOptions::default()
    }
}

async fn backend(double: &Double, selector: &str) -> KubernetesDiscovery {
    KubernetesDiscovery::new(&discovery_config(Some(&double.url()), selector), &local())
        .await
        .expect("backend")
        .with_options(fast())
}

fn addr(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), GOSSIP_PORT)
}

async fn sorted(backend: &KubernetesDiscovery) -> Vec<SocketAddr> {
    let mut found = tokio::time::timeout(Duration::from_secs(10), backend.discover())
        .await
        .expect("discover answered within 10 s")
        .expect("discover succeeded");
    found.sort();
    found
}

async fn notified(backend: &KubernetesDiscovery, what: &str) {
    let changed = backend.changed().expect("kubernetes signals changes");
    tokio::time::timeout(Duration::from_secs(5), changed.notified())
        .await
        .unwrap_or_else(|_| panic!("no change signalled within 5 s after {what}"));
}

fn expected_watch_params(selector: &str, rv: u64) -> BTreeMap<String, String> {
    [
        ("watch", "true".to_owned()),
        ("timeoutSeconds", "290".to_owned()),
        ("labelSelector", selector.to_owned()),
        ("allowWatchBookmarks", "true".to_owned()),
        ("resourceVersion", rv.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

// ---------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_list_returns_running_pods_with_an_ip_that_match_the_selector_on_the_gossip_port() {
    let double = Double::start().await;
    let gw: &[(&str, &str)] = &[("app", "bifrost"), ("tier", "gw")];
    double.put_pod(PodSpec {
        labels: gw,
        ..PodSpec::running("match-1", "127.0.1.1")
    });
    double.put_pod(PodSpec {
        labels: gw,
        ..PodSpec::running("match-2", "127.0.1.2")
    });
    double.put_pod(PodSpec {
        labels: &[("app", "other"), ("tier", "gw")],
        ..PodSpec::running("other-app", "127.0.1.3")
    });
    double.put_pod(PodSpec {
        labels: &[("app", "bifrost"), ("tier", "db")],
        ..PodSpec::running("other-tier", "127.0.1.4")
    });
    double.put_pod(PodSpec {
        labels: &[("app", "bifrost")],
        ..PodSpec::running("no-tier", "127.0.1.5")
    });
    double.put_pod(PodSpec {
        labels: gw,
        phase: "Pending",
        ..PodSpec::running("pending", "127.0.1.6")
    });
    double.put_pod(PodSpec {
        labels: gw,
        ip: None,
        ..PodSpec::running("no-ip", "unused")
    });
    double.put_pod(PodSpec {
        labels: gw,
        terminating: true,
        ..PodSpec::running("terminating", "127.0.1.8")
    });
    double.put_pod(PodSpec {
        labels: gw,
        namespace: "elsewhere",
        ..PodSpec::running("other-namespace", "127.0.1.9")
    });
    let list_rv = double.resource_version();

    let k8s = backend(&double, "app=bifrost,tier=gw").await;
    assert!(
        double.requests().is_empty(),
        "the constructor contacted the API"
    );
    assert_eq!(
        sorted(&k8s).await,
        vec![addr("127.0.1.1"), addr("127.0.1.2")]
    );

    // The list, then the watch from the list's resourceVersion.
    wait_for(Duration::from_secs(5), "the watch to open", || {
        double.open_watches() == 1
    })
    .await;
    let requests = double.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(
        requests[0],
        Seen {
            path: format!("/api/v1/namespaces/{NS}/pods"),
            // kube's list URL is `.../pods?` followed by `&`-prefixed pairs; the API server ignores the empty pair.
            query: "&labelSelector=app%3Dbifrost%2Ctier%3Dgw".into(),
            list_rv: Some(list_rv),
        }
    );
    assert_eq!(requests[1].path, format!("/api/v1/namespaces/{NS}/pods"));
    assert_eq!(
        requests[1].params(),
        expected_watch_params("app=bifrost,tier=gw", list_rv)
    );

    // A second round lists again and keeps the one watch.
    assert_eq!(sorted(&k8s).await.len(), 2);
    let requests = double.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert!(!requests[2].is_watch());
    assert_eq!(
        requests.iter().filter(|r| r.is_watch()).count(),
        1,
        "one watch only"
    );
    let counters: BTreeMap<_, _> = k8s.counters().into_iter().collect();
    assert_eq!(counters["pod_lists"], 2);
    assert_eq!(counters["watches_opened"], 1);
}

#[tokio::test]
async fn a_watched_pod_coming_and_going_signals_a_change_and_shows_in_the_next_round() {
    let double = Double::start().await;
    double.put_pod(PodSpec::running("pod-a", "127.0.2.1"));
    let k8s = backend(&double, "app=bifrost").await;
    assert_eq!(sorted(&k8s).await, vec![addr("127.0.2.1")]);
    wait_for(Duration::from_secs(5), "the watch to open", || {
        double.open_watches() == 1
    })
    .await;

    // A new pod, first Pending (no address yet), then Running.
    double.put_pod(PodSpec {
        phase: "Pending",
        ip: None,
        ..PodSpec::running("pod-b", "unused")
    });
    notified(&k8s, "ADDED pod-b (Pending)").await;
    assert_eq!(sorted(&k8s).await, vec![addr("127.0.2.1")]);
    double.put_pod(PodSpec::running("pod-b", "127.0.2.2"));
    notified(&k8s, "MODIFIED pod-b (Running)").await;
    assert_eq!(
        sorted(&k8s).await,
        vec![addr("127.0.2.1"), addr("127.0.2.2")]
    );

    // pod-a goes: terminating first, then deleted.
    double.put_pod(PodSpec {
        terminating: true,
        ..PodSpec::running("pod-a", "127.0.2.1")
    });
    notified(&k8s, "MODIFIED pod-a (terminating)").await;
    assert_eq!(sorted(&k8s).await, vec![addr("127.0.2.2")]);
    double.delete_pod(NS, "pod-a");
    notified(&k8s, "DELETED pod-a").await;
    assert_eq!(sorted(&k8s).await, vec![addr("127.0.2.2")]);

    // A pod the selector does not match produces no event at all.
    double.put_pod(PodSpec {
        labels: &[("app", "other")],
        ..PodSpec::running("unrelated", "127.0.2.9")
    });
    let changed = k8s.changed().expect("changed");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), changed.notified())
            .await
            .is_err(),
        "a change was signalled for a pod outside the selector"
    );
    let counters: BTreeMap<_, _> = k8s.counters().into_iter().collect();
    assert_eq!(counters["watch_events"], 4);
    assert_eq!(counters["watches_opened"], 1);
    assert_eq!(double.requests().iter().filter(|r| r.is_watch()).count(), 1);
}

#[tokio::test]
async fn an_expired_watch_is_followed_by_a_relist_and_a_watch_from_the_new_resource_version() {
    let double = Double::start().await;
    double.put_pod(PodSpec::running("pod-a", "127.0.3.1"));
    double.lock().expire_next_watch = true;
    let first_rv = double.resource_version();
    let k8s = KubernetesDiscovery::new(
        &discovery_config(Some(&double.url()), "app=bifrost"),
        &local(),
    )
    .await
    .expect("backend")
    .with_options(KubernetesOptions {
        backoff_min: Duration::from_millis(300),
        ..fast()
    });
    assert_eq!(sorted(&k8s).await, vec![addr("127.0.3.1")]);
    wait_for(Duration::from_secs(5), "the first watch request", || {
        double.requests().len() == 2
    })
    .await;
    // A change while the backend is backing off after the 410 (no watch is open: only the re-list sees it).
    double.put_pod(PodSpec::running("pod-b", "127.0.3.2"));

    // The 410 makes the backend re-list by itself (no round needed) and signal a change.
    notified(&k8s, "the 410 and the re-list").await;
    wait_for(Duration::from_secs(5), "the second watch to open", || {
        double.open_watches() == 1
    })
    .await;
    let requests = double.requests();
    let shape: Vec<bool> = requests.iter().map(Seen::is_watch).collect();
    assert_eq!(
        shape,
        [false, true, false, true],
        "list, watch (expired), re-list, watch: {requests:?}"
    );
    assert_eq!(requests[0].list_rv, Some(first_rv));
    assert_eq!(
        requests[1].params(),
        expected_watch_params("app=bifrost", first_rv)
    );
    let relist_rv = requests[2].list_rv.expect("a list");
    assert_eq!(
        requests[3].params(),
        expected_watch_params("app=bifrost", relist_rv),
        "the new watch starts from the re-list's resourceVersion"
    );
    assert!(
        k8s.last_watch_error().is_none(),
        "an expiry is routine, not an error"
    );
    assert_eq!(
        sorted(&k8s).await,
        vec![addr("127.0.3.1"), addr("127.0.3.2")]
    );

    // The new watch delivers.
    double.put_pod(PodSpec::running("pod-c", "127.0.3.3"));
    notified(&k8s, "ADDED pod-c").await;
    assert_eq!(
        sorted(&k8s).await,
        vec![addr("127.0.3.1"), addr("127.0.3.2"), addr("127.0.3.3")]
    );
}

#[tokio::test]
async fn a_403_on_list_is_forbidden_naming_the_list_permission_and_the_role_to_grant() {
    let double = Double::start().await;
    double.put_pod(PodSpec::running("pod-a", "127.0.4.1"));
    double.lock().forbid = Some("list");
    let k8s = backend(&double, "app=bifrost").await;
    let error = tokio::time::timeout(Duration::from_secs(10), k8s.discover())
        .await
        .expect("answered")
        .expect_err("forbidden");
    let DiscoveryError::Forbidden { backend, reason } = &error else {
        panic!("not Forbidden: {error:?}");
    };
    assert_eq!(*backend, "kubernetes");
    assert!(
        reason.starts_with(
            "the service account cannot list pods in namespace \"bifrost-test\": grant a Role with verbs get, \
             list, watch on pods (apiGroups [\"\"]) and bind it to the pod's ServiceAccount"
        ),
        "{reason}"
    );
    assert!(
        reason.contains(&double.url()),
        "names the API server: {reason}"
    );
    assert!(
        reason.contains("cannot list resource \"pods\" in API group \"\""),
        "carries the API server's message: {reason}"
    );
    // No watch without a list.
    assert_eq!(double.requests().len(), 1);

    // Once the permission is granted the next round works.
    double.lock().forbid = None;
    assert_eq!(sorted(&k8s).await, vec![addr("127.0.4.1")]);
}

#[tokio::test]
async fn a_403_on_watch_is_reported_naming_the_watch_permission_and_recovers_when_granted() {
    let double = Double::start().await;
    double.put_pod(PodSpec::running("pod-a", "127.0.5.1"));
    double.lock().forbid = Some("watch");
    let k8s = backend(&double, "app=bifrost").await;
    // Listing is allowed: the round succeeds; the watch fails in the background.
    assert_eq!(sorted(&k8s).await, vec![addr("127.0.5.1")]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let error = loop {
        if let Some(error) = k8s.last_watch_error() {
            break error;
        }
        assert!(Instant::now() < deadline, "no watch error recorded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let DiscoveryError::Forbidden { reason, .. } = &error else {
        panic!("not Forbidden: {error:?}");
    };
    assert!(
        reason.starts_with(
            "the service account cannot watch pods in namespace \"bifrost-test\": grant a Role with verbs get, \
             list, watch on pods (apiGroups [\"\"])"
        ),
        "{reason}"
    );

    // Granted: the backend retries (backoff, re-list, watch) on its own and the watch works.
    double.lock().forbid = None;
    wait_for(Duration::from_secs(5), "the watch to open", || {
        double.open_watches() == 1
    })
    .await;
    wait_for(Duration::from_secs(5), "the error to clear", || {
        k8s.last_watch_error().is_none()
    })
    .await;
    // Drain the signal of the re-list, then a new pod is signalled.
    let _ = tokio::time::timeout(
        Duration::from_millis(100),
        k8s.changed().expect("changed").notified(),
    )
    .await;
    double.put_pod(PodSpec::running("pod-b", "127.0.5.2"));
    notified(&k8s, "ADDED pod-b").await;
    assert_eq!(
        sorted(&k8s).await,
        vec![addr("127.0.5.1"), addr("127.0.5.2")]
    );
    let counters: BTreeMap<_, _> = k8s.counters().into_iter().collect();
    assert!(counters["watch_failures"] >= 1);
}

#[tokio::test]
async fn an_api_server_that_is_down_is_unreachable_and_a_later_round_succeeds() {
    // A port on 127.0.0.1 nobody listens on (bound, then released).
    let port = {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let k8s = KubernetesDiscovery::new(&discovery_config(Some(&url), "app=bifrost"), &local())
        .await
        .expect("built while the API server is down")
        .with_options(fast());
    let error = tokio::time::timeout(Duration::from_secs(10), k8s.discover())
        .await
        .expect("answered")
        .expect_err("nothing listens");
    let DiscoveryError::Unreachable {
        backend,
        target,
        reason,
    } = &error
    else {
        panic!("not Unreachable: {error:?}");
    };
    assert_eq!(*backend, "kubernetes");
    assert!(target.starts_with(&url), "{target}");
    assert!(
        reason.contains("list pods in namespace \"bifrost-test\""),
        "{reason}"
    );
    assert!(
        reason.to_lowercase().contains("refused"),
        "names the cause: {reason}"
    );
}

#[tokio::test]
async fn the_config_comes_from_a_kubeconfig_and_a_missing_one_is_an_error_getting_kubernetes_config()
 {
    let double = Double::start().await;
    double.put_pod(PodSpec::running("pod-a", "127.0.6.1"));
    let dir = tempfile::tempdir().expect("tempdir");

    // A kubeconfig that does not exist.
    let missing = dir.path().join("missing-kubeconfig");
    let k8s = KubernetesDiscovery::new(&discovery_config(None, "app=bifrost"), &local())
        .await
        .expect("built")
        .with_options(KubernetesOptions {
            kubeconfig: Some(missing.clone()),
            ..fast()
        });
    let error = k8s.discover().await.expect_err("no config");
    let text = error.to_string();
    assert!(
        text.starts_with("kubernetes: error getting kubernetes config: kubeconfig "),
        "{text}"
    );
    assert!(text.contains(&missing.display().to_string()), "{text}");
    assert!(double.requests().is_empty());

    // A kubeconfig naming the double (no credentials, plain http).
    let path = dir.path().join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: double\n\
             clusters:\n- name: double\n  cluster:\n    server: {}\n\
             contexts:\n- name: double\n  context:\n    cluster: double\n    user: nobody\n\
             users:\n- name: nobody\n  user: {{}}\n",
            double.url()
        ),
    )
    .expect("write kubeconfig");
    let k8s = KubernetesDiscovery::new(&discovery_config(None, "app=bifrost"), &local())
        .await
        .expect("built")
        .with_options(KubernetesOptions {
            kubeconfig: Some(path),
            ..fast()
        });
    assert_eq!(sorted(&k8s).await, vec![addr("127.0.6.1")]);
    assert_eq!(
        double.requests()[0].query,
        "&labelSelector=app%3Dbifrost",
        "the namespace is the config's, not the kubeconfig's"
    );
    assert_eq!(
        double.requests()[0].path,
        format!("/api/v1/namespaces/{NS}/pods")
    );
}

#[tokio::test]
async fn dropping_the_backend_stops_its_watch() {
    let double = Double::start().await;
    double.put_pod(PodSpec::running("pod-a", "127.0.7.1"));
    let k8s = backend(&double, "app=bifrost").await;
    assert_eq!(sorted(&k8s).await.len(), 1);
    wait_for(Duration::from_secs(5), "the watch to open", || {
        double.open_watches() == 1
    })
    .await;
    drop(k8s);
    wait_for(
        Duration::from_secs(5),
        "the watch connection to close",
        || {
            // A closed connection shows when the double next writes to it.
            double.put_pod(PodSpec::running("pod-a", "127.0.7.1"));
            double.open_watches() == 0
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------------------
// End to end: three nodes found through the double
// ---------------------------------------------------------------------------------------------------------

const SECRET: &str = "G88vc7VTFrUNo5wlbMFXnOvd/dEGNd3ApQHsRIfsL1k=";

/// A port free for UDP and TCP on every one of `ips`.
fn free_port_on(ips: &[Ipv4Addr]) -> u16 {
    'candidate: for _ in 0..200 {
        let port = UdpSocket::bind((ips[0], 0))
            .and_then(|probe| probe.local_addr())
            .expect("udp bind")
            .port();
        let mut held = vec![];
        for &ip in ips {
            let (Ok(u), Ok(t)) = (UdpSocket::bind((ip, port)), TcpListener::bind((ip, port)))
            else {
                continue 'candidate;
            };
            held.push((u, t));
        }
        return port;
    }
    panic!("no port free on {ips:?}");
}

fn node_config(node: &str, port: u16, api_url: &str) -> bifrost_cluster::config::ClusterConfig {
    // `interval: 1h`: every round after the first comes from the watch, so the cluster forming within the
    // test proves the watch.
    let text = format!(
        r#"{{ "cluster_config": {{
            "enabled": true, "node_id": "{node}",
            "gossip": {{ "port": {port} }},
            "security": {{ "cluster_secret": "{SECRET}" }},
            "replication": {{ "anti_entropy_interval": "1s" }},
            "http": {{ "listen": "127.0.0.1:0" }},
            "discovery": {{
                "enabled": true, "type": "kubernetes",
                "k8s_namespace": "{NS}", "k8s_label_selector": "app=bifrost,component=gateway",
                "k8s_api_url": "{api_url}", "interval": "1h", "dial_timeout": "5s"
            }}
        }} }}"#
    );
    load_from_str(&text).expect("valid test config").config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_their_own_loopback_ips_find_each_other_through_the_pods_and_converge() {
    let double = Double::start().await;
    // Each "pod" is a node on its own loopback IP with the same gossip port, as pods share a port on
    // different IPs; podIP:gossip.port is then each node's real address (Linux routes 127.0.0.0/8 to lo).
    let ips: Vec<Ipv4Addr> = (2..=4).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
    let port = free_port_on(&ips);
    let mut nodes = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let options = NodeOptions {
            bind_ip: IpAddr::V4(*ip),
            env_secret: None,
            transport: TransportOptions::default(),
            membership: None,
            discovery_overrides: Default::default(),
        };
        let node = Cluster::start_with(
            node_config(&format!("node-{i}"), port, &double.url()),
            options,
        )
        .await
        .expect("node starts");
        nodes.push(node);
    }
    // Every node ran its first round (no pods yet: alone) and opened its watch.
    wait_for(Duration::from_secs(10), "three watches", || {
        double.open_watches() == 3
    })
    .await;
    assert!(nodes.iter().all(|n| n.peers().is_empty()));

    // The pods appear (plus one that must not be used: another component on the same IPs' port).
    let labels: &[(&str, &str)] = &[("app", "bifrost"), ("component", "gateway")];
    for (i, ip) in ips.iter().enumerate() {
        let ip = ip.to_string();
        double.put_pod(PodSpec {
            labels,
            ..PodSpec::running(&format!("bifrost-{i}"), &ip)
        });
    }
    double.put_pod(PodSpec {
        labels: &[("app", "bifrost"), ("component", "worker")],
        ..PodSpec::running("worker-0", "127.0.0.5")
    });

    let addrs: Vec<SocketAddr> = ips
        .iter()
        .map(|ip| SocketAddr::new((*ip).into(), port))
        .collect();
    let formed = wait_for(
        Duration::from_secs(20),
        "every member table to show the two others alive",
        || {
            nodes.iter().enumerate().all(|(i, n)| {
                let Some(table) = n.members() else {
                    return false;
                };
                let mut alive: Vec<SocketAddr> = table
                    .members
                    .iter()
                    .filter(|m| m.state == MemberState::Alive)
                    .map(|m| m.addr())
                    .collect();
                alive.sort();
                let others: Vec<SocketAddr> =
                    addrs.iter().copied().filter(|a| *a != addrs[i]).collect();
                alive == others
            })
        },
    )
    .await;
    // Informational (no assertion on it): how long the watch-driven rounds took to form the cluster.
    eprintln!("the three nodes saw each other alive {formed:?} after the pods appeared");
    for node in &nodes {
        let table = node.members().expect("cluster mode");
        assert_eq!(table.members.len(), 2, "{:?}", table.members);
    }
    wait_for(Duration::from_secs(10), "a full mesh of links", || {
        nodes.iter().all(|n| n.peers().len() == 2)
    })
    .await;

    // Counters converge exactly.
    increment_everywhere_and_converge(
        &nodes,
        &["vk/k8s-a", "budget/k8s-b"],
        5_000,
        Duration::from_secs(15),
    )
    .await;
    // Only the selected pods were ever dialed: nobody knows 127.0.0.5.
    for node in &nodes {
        let table = node.members().expect("cluster mode");
        assert!(table.members.iter().all(|m| addrs.contains(&m.addr())));
    }
    for node in &nodes {
        node.shutdown().await;
    }
}
