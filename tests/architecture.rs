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

/// Only the discovery crate knows Kubernetes: no other crate depends on kube or k8s-openapi, and no
/// other source file names them.
#[test]
fn only_the_discovery_crate_knows_kubernetes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let crates = std::fs::read_dir(root.join("crates")).expect("crates/");
    let mut checked = 0;
    for entry in crates {
        let dir = entry.expect("entry").path();
        let name = dir.file_name().expect("name").to_string_lossy().into_owned();
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("Cargo.toml");
        let mentions = |text: &str| {
            text.contains("kube") || text.contains("k8s-openapi") || text.contains("k8s_openapi")
        };
        if name == "discovery" {
            assert!(manifest.contains("\nkube.workspace"), "{manifest}");
            continue;
        }
        let deps = manifest.split("[dev-dependencies]").next().unwrap_or_default();
        assert!(!mentions(deps), "crates/{name} depends on Kubernetes crates");
        let mut stack = vec![dir.join("src")];
        while let Some(d) = stack.pop() {
            for f in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = f.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&p).expect("source");
                    assert!(
                        !text.contains("kube::") && !text.contains("k8s_openapi"),
                        "{} uses Kubernetes types",
                        p.display()
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} source files read");
}
