//! A normal `demo` run (nodes start before they have met, traffic, a graceful stop) logs no `WARN` or `ERROR`
//! line: those levels are kept for what an operator must act on. Run through the binary, as a new user would.

use std::process::Command;

/// Removes ANSI colour sequences (`ESC [ ... m`), which the log formatter writes even into a pipe.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn a_normal_demo_run_logs_no_warn_or_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_bifrost-cluster"))
        .args(["demo", "--nodes", "3", "--duration", "6s"])
        // INFO too, so the test also sees that the start and stop lines are still logged (only their level
        // changed).
        .env("RUST_LOG", "info")
        .output()
        .expect("running the demo binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = strip_ansi(&String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "demo failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let loud: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(
        loud.is_empty(),
        "a normal demo run logged {} WARN/ERROR line(s):\n{}",
        loud.len(),
        loud.join("\n")
    );
    // The logs were captured (each node logs its starting cluster health once, at INFO here: HEALTHY, or NOT
    // HEALTHY while it has met nobody), and the demo's last word.
    let start_lines = stderr
        .lines()
        .filter(|l| l.contains(" INFO ") && l.contains("cluster health: "))
        .count();
    assert!(
        start_lines >= 3,
        "expected each of the 3 nodes to log its cluster health at INFO:\n{stderr}"
    );
    assert!(
        stdout.contains("all nodes left gracefully"),
        "the demo did not report a graceful stop:\n{stdout}"
    );
}
