//! Concurrency limits across real nodes (issue 15): three `run` processes on loopback share one in-flight limit
//! through `POST /v1/ratelimit/check` with `"algorithm": "concurrency"`; a node killed with `kill -9` while it
//! holds slots has them released by the others once membership declares it down, and a slot released on its
//! own node frees it everywhere. The time from the kill to the release is printed. Every address is 127.0.0.1.

use std::time::{Duration, Instant};

mod support;
use support::process::{NodeProcess, static_trio, wait_until};

const SECRET: &str = "Zr8Qm2Lx5Vc9Tb3Nw7Ky1Hs4Pd6Fg0Ja2Ue5Io8Mq=";
const LIMIT: u64 = 3;

fn nodes(dir: &std::path::Path) -> Vec<NodeProcess> {
    static_trio(dir, SECRET, |_| String::new())
}

/// A check of the in-flight limit on `node`: `(allowed, held)`; `None` when the node does not answer.
fn check(node: &NodeProcess, dry_run: bool) -> Option<(bool, u64)> {
    let body = format!(
        r#"{{"key":"model/gpt-4o","algorithm":"concurrency","limit":{LIMIT},"dry_run":{dry_run}}}"#
    );
    let (code, d) = support::http::post(node.http, "/v1/ratelimit/check", &body).ok()?;
    (code == 200).then(|| Some((d["allowed"].as_bool()?, d["used"].as_u64()?)))?
}

/// What `node` sees held, `None` when it does not answer.
fn held(node: &NodeProcess) -> Option<u64> {
    check(node, true).map(|(_, held)| held)
}

#[test]
fn a_killed_nodes_slots_are_released_by_the_others_and_a_release_frees_a_slot_everywhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = nodes(dir.path());
    cluster.iter_mut().for_each(NodeProcess::spawn);
    wait_until(
        Duration::from_secs(30),
        "every node answers and is joined",
        &cluster,
        || {
            cluster.iter().all(|n| {
                support::http::get(n.http, "/cluster/status")
                    .is_ok_and(|(code, s)| code == 200 && s["healthy_members"] == 3)
            })
        },
    );
    // node-b holds two slots, node-c one: the limit is reached everywhere.
    for node in [&cluster[1], &cluster[1], &cluster[2]] {
        assert_eq!(check(node, false).map(|(allowed, _)| allowed), Some(true));
    }
    wait_until(
        Duration::from_secs(20),
        "every node sees three slots held",
        &cluster,
        || cluster.iter().all(|n| held(n) == Some(LIMIT)),
    );
    assert_eq!(check(&cluster[0], false), Some((false, LIMIT)));

    // node-b dies holding two slots: once it is declared down, node-a and node-c release them.
    cluster[1].signal("KILL");
    let killed = Instant::now();
    let survivors = [&cluster[0], &cluster[2]];
    wait_until(
        Duration::from_secs(30),
        "the survivors release node-b's two slots",
        &cluster,
        || survivors.iter().all(|n| held(n) == Some(1)),
    );
    let released_after = killed.elapsed();
    eprintln!("node-b's slots released on both survivors {released_after:?} after kill -9");
    assert!(
        cluster[0]
            .log_text()
            .contains("released the in-flight slots a departed member held"),
        "{}",
        cluster[0].log_text()
    );

    // node-c's request ends: its slot is free on node-a too.
    let (code, d) = support::http::post(
        cluster[2].http,
        "/v1/ratelimit/release",
        r#"{"key":"model/gpt-4o","algorithm":"concurrency"}"#,
    )
    .expect("release");
    assert_eq!(
        (code, d["results"][0]["released"].as_u64()),
        (200, Some(1)),
        "{d}"
    );
    wait_until(
        Duration::from_secs(20),
        "node-a sees every slot free",
        &cluster,
        || held(&cluster[0]) == Some(0),
    );
    for _ in 0..LIMIT {
        assert_eq!(check(&cluster[0], false).map(|(a, _)| a), Some(true));
    }
    assert_eq!(check(&cluster[0], false), Some((false, LIMIT)));
}
