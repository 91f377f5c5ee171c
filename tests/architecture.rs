//! Architecture invariants that the compiler does not check on its own.

#![allow(clippy::expect_used, reason = "tests")]

use std::process::Command;

/// The crates a package links (normal dependencies, transitively), from `cargo tree`.
fn linked(package: &str) -> String {
    linked_pruned(package, &[])
}

/// The crates a package links other than through the packages in `prune`.
fn linked_pruned(package: &str, prune: &[&str]) -> String {
    let mut args = vec![
        "tree",
        "--offline",
        "--locked",
        "-e",
        "normal",
        "--prefix",
        "none",
        "-p",
        package,
    ];
    for p in prune {
        args.extend(["--prune", p]);
    }
    let out = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_gateway_and_the_simulator_never_link_candle_or_the_engine() {
    // Candle enters the gateway only through the personal-data model's crate; the engine and the
    // worker never do.
    let tree = linked("sluice-gateway");
    for forbidden in ["sluice-engine ", "sluice-worker "] {
        assert!(
            !tree.lines().any(|l| l.starts_with(forbidden)),
            "the gateway links {forbidden}"
        );
    }
    let tree = linked_pruned("sluice-gateway", &["sluice-ner"]);
    assert!(
        !tree.lines().any(|l| l.starts_with("candle-")),
        "the gateway links candle other than through sluice-ner"
    );
    assert!(
        linked("sluice-gateway")
            .lines()
            .any(|l| l.starts_with("sluice-ner "))
    );
    for package in [
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

/// The personal-data model's crate links candle (it runs a BERT), never the LLM engine.
#[test]
fn the_personal_data_model_never_links_the_engine() {
    let tree = linked("sluice-ner");
    for forbidden in ["sluice-engine ", "sluice-worker ", "sluice-gateway "] {
        assert!(
            !tree.lines().any(|l| l.starts_with(forbidden)),
            "sluice-ner links {forbidden}"
        );
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

#[test]
fn the_policy_engine_is_pure() {
    let tree = linked("sluice-policy");
    let sluice: Vec<&str> = tree.lines().filter(|l| l.starts_with("sluice-")).collect();
    // Itself, the configuration reader and the scanner's types.
    assert_eq!(sluice.len(), 3, "{sluice:?}");
    for forbidden in [
        "tokio ", "axum ", "http ", "hyper ", "tonic ", "reqwest ", "tower ", "tracing ",
    ] {
        assert!(
            !tree.lines().any(|l| l.starts_with(forbidden)),
            "the policy engine links {forbidden}"
        );
    }
}

/// The source files of a crate's library, test files (`tests.rs`, anything under a `tests/` folder) left
/// out, each with its path relative to `src`.
fn source_files(krate: &str) -> Vec<(std::path::PathBuf, std::path::PathBuf)> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(krate)
        .join("src");
    let mut out = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            let name = path.file_name().expect("name").to_string_lossy().into_owned();
            if path.is_dir() {
                if name != "tests" {
                    stack.push(path);
                }
            } else if name.ends_with(".rs") && name != "tests.rs" {
                let rel = path.strip_prefix(&src).expect("under src").to_path_buf();
                out.push((path, rel));
            }
        }
    }
    out.sort();
    out
}

/// A crate's modules: (module path, code without comments and without its `#[cfg(test)]` tail).
fn modules(krate: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, rel) in source_files(krate) {
        let mut parts: Vec<String> = rel
            .with_extension("")
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
            parts.pop();
        }
        let text = std::fs::read_to_string(&path).expect("read");
        // Unit tests sit at the end of a file behind `#[cfg(test)]`; they are not the module's design.
        let text = text.split("\n#[cfg(test)]").next().unwrap_or_default();
        // Comments name modules in prose and doc links; only code imports.
        let text: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .map(|l| format!("{l}\n"))
            .collect();
        out.push((parts.join("::"), text));
    }
    out.sort();
    out
}

/// The paths a file names through `crate::`, `super::` and `self::`, braces expanded, resolved to
/// absolute segments.
fn references(module: &str, text: &str) -> Vec<Vec<String>> {
    fn ident(s: &str) -> usize {
        s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len())
    }
    // Expands `a::{b, c::{d}}` at the start of `s` into paths.
    fn tree(s: &str, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
        let mut path = prefix.to_vec();
        let mut i = 0;
        loop {
            let rest = &s[i..];
            if let Some(inner) = rest.strip_prefix('{') {
                let mut j = 0;
                loop {
                    let item = inner[j..].trim_start();
                    j = inner.len() - item.len();
                    if item.starts_with('}') {
                        return i + 1 + j + 1;
                    }
                    j += tree(item, &path, out);
                    let after = inner[j..].trim_start();
                    j = inner.len() - after.len();
                    if let Some(a) = after.strip_prefix(',') {
                        j = inner.len() - a.len();
                    } else if !after.starts_with('}') {
                        return i + 1 + j;
                    }
                }
            }
            let n = ident(rest);
            if n == 0 {
                out.push(path);
                return i;
            }
            path.push(rest[..n].to_owned());
            i += n;
            if s[i..].starts_with("::") {
                i += 2;
            } else {
                out.push(path);
                return i;
            }
        }
    }
    let here: Vec<String> = if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").map(str::to_owned).collect()
    };
    let parent = {
        let mut p = here.clone();
        p.pop();
        p
    };
    let mut out = Vec::new();
    for (anchor, base) in [
        ("crate::", Vec::new()),
        ("super::", parent),
        ("self::", here.clone()),
    ] {
        let mut from = 0;
        while let Some(at) = text[from..].find(anchor) {
            let start = from + at;
            from = start + anchor.len();
            let before = text[..start].chars().last();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            tree(&text[from..], &base, &mut out);
        }
    }
    out
}

/// A crate's module graph: an edge from each module to the deepest module each of its references
/// names (a reference to an item of a module is an edge to that module; declaring `mod x;` is not).
fn module_graph(krate: &str) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let files = modules(krate);
    let known: std::collections::BTreeSet<&str> = files.iter().map(|(m, _)| m.as_str()).collect();
    let mut graph = std::collections::BTreeMap::new();
    for (module, text) in &files {
        let mut edges = std::collections::BTreeSet::new();
        for path in references(module, text) {
            let target = (0..=path.len())
                .rev()
                .map(|n| path[..n].join("::"))
                .find(|p| known.contains(p.as_str()))
                .unwrap_or_default();
            if &target != module {
                edges.insert(target);
            }
        }
        graph.insert(module.clone(), edges);
    }
    graph
}

/// A cycle in the graph, if there is one.
fn find_cycle(
    graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        state: &mut std::collections::BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let at = stack.iter().position(|s| s == next).unwrap_or_default();
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(next, graph, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = std::collections::BTreeMap::new();
    for node in graph.keys() {
        if !state.contains_key(node.as_str())
            && let Some(c) = visit(node, graph, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

/// The gateway's and the policy's modules import one another in one direction only: a request's steps
/// (intake, policy, dispatch, backend, wire, accounting) never import a later step, and no module
/// imports one that imports it back, through any number of others.
#[test]
fn the_gateway_and_the_policy_have_no_module_cycles() {
    for krate in ["crates/gateway", "crates/policy"] {
        let graph = module_graph(krate);
        assert!(graph.len() > 5, "{krate}: {graph:?}");
        if let Some(cycle) = find_cycle(&graph) {
            panic!("{krate}: module cycle {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let graph = std::collections::BTreeMap::from([
        ("a".to_owned(), std::collections::BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), std::collections::BTreeSet::from(["c".to_owned()])),
        ("c".to_owned(), std::collections::BTreeSet::from(["a".to_owned()])),
    ]);
    assert_eq!(find_cycle(&graph).map(|c| c.len()), Some(4));
    let refs = references(
        "server::chat",
        "use super::app::App;\nuse crate::{error::{self, ApiError}, wire};\nlet x = crate::cost::usd(1);",
    );
    assert!(
        refs.contains(&vec!["server".into(), "app".into(), "App".into()]),
        "{refs:?}"
    );
    assert!(
        refs.contains(&vec!["error".into(), "ApiError".into()]),
        "{refs:?}"
    );
    assert!(refs.contains(&vec!["wire".into()]), "{refs:?}");
    assert!(refs.contains(&vec!["cost".into(), "usd".into()]), "{refs:?}");
}

/// A file over about 600 lines is doing two jobs.
#[test]
fn no_source_file_of_the_gateway_or_the_policy_is_over_600_lines() {
    for krate in ["crates/gateway", "crates/policy"] {
        let files = source_files(krate);
        assert!(files.len() > 5, "{krate}");
        for (path, _) in files {
            let lines = std::fs::read_to_string(&path).expect("read").lines().count();
            assert!(lines <= 600, "{} has {lines} lines", path.display());
        }
    }
}

/// A request's steps through the gateway, in order: none imports a later one, except that the dispatcher
/// drives the backends (through their trait). The handler in `server` connects them.
#[test]
fn no_step_of_a_request_imports_a_later_one() {
    let steps = ["intake", "dispatch", "backend", "wire", "accounting"];
    let step_of = |module: &str| {
        let top = module.split("::").next().unwrap_or_default();
        steps.iter().position(|s| *s == top)
    };
    let graph = module_graph("crates/gateway");
    let mut checked = 0;
    for (from, targets) in &graph {
        let Some(i) = step_of(from) else { continue };
        for to in targets {
            let Some(j) = step_of(to) else { continue };
            checked += 1;
            let allowed = j <= i || (steps[i], steps[j]) == ("dispatch", "backend");
            assert!(allowed, "{from} imports {to}, a later step");
        }
    }
    assert!(checked > 5, "{checked}");
}

/// Accounting is the only writer of what is recorded about requests: no other module of the gateway
/// touches a metric, the observed stats or the cost counters.
#[test]
fn only_accounting_writes_metrics_stats_and_cost() {
    let writes = [
        "with_label_values",
        ".inc()",
        ".inc_by(",
        ".observe(",
        "stats.record",
        "cost.add(",
        "audit.send(",
        "log.send(",
    ];
    let files = modules("crates/gateway");
    assert!(files.iter().any(|(m, _)| m == "accounting"));
    for (module, text) in &files {
        if module == "accounting" || module.starts_with("accounting::") || module == "metrics" {
            continue;
        }
        for w in writes {
            assert!(
                !text.contains(w),
                "{module} writes a record ({w}): only accounting may"
            );
        }
    }
}
