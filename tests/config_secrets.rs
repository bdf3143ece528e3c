//! Secrets and the warnings around them, through the binary: `check-config` warns about a weak cluster secret
//! (the reference's configs must still load), about `insecure_dev`, and about secret-bearing files that other
//! users can read; `run` refuses a weak secret with exit code 2, naming the field or the environment variable.
//! No network: every `run` here stops at the config check. (A discovery backend missing from the build is a
//! unit test in `config::validate`: every backend is in the build this runs against.)

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const STRONG: &str = "vN3kQ8zR1xW5mT9bY2cL7pH4sJ6dF0gA+eU/oIq1KjM=";

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bifrost-cluster"));
    cmd.env_remove("BIFROST_CLUSTER_SECRET")
        .env_remove("BIFROST_CONFIG");
    cmd
}

fn write_config(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `check-config FILE`, which must load (exit 0); its stderr (the warnings).
fn check_config(path: &Path) -> String {
    let check = bin()
        .arg("check-config")
        .arg(path)
        .output()
        .expect("check-config");
    assert_eq!(check.status.code(), Some(0), "{check:?}");
    stderr(&check)
}

/// `run --config FILE`, which must refuse the config (exit 2); its stderr.
fn run_refused(path: &Path, env_secret: Option<&str>) -> String {
    let mut cmd = bin();
    cmd.args(["run", "--bind-ip", "127.0.0.1", "--config"])
        .arg(path);
    if let Some(secret) = env_secret {
        cmd.env("BIFROST_CLUSTER_SECRET", secret);
    }
    let run = cmd.output().expect("run");
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    stderr(&run)
}

fn with_secret(secret: &str) -> String {
    format!(
        r#"{{ "cluster_config": {{ "enabled": true, "peers": ["127.0.0.1:1"],
             "http": {{ "listen": "127.0.0.1:0" }}, "security": {{ "cluster_secret": "{secret}" }} }} }}"#
    )
}

#[test]
fn weak_secrets_load_with_a_warning_and_run_refuses_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    for weak in ["aaaaaaaaaaaaaaaa", "password12345678"] {
        let path = write_config(dir.path(), "weak.json", &with_secret(weak), 0o600);
        let err = check_config(&path);
        assert!(
            err.contains("warning: cluster_config.security.cluster_secret: too weak"),
            "{weak}: {err}"
        );
        assert!(err.contains("openssl rand -base64 32"), "{err}");
        assert!(
            !err.contains(weak),
            "the secret itself must never be printed: {err}"
        );

        let err = run_refused(&path, None);
        assert!(
            err.contains("cluster_config.security.cluster_secret"),
            "{err}"
        );
        assert!(!err.contains(weak), "{err}");
    }
    // The same refusal for the environment variable.
    let path = write_config(
        dir.path(),
        "env.json",
        r#"{ "cluster_config": { "enabled": true, "peers": ["127.0.0.1:1"], "http": { "listen": "127.0.0.1:0" } } }"#,
        0o600,
    );
    let err = run_refused(&path, Some("password12345678"));
    assert!(err.contains("BIFROST_CLUSTER_SECRET: too weak"), "{err}");
}

#[test]
fn a_strong_secret_draws_no_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), "strong.json", &with_secret(STRONG), 0o600);
    let err = check_config(&path);
    assert!(!err.contains("cluster_secret"), "{err}");
}

#[test]
fn a_config_with_an_inline_secret_readable_by_others_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), "open.json", &with_secret(STRONG), 0o644);
    let err = check_config(&path);
    assert!(err.contains("readable by other users (mode 0644)"), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn insecure_dev_is_a_loud_warning_in_check_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        dir.path(),
        "insecure.json",
        r#"{ "cluster_config": { "enabled": true, "peers": ["127.0.0.1:1"], "security": { "insecure_dev": true } } }"#,
        0o600,
    );
    let err = check_config(&path);
    assert!(
        err.contains("warning: cluster_config.security.insecure_dev: INSECURE"),
        "{err}"
    );
}

/// `check-config` prints the Consul token as `"<redacted>"`; loading that output again must name the field
/// instead of sending the placeholder to Consul as a token.
#[test]
fn the_redacted_consul_token_placeholder_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = r#"{ "cluster_config": { "enabled": true, "discovery": { "enabled": true,
        "type": "consul", "service_name": "bifrost", "consul_token": "a-real-token" } } }"#;
    let path = write_config(dir.path(), "consul.json", config, 0o600);
    let printed = bin()
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("check-config");
    assert_eq!(printed.status.code(), Some(0), "{printed:?}");
    let effective = String::from_utf8_lossy(&printed.stdout).into_owned();
    assert!(
        effective.contains("\"consul_token\": \"<redacted>\""),
        "{effective}"
    );
    assert!(!effective.contains("a-real-token"), "{effective}");

    let again = write_config(dir.path(), "again.json", &effective, 0o600);
    let refused = bin()
        .arg("check-config")
        .arg(&again)
        .output()
        .expect("check-config");
    assert_ne!(refused.status.code(), Some(0), "{refused:?}");
    let err = stderr(&refused);
    assert!(
        err.contains("cluster_config.discovery.consul_token"),
        "{err}"
    );
    assert!(err.contains("redacted placeholder"), "{err}");
}
