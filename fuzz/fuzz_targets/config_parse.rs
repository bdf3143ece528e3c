//! Fuzzes the config loader: any bytes must give a config or typed errors, never a panic. When a config
//! loads, its effective form must load again to the same config (what `check-config` prints is reusable),
//! except for the cluster secret, the Consul token and inline HTTP tokens, which are printed redacted on purpose.
#![no_main]

use bifrost_cluster::config::{effective_json, load_from_str};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(loaded) = load_from_str(text) else {
        return;
    };
    if loaded.config.security.cluster_secret.is_some()
        || loaded.config.discovery.consul_token.is_some()
        || loaded.config.http.auth.tokens.iter().any(|t| {
            matches!(
                t.source,
                bifrost_cluster::config::HttpTokenSource::Inline(_)
            )
        })
    {
        return;
    }
    let effective = effective_json(&loaded.config).expect("a loaded config serializes");
    let again = load_from_str(&effective).expect("the effective config loads again");
    assert_eq!(again.config, loaded.config, "effective config round-trips");
});
