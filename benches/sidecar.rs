//! Sidecar speed (issue 15): the node's `POST /v1/ratelimit/check` and Envoy RLS `ShouldRateLimit` against a
//! Redis `EVALSHA` fixed-window limiter, all driven by the same closed-loop client on this machine.
//!
//! Each of 1, 16 and 64 keep-alive connections sends one check, waits for its answer and sends the next, each
//! on its own key (a gateway checks many keys; one hot key would measure contention instead), with a limit
//! so high that every check is admitted and counted. Reported per server and connection count: checks per
//! second and the p50/p99 latency seen by the client, and each server's throughput and p99 as ratios of
//! Redis's in the same run. The node runs in this process on a runtime of its own (two worker threads, like
//! the `run` binary on two cores); `redis-server` is started as a child process on a free loopback port, with
//! persistence off. The client runs on a current-thread runtime of its own.
//!
//! `cargo bench --bench sidecar` measures for `BIFROST_SIDECAR_SECONDS` (default 5) per point;
//! `cargo bench -- --test` (the CI smoke) runs each point for 200 ms. Without `redis-server` on the PATH the
//! Redis rows are skipped with a line that says so; `REQUIRE_REDIS=1` makes that a failure.
//! `BIFROST_SIDECAR_CONNS` (e.g. `16`) and `BIFROST_SIDECAR_SERVERS` (of `http,grpc,redis`) pick points;
//! `BIFROST_SIDECAR_WORKERS` sets the node runtime's worker threads (default 2). Each point also reports the
//! server's own CPU time per check (the node runtime's threads, or the `redis-server` process, from `/proc`).
//! Traffic goes to 127.0.0.1 only.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bifrost_cluster::config::load_from_str;
use bifrost_cluster::grpc::{GrpcOptions, GrpcServer};
use bifrost_cluster::http::{HttpServer, TokenSet};
use bifrost_cluster::node::Cluster;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const LIMIT: u64 = 1_000_000_000;
const LIMITS_FILE: &str = r#"
domain: bench
descriptors:
  - key: conn
    rate_limit: {unit: minute, requests_per_unit: 1000000000}
"#;
/// The fixed-window limiter of the Redis rows: count in the window's own key, expire it with the window.
const LUA: &str = "local c = redis.call('INCRBY', KEYS[1], ARGV[1]) \
    if c == tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end \
    if c > tonumber(ARGV[2]) then return 0 end return 1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    Http,
    Grpc,
    Redis,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Http => "http /v1/ratelimit/check",
            Server::Grpc => "grpc ShouldRateLimit",
            Server::Redis => "redis EVALSHA",
        }
    }
}

/// What one point measured.
struct Point {
    checks: usize,
    seconds: f64,
    p50_us: f64,
    p99_us: f64,
    /// The server's own CPU time (user + system) per check, in microseconds: what it costs the machine
    /// whatever the client costs.
    server_cpu_us: f64,
}

/// Name of the node runtime's threads, whose CPU time is the node server's.
const NODE_THREAD: &str = "bifrost-node";

/// Clock ticks per second of `/proc`'s CPU times.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime, in ticks, of a `/proc/.../stat` file (fields 14 and 15; the command name before them is
/// in parentheses and may hold spaces).
fn stat_ticks(path: &std::path::Path) -> u64 {
    let Ok(text) = std::fs::read_to_string(path) else {
        return 0;
    };
    let Some((_, rest)) = text.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// CPU ticks used so far by `server`: the node runtime's threads, or the `redis-server` process.
fn server_ticks(server: Server, redis_pid: Option<u32>) -> u64 {
    match server {
        Server::Redis => redis_pid.map_or(0, |pid| {
            stat_ticks(std::path::Path::new(&format!("/proc/{pid}/stat")))
        }),
        Server::Http | Server::Grpc => std::fs::read_dir("/proc/self/task")
            .map(|tasks| {
                tasks
                    .flatten()
                    .filter(|t| {
                        std::fs::read_to_string(t.path().join("comm"))
                            .is_ok_and(|c| c.trim() == NODE_THREAD)
                    })
                    .map(|t| stat_ticks(&t.path().join("stat")))
                    .sum()
            })
            .unwrap_or(0),
    }
}

impl Point {
    fn per_second(&self) -> f64 {
        self.checks as f64 / self.seconds
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `redis-server` on a free loopback port, killed when dropped.
struct Redis {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_redis() -> Option<Redis> {
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let start = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "redis-server did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(Redis { child, addr })
}

/// One RESP command.
fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// Reads one RESP reply line (simple string, integer, error or a bulk string's header and body).
async fn read_reply(r: &mut BufReader<TcpStream>, line: &mut String) -> String {
    line.clear();
    r.read_line(line).await.expect("redis reply");
    assert!(!line.starts_with('-'), "redis error: {line}");
    if let Some(len) = line.strip_prefix('$') {
        let len: usize = len.trim().parse().expect("bulk length");
        let mut body = vec![0; len + 2];
        r.read_exact(&mut body).await.expect("bulk body");
        return String::from_utf8_lossy(&body[..len]).into_owned();
    }
    line.trim().to_owned()
}

/// One connection's closed loop until `deadline`; the latency of every check.
async fn run_connection(
    server: Server,
    addr: SocketAddr,
    conn: usize,
    deadline: Instant,
) -> Vec<Duration> {
    let mut latencies = Vec::new();
    match server {
        Server::Http => {
            let stream = TcpStream::connect(addr).await.expect("connect http");
            stream.set_nodelay(true).expect("nodelay");
            let mut r = BufReader::new(stream);
            let body = format!(r#"{{"key":"bench/{conn}","window":"1m","limit":{LIMIT}}}"#);
            let request = format!(
                "POST /v1/ratelimit/check HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let mut line = String::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                r.get_mut()
                    .write_all(request.as_bytes())
                    .await
                    .expect("send");
                let mut length = 0;
                loop {
                    line.clear();
                    r.read_line(&mut line).await.expect("answer");
                    if line == "\r\n" {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().expect("content-length");
                    }
                }
                let mut answer = vec![0; length];
                r.read_exact(&mut answer).await.expect("body");
                assert!(
                    answer.starts_with(br#"{"allowed":true"#),
                    "{}",
                    String::from_utf8_lossy(&answer)
                );
                latencies.push(t.elapsed());
            }
        }
        Server::Grpc => {
            let mut client = RateLimitServiceClient::connect(format!("http://{addr}"))
                .await
                .expect("connect grpc");
            let request = RateLimitRequest {
                domain: "bench".to_owned(),
                descriptors: vec![RateLimitDescriptor {
                    entries: vec![Entry {
                        key: "conn".to_owned(),
                        value: conn.to_string(),
                    }],
                    ..Default::default()
                }],
                hits_addend: 1,
            };
            while Instant::now() < deadline {
                let t = Instant::now();
                let answer = client
                    .should_rate_limit(request.clone())
                    .await
                    .expect("ShouldRateLimit")
                    .into_inner();
                assert_eq!(answer.overall_code, Code::Ok as i32);
                latencies.push(t.elapsed());
            }
        }
        Server::Redis => {
            let stream = TcpStream::connect(addr).await.expect("connect redis");
            stream.set_nodelay(true).expect("nodelay");
            let mut r = BufReader::new(stream);
            let mut line = String::new();
            r.get_mut()
                .write_all(&resp(&["SCRIPT", "LOAD", LUA]))
                .await
                .expect("send");
            let sha = read_reply(&mut r, &mut line).await;
            let limit = LIMIT.to_string();
            while Instant::now() < deadline {
                let t = Instant::now();
                // The fixed window's own key: the minute's index, as a gateway's limiter names it.
                let minute = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() / 60);
                let key = format!("bench/{conn}:{minute}");
                let command = resp(&["EVALSHA", &sha, "1", &key, "1", &limit, "60000"]);
                r.get_mut().write_all(&command).await.expect("send");
                let answer = read_reply(&mut r, &mut line).await;
                assert_eq!(answer, ":1", "admitted");
                latencies.push(t.elapsed());
            }
        }
    }
    latencies
}

fn measure(
    client: &tokio::runtime::Runtime,
    server: Server,
    addr: SocketAddr,
    redis_pid: Option<u32>,
    conns: usize,
    seconds: f64,
) -> Point {
    let warmup = Instant::now() + Duration::from_secs_f64((seconds / 5.0).min(1.0));
    client.block_on(async {
        let tasks: Vec<_> = (0..conns)
            .map(|c| tokio::spawn(run_connection(server, addr, c, warmup)))
            .collect();
        for t in tasks {
            t.await.expect("warm-up");
        }
    });
    let ticks_before = server_ticks(server, redis_pid);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut latencies: Vec<Duration> = client.block_on(async {
        let tasks: Vec<_> = (0..conns)
            .map(|c| tokio::spawn(run_connection(server, addr, c, deadline)))
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("connection"));
        }
        all
    });
    let elapsed = start.elapsed().as_secs_f64();
    let server_seconds = (server_ticks(server, redis_pid) - ticks_before) as f64 / clock_ticks();
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    Point {
        checks: latencies.len(),
        seconds: elapsed,
        p50_us: at(0.50),
        p99_us: at(0.99),
        server_cpu_us: server_seconds * 1e6 / latencies.len().max(1) as f64,
    }
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let seconds: f64 = if smoke {
        0.2
    } else {
        std::env::var("BIFROST_SIDECAR_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5.0)
    };
    // `BIFROST_SIDECAR_CONNS=16` and `BIFROST_SIDECAR_SERVERS=http,redis` pick points (for a profile).
    let counts: Vec<usize> = match std::env::var("BIFROST_SIDECAR_CONNS") {
        Ok(list) => list
            .split(',')
            .map(|c| {
                c.trim()
                    .parse()
                    .expect("BIFROST_SIDECAR_CONNS: comma-separated counts")
            })
            .collect(),
        Err(_) if smoke => vec![1],
        Err(_) => vec![1, 16, 64],
    };
    let picked = std::env::var("BIFROST_SIDECAR_SERVERS").ok();
    let wanted = |name: &str| {
        picked
            .as_deref()
            .is_none_or(|p| p.split(',').any(|s| s.trim() == name))
    };
    let _ = rustls::crypto::ring::default_provider().install_default();

    let dir = tempfile::tempdir().expect("tempdir");
    let limits = dir.path().join("limits.yaml");
    std::fs::write(&limits, LIMITS_FILE).expect("limits file");
    let text = format!(
        r#"{{ "cluster_config": {{ "enabled": false, "node_id": "sidecar",
             "http": {{ "listen": "127.0.0.1:0" }},
             "grpc": {{ "listen": "127.0.0.1:0", "limits_file": {:?} }} }} }}"#,
        limits.display().to_string()
    );
    let config = load_from_str(&text).expect("config").config;
    let node_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            std::env::var("BIFROST_SIDECAR_WORKERS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(2),
        )
        .thread_name(NODE_THREAD)
        .enable_all()
        .build()
        .expect("node runtime");
    let (http, grpc) = node_runtime.block_on(async {
        let tokens = TokenSet::load(&config.http, None, |_| None).expect("tokens");
        let grpc_config = config.grpc.clone().expect("grpc section");
        let node = Cluster::start(config.clone()).await.expect("node");
        let http = HttpServer::start(node.clone(), "127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("http server");
        let options = GrpcOptions::from_config(&grpc_config, tokens, config.http.max_request_n)
            .expect("grpc options");
        let grpc = GrpcServer::start(node, options).await.expect("grpc server");
        (http, grpc)
    });
    let redis = start_redis();
    if redis.is_none() {
        assert!(
            std::env::var_os("REQUIRE_REDIS").is_none(),
            "REQUIRE_REDIS is set but redis-server could not be started"
        );
        println!("sidecar: redis-server not found on the PATH: the Redis rows are SKIPPED");
    }
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let mut servers = vec![
        (Server::Http, http.local_addr()),
        (Server::Grpc, grpc.local_addr()),
    ];
    if let Some(r) = &redis {
        servers.push((Server::Redis, r.addr));
    }
    servers.retain(|(s, _)| {
        wanted(match s {
            Server::Http => "http",
            Server::Grpc => "grpc",
            Server::Redis => "redis",
        })
    });
    println!(
        "sidecar: {seconds} s per point, closed loop, one key per connection, every check admitted"
    );
    let mut results: Vec<(Server, usize, Point)> = Vec::new();
    for &conns in &counts {
        for &(server, addr) in &servers {
            let redis_pid = redis.as_ref().map(|r| r.child.id());
            let p = measure(&client, server, addr, redis_pid, conns, seconds);
            println!(
                "sidecar/{:<26} conns {conns:>2}: {:>9.0} checks/s  p50 {:>7.1} us  p99 {:>7.1} us  server cpu {:>5.1} us/check  ({} checks)",
                server.name(),
                p.per_second(),
                p.p50_us,
                p.p99_us,
                p.server_cpu_us,
                p.checks
            );
            results.push((server, conns, p));
        }
    }
    for &conns in &counts {
        let Some(redis) = results
            .iter()
            .find(|(s, c, _)| *s == Server::Redis && *c == conns)
            .map(|(_, _, p)| (p.per_second(), p.p99_us, p.server_cpu_us))
        else {
            continue;
        };
        for (server, _, p) in results
            .iter()
            .filter(|(s, c, _)| *s != Server::Redis && *c == conns)
        {
            println!(
                "sidecar/ratio {:<26} conns {conns:>2}: throughput {:.2}x redis, p99 {:.2}x redis, server cpu per check {:.2}x redis",
                server.name(),
                p.per_second() / redis.0,
                p.p99_us / redis.1,
                p.server_cpu_us / redis.2
            );
        }
    }
    drop(redis);
    node_runtime.block_on(async {
        http.shutdown().await;
        grpc.shutdown().await;
    });
}
