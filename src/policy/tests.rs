//! Parsing and matching: envoyproxy/ratelimit's own examples load unchanged and match as its README says.

use super::*;
use crate::UnixMs;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/envoy-ratelimit"
);

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn load(text: &str) -> Policy {
    Policy::load([("test.yaml", text)]).unwrap_or_else(|e| panic!("{e}"))
}

fn rule<'p>(policy: &'p Policy, domain: &str, entries: &[(&str, &str)]) -> Option<&'p Rule> {
    match policy.lookup(domain, entries) {
        Match::Rule { rule, .. } => Some(rule),
        _ => None,
    }
}

fn per_unit(rule: Option<&Rule>) -> Option<u32> {
    match rule?.limit {
        RuleLimit::Limited(l) => Some(l.requests_per_unit),
        RuleLimit::Unlimited => None,
    }
}

#[test]
fn every_example_config_loads_unchanged() {
    let mut names: Vec<String> = std::fs::read_dir(FIXTURES)
        .unwrap_or_else(|e| panic!("{FIXTURES}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    assert!(names.len() >= 18, "fixtures: {names:?}");
    for name in &names {
        let policy = load(&fixture(name));
        assert_eq!(policy.domains().len(), 1, "{name}");
        assert!(!policy.rules().is_empty(), "{name} has rules");
    }
}

#[test]
fn example_yaml_nested_replaces_shadow_unlimited_quota() {
    let p = load(&fixture("examples-example.yaml"));
    assert_eq!(p.domains(), vec!["rl"]);
    // Nested with a value-less key: any value of bar gets 3/min, a specific one its own.
    assert_eq!(
        per_unit(rule(&p, "rl", &[("foo", "x"), ("bar", "other")])),
        Some(3)
    );
    assert_eq!(
        per_unit(rule(&p, "rl", &[("foo", "x"), ("bar", "bkthomps")])),
        Some(1)
    );
    assert_eq!(
        per_unit(rule(&p, "rl", &[("foo", "x"), ("bar", "banned")])),
        Some(0)
    );
    // The parent's own rule applies at its depth.
    assert_eq!(per_unit(rule(&p, "rl", &[("foo", "x")])), Some(2));
    // Deeper than configured: nothing.
    assert_eq!(
        p.lookup("rl", &[("foo", "x"), ("bar", "y"), ("z", "1")]),
        Match::NoRule
    );
    let shady = rule(&p, "rl", &[("foo", "x"), ("baz", "shady")]).map(|r| r.shadow_mode);
    assert_eq!(shady, Some(true));
    let not_shady = rule(&p, "rl", &[("foo", "x"), ("baz", "not-so-shady")]);
    assert_eq!(not_shady.map(|r| r.shadow_mode), Some(false));
    assert_eq!(
        rule(&p, "rl", &[("foo", "x"), ("bay", "1")]).map(|r| &r.limit),
        Some(&RuleLimit::Unlimited)
    );
    let account = rule(&p, "rl", &[("category", "account")]);
    assert_eq!(
        account.map(|r| r.replaces.clone()),
        Some(vec!["bkthomps".to_owned(), "fake_name".to_owned()])
    );
    let fake = rule(
        &p,
        "rl",
        &[("source_cluster", "proxy"), ("destination_cluster", "fake")],
    );
    assert_eq!(fake.and_then(|r| r.name.as_deref()), Some("fake_name"));
    let quota = rule(&p, "rl", &[("service", "service_1")]);
    assert_eq!(quota.map(|r| r.quota_mode), Some(true));
    assert_eq!(p.lookup("elsewhere", &[("foo", "x")]), Match::UnknownDomain);
    assert_eq!(p.lookup("rl", &[("nothing", "x")]), Match::NoRule);
    // A placeholder without a rule matches nothing at its own depth.
    assert_eq!(
        p.lookup("rl", &[("source_cluster", "proxy")]),
        Match::NoRule
    );
    // Stat keys follow envoyproxy/ratelimit's.
    assert_eq!(
        rule(&p, "rl", &[("foo", "x"), ("bar", "bkthomps")]).map(|r| r.stat_key.as_str()),
        Some("rl.foo.bar_bkthomps")
    );
}

#[test]
fn most_specific_match_and_per_value_keys() {
    let p = load(&fixture("readme-03.yaml")); // edge_proxy_per_ip
    assert_eq!(
        per_unit(rule(
            &p,
            "edge_proxy_per_ip",
            &[("remote_address", "50.0.0.1")]
        )),
        Some(10)
    );
    assert_eq!(
        per_unit(rule(
            &p,
            "edge_proxy_per_ip",
            &[("remote_address", "50.0.0.5")]
        )),
        Some(0)
    );
    // A key without a value: one counter per value.
    let key = |v: &str| match p.lookup("edge_proxy_per_ip", &[("remote_address", v)]) {
        Match::Rule { key, .. } => key,
        other => panic!("{other:?}"),
    };
    assert_ne!(key("50.0.0.1"), key("50.0.0.2"));
}

#[test]
fn wildcards_and_shared_thresholds() {
    let p = load(&fixture("readme-10.yaml")); // value*
    assert_eq!(
        per_unit(rule(&p, "example9", &[("key1", "valueXYZ")])),
        Some(20)
    );
    assert_eq!(p.lookup("example9", &[("key1", "other")]), Match::NoRule);
    let p = load(&fixture("readme-11.yaml")); // /api/*/action
    assert!(rule(&p, "example9", &[("path", "/api/123/action")]).is_some());
    assert!(rule(&p, "example9", &[("path", "/api/123/other")]).is_none());
    let p = load(&fixture("readme-15.yaml")); // share_threshold
    let key = |k: &str, v: &str| match p.lookup("example11", &[(k, v)]) {
        Match::Rule { key, .. } => key,
        other => panic!("{other:?}"),
    };
    assert_eq!(key("files", "files/a.pdf"), key("files", "files/b.csv"));
    assert_ne!(
        key("files_no_share", "files_no_share/a.pdf"),
        key("files_no_share", "files_no_share/b.csv")
    );
    // An exact value wins over a wildcard at the same level.
    let p = load(
        "domain: d\ndescriptors:\n  - key: k\n    value: a*\n    rate_limit: {unit: second, requests_per_unit: 1}\n  - key: k\n    value: abc\n    rate_limit: {unit: second, requests_per_unit: 2}\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 3}\n",
    );
    assert_eq!(per_unit(rule(&p, "d", &[("k", "abc")])), Some(2));
    assert_eq!(per_unit(rule(&p, "d", &[("k", "abd")])), Some(1));
    assert_eq!(per_unit(rule(&p, "d", &[("k", "x")])), Some(3));
}

#[test]
fn our_fields_units_and_windows() {
    let p = load(
        "domain: ours\ndescriptors:\n  - key: m\n    rate_limit: {unit: month, requests_per_unit: 5}\n  - key: s\n    rate_limit: {unit: MINUTE, requests_per_unit: 5, algorithm: sliding_window}\n  - key: w\n    rate_limit: {unit: week, requests_per_unit: 5, alignment: fixed}\n  - key: y\n    rate_limit: {unit: year, requests_per_unit: 5}\n",
    );
    let limit = |k: &str| match rule(&p, "ours", &[(k, "1")]).map(|r| &r.limit) {
        Some(RuleLimit::Limited(l)) => *l,
        other => panic!("{other:?}"),
    };
    assert_eq!(limit("m").window.to_string(), "1M");
    assert_eq!(limit("s").algorithm, Algorithm::SlidingWindow);
    assert_eq!(limit("s").unit, RateUnit::Minute);
    assert_eq!(
        limit("w").window.alignment(),
        crate::counter::Alignment::Fixed
    );
    assert_eq!(limit("y").unit.proto_number(), 6);
    assert_eq!(RateUnit::from_proto(7), Some(RateUnit::Week));
}

#[test]
fn anchored_windows_reset_relative_to_their_anchor() {
    let p = load(
        "domain: budgets\ndescriptors:\n  - key: a\n    rate_limit: {unit: day, requests_per_unit: 5, alignment: anchored, anchor: 2026-12-01T10:00:00Z}\n  - key: b\n    rate_limit: {unit: hour, requests_per_unit: 5, anchor: 1796119230000}\n  - key: c\n    rate_limit: {unit: week, requests_per_unit: 5, anchor: \"2026-12-01T11:00:00+01:00\"}\n",
    );
    let window = |k: &str| match rule(&p, "budgets", &[(k, "1")]).map(|r| &r.limit) {
        Some(RuleLimit::Limited(l)) => l.window,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        window("a"),
        Window::parse("1d@2026-12-01T10:00:00Z").expect("window")
    );
    assert_eq!(window("a").to_string(), "1d@1970-01-01T10:00:00Z");
    assert_eq!(window("b").to_string(), "1h@1970-01-01T00:00:30Z");
    let c = window("c");
    let anchor = 1_796_119_200_000; // 2026-12-01T10:00:00Z
    assert_eq!(c.start_ms(c.epoch_at(UnixMs::new(anchor))), anchor);
    assert_eq!(
        c.end_ms(c.epoch_at(UnixMs::new(anchor))),
        anchor + 7 * 86_400_000
    );

    let text = "domain: bad\ndescriptors:\n  - key: m\n    rate_limit: {unit: month, requests_per_unit: 1, anchor: 2026-12-01T00:00:00Z}\n  - key: y\n    rate_limit: {unit: year, requests_per_unit: 1, alignment: anchored, anchor: 0}\n  - key: n\n    rate_limit: {unit: day, requests_per_unit: 1, alignment: anchored}\n  - key: f\n    rate_limit: {unit: day, requests_per_unit: 1, alignment: fixed, anchor: 0}\n  - key: t\n    rate_limit: {unit: day, requests_per_unit: 1, anchor: tomorrow}\n";
    let err = Policy::load([("limits.yaml", text)])
        .err()
        .unwrap_or_else(|| panic!("loaded"));
    let problem = |path: &str| {
        err.problems
            .iter()
            .find(|p| p.path == path)
            .map(|p| p.problem.clone())
            .unwrap_or_else(|| panic!("{path} not in {:?}", err.problems))
    };
    assert!(problem("descriptors[0].rate_limit.anchor").contains("Months cannot be anchored"));
    assert!(problem("descriptors[1].rate_limit.anchor").contains("Years cannot be anchored"));
    assert!(problem("descriptors[2].rate_limit.anchor").contains("required"));
    assert!(problem("descriptors[3].rate_limit.anchor").contains("only for an anchored window"));
    assert!(problem("descriptors[4].rate_limit.anchor").contains("invalid anchor"));
}

#[test]
fn a_bad_file_names_every_problem() {
    let text = "domain: bad\ndescriptors:\n  - key: a\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n  - value: x\n  - key: b\n    rate_limit: {unlimited: true, unit: second}\n  - key: c\n    value: plain\n    share_threshold: true\n  - key: c\n    value: plain\n  - key: d\n    colour: blue\n    rate_limit: {unit: month, requests_per_unit: -1, alignment: fixed}\n  - key: e\n    rate_limit:\n      name: me\n      unit: second\n      replaces: [{name: me}, {}]\n";
    let err = Policy::load([("limits.yaml", text)])
        .err()
        .unwrap_or_else(|| panic!("loaded"));
    let paths: Vec<String> = err.problems.iter().map(|p| p.path.clone()).collect();
    for expected in [
        "descriptors[0].rate_limit.unit",
        "descriptors[1].key",
        "descriptors[2].rate_limit.unit",
        "descriptors[3].share_threshold",
        "descriptors[4]",
        "descriptors[5].colour",
        "descriptors[5].rate_limit.requests_per_unit",
        "descriptors[6].rate_limit.replaces[0].name",
        "descriptors[6].rate_limit.replaces[1]",
    ] {
        assert!(
            paths.iter().any(|p| p == expected),
            "{expected} not in {paths:?}"
        );
    }
    assert!(err.problems.iter().all(|p| p.file == "limits.yaml"));
    let text = err.to_string();
    assert!(
        text.contains("invalid rate limit unit 'fortnight'"),
        "{text}"
    );
    assert!(
        text.contains("duplicate descriptor composite key 'bad.c_plain'"),
        "{text}"
    );
    // Duplicate domains across files; invalid YAML.
    let err = Policy::load([
        ("a.yaml", "domain: x\n"),
        ("b.yaml", "domain: x\n"),
        ("c.yaml", "domain: ["),
    ])
    .err()
    .unwrap_or_else(|| panic!("loaded"));
    assert!(
        err.problems
            .iter()
            .any(|p| p.file == "b.yaml" && p.path == "domain"),
        "{err}"
    );
    assert!(
        err.problems
            .iter()
            .any(|p| p.file == "c.yaml" && p.problem.starts_with("invalid YAML")),
        "{err}"
    );
}

#[test]
fn several_documents_in_one_file() {
    let p = Policy::load([(
        "all.yaml",
        "---\ndomain: one\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n---\ndomain: two\n",
    )])
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.domains(), vec!["one", "two"]);
}

#[test]
fn counter_keys_are_injective() {
    let a = counter_key("d", &[("a|b", "c")], &[None]);
    let b = counter_key("d", &[("a", "b|c")], &[None]);
    let c = counter_key("d", &[("a=b", "c")], &[None]);
    assert_ne!(a, b);
    assert_ne!(a, c);
    assert_ne!(b, c);
    assert_eq!(counter_key("d", &[("k", "v")], &[None]), "rls|d|k=v");
}

#[test]
fn token_buckets_carry_their_burst_and_bad_bursts_are_named() {
    let p = load(
        "domain: tb\ndescriptors:\n  - key: t\n    rate_limit: {unit: minute, requests_per_unit: 10, algorithm: token_bucket, burst: 25}\n",
    );
    match rule(&p, "tb", &[("t", "1")]).map(|r| &r.limit) {
        Some(RuleLimit::Limited(l)) => {
            assert_eq!(l.algorithm, Algorithm::token_bucket(25, 10).expect("valid"));
            assert_eq!(l.window.to_string(), "1m");
        }
        other => panic!("{other:?}"),
    }
    let text = "domain: bad\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 10, algorithm: token_bucket}\n  - key: b\n    rate_limit: {unit: second, requests_per_unit: 10, algorithm: token_bucket, burst: 0}\n  - key: c\n    rate_limit: {unit: second, requests_per_unit: 10, algorithm: token_bucket, burst: 31}\n  - key: d\n    rate_limit: {unit: second, requests_per_unit: 10, burst: 5}\n  - key: e\n    rate_limit: {unit: second, requests_per_unit: 10, algorithm: token_bucket, burst: lots}\n  - key: f\n    rate_limit: {unit: second, requests_per_unit: 10, algorithm: bucket}\n";
    let err = Policy::load([("limits.yaml", text)])
        .err()
        .unwrap_or_else(|| panic!("loaded"));
    let problems: Vec<(String, String)> = err
        .problems
        .iter()
        .map(|p| (p.path.clone(), p.problem.clone()))
        .collect();
    for (path, needle) in [
        ("descriptors[0].rate_limit.burst", "required"),
        ("descriptors[1].rate_limit.burst", "at least 1"),
        ("descriptors[2].rate_limit.burst", "above 30"),
        (
            "descriptors[3].rate_limit.burst",
            "only for algorithm: token_bucket",
        ),
        ("descriptors[4].rate_limit.burst", "expected an integer"),
        ("descriptors[5].rate_limit.algorithm", "token_bucket"),
    ] {
        assert!(
            problems
                .iter()
                .any(|(p, m)| p == path && m.contains(needle)),
            "{path}: {needle} not in {problems:?}"
        );
    }
    assert_eq!(problems.len(), 6, "{problems:?}");
}
