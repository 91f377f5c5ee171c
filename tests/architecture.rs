//! Architecture invariants that the compiler does not check on its own.

#![allow(clippy::expect_used, reason = "tests")]

use std::process::Command;

/// The crates a package links (normal dependencies, transitively), from `cargo tree`.
fn linked(package: &str) -> String {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "--locked",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
            package,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_gateway_and_the_simulator_never_link_candle_or_the_engine() {
    for package in [
        "sluice-gateway",
        "sluice-simcloud",
        "sluice-config",
        "sluice-sensitivity",
        "sluice-audit",
    ] {
        let tree = linked(package);
        for forbidden in ["candle-core", "sluice-engine", "sluice-worker"] {
            assert!(
                !tree.lines().any(|l| l.starts_with(&format!("{forbidden} "))),
                "{package} links {forbidden}"
            );
        }
    }
}

#[test]
fn the_simulator_links_no_other_sluice_crate() {
    let tree = linked("sluice-simcloud");
    let sluice: Vec<&str> = tree.lines().filter(|l| l.starts_with("sluice-")).collect();
    assert_eq!(sluice.len(), 1, "{sluice:?}");
}

#[test]
fn the_scanner_is_a_pure_leaf() {
    let tree = linked("sluice-sensitivity");
    let sluice: Vec<&str> = tree.lines().filter(|l| l.starts_with("sluice-")).collect();
    assert_eq!(sluice.len(), 1, "{sluice:?}");
    for forbidden in ["tokio ", "reqwest ", "hyper ", "tracing "] {
        assert!(
            !tree.lines().any(|l| l.starts_with(forbidden)),
            "the scanner links {forbidden}"
        );
    }
}

#[test]
fn the_audit_log_is_a_leaf_without_a_runtime() {
    let tree = linked("sluice-audit");
    let sluice: Vec<&str> = tree.lines().filter(|l| l.starts_with("sluice-")).collect();
    assert_eq!(sluice.len(), 1, "{sluice:?}");
    for forbidden in ["tokio ", "reqwest ", "hyper "] {
        assert!(
            !tree.lines().any(|l| l.starts_with(forbidden)),
            "the audit log links {forbidden}"
        );
    }
}
