//! `bifrost-cluster demo`: a whole cluster in one process on loopback, with rate-limited traffic through every
//! node and a table once a second showing that they enforce one global limit.
//!
//! Each node offers `OFFERED_PER_NODE` requests per second to a sliding-window limit of `GLOBAL_LIMIT` per
//! second (so N nodes offer N times what the limit allows) and counts every request in `demo/requests`. The
//! table shows each node's view of the cluster-wide count beside the exact total, the replication lag, member
//! states, and how many requests the cluster allowed in the last window of the limit (rows end at its
//! boundaries). At the end the traffic stops, the views must converge to the exact total, and the nodes leave
//! gracefully; the exit status says whether they converged.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bifrost_cluster::UnixMs;
use bifrost_cluster::config::load_from_str;
use bifrost_cluster::counter::{Algorithm, Window};
use bifrost_cluster::http::HttpServer;
use bifrost_cluster::membership::MemberState;
use bifrost_cluster::node::{Cluster, ClusterHandle, NodeOptions};

/// Requests per second each node offers.
pub const OFFERED_PER_NODE: u64 = 800;
/// The cluster-wide limit, per second.
pub const GLOBAL_LIMIT: u64 = 1_000;

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A node or its HTTP server did not start.
    #[error("starting {node}: {reason}")]
    Start {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
    /// No free loopback port (or no randomness for the secret).
    #[error("{0}")]
    Setup(String),
    /// The views did not converge to the exact total after the traffic stopped.
    #[error("the nodes' views did not converge to the exact total {exact} within 5 s: {views:?}")]
    NotConverged {
        /// The exact total.
        exact: u64,
        /// Each node's view.
        views: Vec<u64>,
    },
}

struct DemoNode {
    handle: ClusterHandle,
    http: HttpServer,
    /// Requests this node counted (the exact share of the total).
    counted: Arc<AtomicU64>,
    /// Requests the limit allowed since the last table.
    allowed: Arc<AtomicU64>,
}

fn free_port() -> Result<u16, DemoError> {
    for _ in 0..100 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| DemoError::Setup(e.to_string()))?;
        let port = udp
            .local_addr()
            .map_err(|e| DemoError::Setup(e.to_string()))?
            .port();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(DemoError::Setup("no free port on 127.0.0.1".into()))
}

fn secret() -> Result<String, DemoError> {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| DemoError::Setup("the OS random number generator failed".into()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Runs the demo with `nodes` nodes for `duration` (`None`: until Ctrl-C).
pub async fn run(nodes: usize, duration: Option<Duration>) -> Result<(), DemoError> {
    let secret = secret()?;
    let ports: Vec<u16> = (0..nodes).map(|_| free_port()).collect::<Result<_, _>>()?;
    let mut cluster = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let name = format!("node-{}", i + 1);
        let peers: Vec<String> = ports
            .iter()
            .filter(|p| *p != port)
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect();
        let text = format!(
            r#"{{ "cluster_config": {{ "enabled": true, "node_id": "{name}", "peers": [{}],
                 "gossip": {{ "port": {port} }}, "http": {{ "listen": "127.0.0.1:0" }},
                 "security": {{ "cluster_secret": "{secret}" }} }} }}"#,
            peers.join(",")
        );
        let start_error = |reason: String| DemoError::Start {
            node: name.clone(),
            reason,
        };
        let config = load_from_str(&text)
            .map_err(|e| start_error(e.to_string()))?
            .config;
        let options = NodeOptions {
            bind_ip: Ipv4Addr::LOCALHOST.into(),
            env_secret: None,
            ..NodeOptions::default()
        };
        let handle = Cluster::start_with(config, options)
            .await
            .map_err(|e| start_error(e.to_string()))?;
        let http = HttpServer::start(handle.clone(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .map_err(|e| start_error(e.to_string()))?;
        cluster.push(DemoNode {
            handle,
            http,
            counted: Arc::new(AtomicU64::new(0)),
            allowed: Arc::new(AtomicU64::new(0)),
        });
    }
    println!(
        "bifrost-cluster demo: {nodes} nodes on 127.0.0.1, one QUIC port each, mutual TLS from a generated secret"
    );
    for n in &cluster {
        println!(
            "  {}  gossip {}  status page http://{}/ui  (JSON: /cluster/status)",
            n.handle.node_id(),
            n.handle
                .local_addr()
                .map_or_else(String::new, |a| a.to_string()),
            n.http.local_addr()
        );
    }
    println!(
        "each node offers {OFFERED_PER_NODE} requests/s to one global limit of {GLOBAL_LIMIT}/s (sliding window); \
         every request is also counted in demo/requests.\n"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let hour = Window::parse("1h").map_err(|e| DemoError::Setup(e.to_string()))?;
    let second = Window::parse("1s").map_err(|e| DemoError::Setup(e.to_string()))?;
    let epoch = hour.epoch_at(cluster[0].handle.clock().now_unix_ms());
    let mut drivers = Vec::new();
    for n in &cluster {
        let store = n.handle.store();
        let requests = store
            .handle("demo/requests", hour)
            .map_err(|e| DemoError::Setup(e.to_string()))?;
        let limited = store
            .handle("demo/limited", second)
            .map_err(|e| DemoError::Setup(e.to_string()))?;
        let (counted, allowed, stop) = (
            Arc::clone(&n.counted),
            Arc::clone(&n.allowed),
            Arc::clone(&stop),
        );
        drivers.push(tokio::spawn(async move {
            // 10 ms ticks; each offers its share of the second's requests.
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let per_tick = OFFERED_PER_NODE / 100;
            // Relaxed: the demo's own statistics, read once a second.
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                for _ in 0..per_tick {
                    if requests.epoch_now() != epoch {
                        continue; // an hour boundary: keep the exact total comparable
                    }
                    requests.add(1);
                    counted.fetch_add(1, Ordering::Relaxed);
                    if limited
                        .acquire(Algorithm::SlidingWindow, GLOBAL_LIMIT, 1)
                        .allowed
                    {
                        allowed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    let started = Instant::now();
    // Rows end at the limit's window boundaries (whole Unix seconds), so "allowed" is what one window of the
    // limit admitted; the first row is the part of a window from the start to the first boundary. A row that
    // straddled a boundary would also show the sliding window's estimate at work: the first window has no
    // previous one, so a second that spans its end counts its burst plus what the next window admits early
    // (docs/replication.md, "Start-up admission").
    let now_ms = cluster[0].handle.clock().now_unix_ms().get();
    let boundary_ms = second.end_ms(second.epoch_at(UnixMs::new(now_ms)));
    let first_row = tokio::time::Instant::now() + Duration::from_millis(boundary_ms - now_ms + 1);
    let mut every_second = tokio::time::interval_at(first_row, Duration::from_secs(1));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = every_second.tick() => {}
            _ = &mut ctrl_c => break,
        }
        print_table(&cluster, epoch, hour, started.elapsed());
        if duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for d in drivers {
        let _ = d.await;
    }
    let exact: u64 = cluster
        .iter()
        .map(|n| n.counted.load(Ordering::Relaxed))
        .sum();
    let deadline = Instant::now() + Duration::from_secs(5);
    let views = loop {
        let views: Vec<u64> = cluster
            .iter()
            .map(|n| view(&n.handle, hour, epoch))
            .collect();
        if views.iter().all(|v| *v == exact) || Instant::now() > deadline {
            break views;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("\ntraffic stopped: exact total {exact}; views {views:?}");
    for n in cluster {
        n.http.shutdown().await;
        n.handle.shutdown().await;
    }
    if views.iter().all(|v| *v == exact) {
        println!("every node converged to the exact total; all nodes left gracefully");
        Ok(())
    } else {
        Err(DemoError::NotConverged { exact, views })
    }
}

fn view(node: &ClusterHandle, window: Window, epoch: u64) -> u64 {
    node.store()
        .counts_at("demo/requests", window, epoch)
        .map_or(0, |(l, r)| l + r)
}

fn print_table(cluster: &[DemoNode], epoch: u64, window: Window, elapsed: Duration) {
    let exact: u64 = cluster
        .iter()
        .map(|n| n.counted.load(Ordering::Relaxed))
        .sum();
    let allowed: Vec<u64> = cluster
        .iter()
        .map(|n| n.allowed.swap(0, Ordering::Relaxed))
        .collect();
    let first = &cluster[0].handle;
    let mut out = String::new();
    out.push_str(&format!(
        "t={:>3}s  cluster {}  leader {}  exact total {exact}\n",
        elapsed.as_secs(),
        first.cluster_health(),
        first.leader().unwrap_or_else(|| "-".into()),
    ));
    out.push_str("  node     view of demo/requests  behind  max lag  members (alive/suspect/down)  allowed/s\n");
    for (n, allowed) in cluster.iter().zip(&allowed) {
        let v = view(&n.handle, window, epoch);
        let lag = n
            .handle
            .peers()
            .iter()
            .map(|p| p.stats.lag_ms)
            .max()
            .unwrap_or(0);
        let (mut alive, mut suspect, mut down) = (1, 0, 0);
        if let Some(table) = n.handle.members() {
            for m in &table.members {
                match m.state {
                    MemberState::Alive => alive += 1,
                    MemberState::Suspect => suspect += 1,
                    MemberState::Down => down += 1,
                    MemberState::Left => {}
                }
            }
        }
        out.push_str(&format!(
            "  {:<8} {:>21}  {:>6}  {:>5} ms  {:>2}/{}/{}                       {:>6}\n",
            n.handle.node_id(),
            v,
            exact.saturating_sub(v),
            lag,
            alive,
            suspect,
            down,
            allowed
        ));
    }
    let total_allowed: u64 = allowed.iter().sum();
    out.push_str(&format!(
        "  global limit {GLOBAL_LIMIT}/s: the cluster allowed {total_allowed} in the last window (1 s) of {} offered\n",
        OFFERED_PER_NODE * cluster.len() as u64
    ));
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}
