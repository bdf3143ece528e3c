//! `bifrost-cluster export` / `import` against real node processes (issue 16): two `run` processes on loopback
//! with a data directory each count `1d` and `1M` budgets; the export of a running node holds its values; an
//! import into a running node's directory is refused; budgets imported into a stopped node's directory count
//! once however often they are imported, a bad line changes nothing, and after the node restarts both nodes
//! serve the nodes' counts plus the imported ones. Every address is 127.0.0.1.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod support;
use support::free_port;
use support::process::{NodeProcess, wait_until};

const SECRET: &str = "q7Vn2mZ0xR4kT8wB1yC6pL3sH9dF5gJ0aE2uI7oK4nM=";
const KEYS: [(&str, &str); 2] = [("budget/day", "1d"), ("budget/month", "1M")];

fn nodes(dir: &Path) -> Vec<NodeProcess> {
    let ports = [free_port(), free_port()];
    ["node-a", "node-b"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let http = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
            let data = dir.join(format!("{name}-data"));
            let config = format!(
                r#"{{ "cluster_config": {{ "enabled": true, "node_id": "{name}",
                     "peers": ["127.0.0.1:{}"], "gossip": {{ "port": {} }}, "http": {{ "listen": "{http}" }},
                     "security": {{ "cluster_secret": "{SECRET}" }},
                     "storage": {{ "path": "{}", "interval": "200ms" }} }} }}"#,
                ports[1 - i],
                ports[i],
                data.display()
            );
            NodeProcess::new(dir, name, http, &config)
        })
        .collect()
}

fn cli(args: &[&str], stdin: Option<&Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bifrost-cluster"));
    command.args(args).env_remove("BIFROST_DATA_DIR");
    if let Some(file) = stdin {
        command.stdin(std::fs::File::open(file).expect("input file"));
    }
    command.output().expect("run bifrost-cluster")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn imported_budgets_count_once_reach_every_node_and_a_bad_line_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = nodes(dir.path());
    cluster.iter_mut().for_each(NodeProcess::spawn);
    let data_a = dir.path().join("node-a-data");
    let data_a_arg = data_a.to_str().expect("utf-8 path");

    // Both nodes count 5 on each key.
    let per_node = 5;
    let mut epochs = [0; 2];
    for node in &cluster {
        for _ in 0..per_node {
            for (k, (key, window)) in KEYS.iter().enumerate() {
                epochs[k] = node.add_retrying(key, window);
            }
        }
    }
    let counted = per_node * cluster.len() as u64;
    wait_until(
        Duration::from_secs(30),
        "both nodes see both totals",
        &cluster,
        || {
            cluster.iter().all(|node| {
                KEYS.iter()
                    .enumerate()
                    .all(|(k, (key, window))| node.global(key, window, epochs[k]) == Some(counted))
            })
        },
    );

    // The export of the running node holds both keys, with node-a's and node-b's values.
    let start = Instant::now();
    let exported = loop {
        let out = cli(&["export", "--data-dir", data_a_arg], None);
        let lines = text(&out.stdout);
        let values: Vec<serde_json::Value> = lines
            .lines()
            .map(|l| serde_json::from_str(l).expect("every exported line is JSON"))
            .collect();
        let sum = |key: &str| -> u64 {
            values
                .iter()
                .filter(|v| v["key"] == key && v["kind"] == "replica")
                .filter_map(|v| v["value"].as_u64())
                .sum()
        };
        if out.status.success() && KEYS.iter().all(|(key, _)| sum(key) == counted) {
            assert!(
                text(&out.stderr).contains("exported 4 values of 2 origins"),
                "{}",
                text(&out.stderr)
            );
            break lines;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the export never held both nodes' counts: {}\n{lines}",
            text(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    let seed = dir.path().join("seed.jsonl");
    std::fs::write(
        &seed,
        "{\"key\":\"budget/month\",\"window\":\"1M\",\"value\":1000}\n{\"key\":\"budget/day\",\"window\":\"1d\",\"value\":40}\n",
    )
    .expect("seed file");
    let seed_arg = seed.to_str().expect("utf-8 path");

    // An import into a running node's directory is refused, naming the directory.
    let out = cli(
        &[
            "import",
            "--data-dir",
            data_a_arg,
            "--source",
            "billing",
            seed_arg,
        ],
        None,
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("in use by a running node") && stderr.contains(data_a_arg),
        "{stderr}"
    );

    // Stop node-a; import twice (from a file, then from stdin): the second changes nothing.
    cluster[0].signal("TERM");
    assert_eq!(
        cluster[0].wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        cluster[0].log_text()
    );
    let out = cli(
        &[
            "import",
            "--data-dir",
            data_a_arg,
            "--source",
            "billing",
            seed_arg,
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("2 added, 0 raised, 0 unchanged"),
        "{}",
        text(&out.stderr)
    );
    let out = cli(
        &["import", "--data-dir", data_a_arg, "--source", "billing"],
        Some(&seed),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("0 added, 0 raised, 2 unchanged"),
        "{}",
        text(&out.stderr)
    );

    // Re-importing the export keeps every origin and changes nothing either.
    let backup = dir.path().join("backup.jsonl");
    std::fs::write(&backup, &exported).expect("backup file");
    let out = cli(
        &[
            "import",
            "--data-dir",
            data_a_arg,
            backup.to_str().expect("utf-8"),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("0 added, 0 raised, 4 unchanged"),
        "{}",
        text(&out.stderr)
    );

    // A data directory that does not exist (a typo) is refused, not created; --create seeds a new one.
    let typo = dir.path().join("data-a-typo");
    let typo_arg = typo.to_str().expect("utf-8");
    let out = cli(&["import", "--data-dir", typo_arg, seed_arg], None);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("no such data directory") && stderr.contains("--create"),
        "{stderr}"
    );
    assert!(!typo.exists(), "a refused import created the directory");
    let out = cli(
        &["import", "--data-dir", typo_arg, "--create", seed_arg],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(typo.join("counters.snapshot").is_file());

    // A file with a bad second line is refused with the line and field, and the snapshot is untouched.
    let snapshot = data_a.join("counters.snapshot");
    let before = std::fs::read(&snapshot).expect("snapshot");
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"key\":\"budget/month\",\"window\":\"1M\",\"value\":5000}\n{\"key\":\"budget/day\",\"window\":\"1 day\",\"value\":1}\n",
    )
    .expect("bad file");
    let out = cli(
        &[
            "import",
            "--data-dir",
            data_a_arg,
            bad.to_str().expect("utf-8"),
        ],
        None,
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("bad.jsonl: line 2: window"), "{stderr}");
    assert_eq!(
        std::fs::read(&snapshot).expect("snapshot"),
        before,
        "a refused import changed the snapshot"
    );

    // node-a starts with the imported budgets and sends them to node-b.
    cluster[0].spawn();
    let imported = [40, 1000];
    wait_until(
        Duration::from_secs(30),
        "both nodes see the counts plus the imports",
        &cluster,
        || {
            cluster.iter().all(|node| {
                KEYS.iter().enumerate().all(|(k, (key, window))| {
                    node.global(key, window, epochs[k]) == Some(counted + imported[k])
                })
            })
        },
    );
    println!(
        "imported 1000 (1M) and 40 (1d) once after three imports; both nodes serve {} and {}",
        counted + imported[1],
        counted + imported[0]
    );
}
