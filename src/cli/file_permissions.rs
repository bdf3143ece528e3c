//! Warnings about secret-bearing files that other users of the machine can read.
//!
//! Guarantees: every file that holds key material or an inline secret and whose mode lets "others" read it
//! (or, for private keys, the group too) yields one warning naming the file, its mode and the fix. Files that
//! cannot be inspected are skipped here: the loader that opens them reports that error itself.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use bifrost_cluster::config::ClusterConfig;

/// Mode bits that make a file readable by other users.
const OTHERS_READ: u32 = 0o004;
/// Mode bits that make a file readable by its group.
const GROUP_READ: u32 = 0o040;

/// One warning per secret-bearing file readable beyond its owner: the config file when it carries the cluster
/// secret inline, and `security.key_file`.
pub fn warnings(config_path: &Path, config: &ClusterConfig) -> Vec<String> {
    let mut out = Vec::new();
    if config.security.cluster_secret.is_some() {
        check(
            config_path,
            "the config file (it holds security.cluster_secret)",
            OTHERS_READ,
            &mut out,
        );
    }
    if let Some(key) = &config.security.key_file {
        check(
            key,
            "cluster_config.security.key_file",
            OTHERS_READ | GROUP_READ,
            &mut out,
        );
    }
    out
}

fn check(path: &Path, what: &str, forbidden: u32, out: &mut Vec<String>) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & forbidden != 0 {
        let who = if mode & OTHERS_READ != 0 {
            "other users"
        } else {
            "its group"
        };
        out.push(format!(
            "{}: {what} is readable by {who} (mode {mode:04o}); restrict it with `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_key_and_secret_files_are_named() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let config_path = dir.path().join("config.json");
        let key = dir.path().join("node.key");
        let write = |p: &Path, mode: u32| {
            std::fs::write(p, "x").unwrap_or_else(|e| panic!("{e}"));
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                .unwrap_or_else(|e| panic!("{e}"));
        };
        let mut config = ClusterConfig::default();
        config.security.cluster_secret =
            bifrost_cluster::config::ClusterSecret::new("0123456789abcdef").ok();
        config.security.key_file = Some(key.clone());
        write(&config_path, 0o644);
        write(&key, 0o640);
        let found = warnings(&config_path, &config);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].contains("mode 0644") && found[0].contains("other users"),
            "{found:?}"
        );
        assert!(
            found[1].contains("key_file") && found[1].contains("its group"),
            "{found:?}"
        );
        write(&config_path, 0o600);
        write(&key, 0o600);
        assert!(warnings(&config_path, &config).is_empty());
    }
}
