//! Keeps the crate's modules free of import cycles: reads `src/`, builds the graph of
//! module-to-module paths (`crate::a::b`, `super::x`, a child's name in a `use`), one node
//! per file and per inline `mod tests`, and fails on any cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Module path ("flow::request", "" for the crate root) and source of every module.
fn modules(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let module = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}::{name}")
        };
        if path.is_dir() {
            modules(&path, &module, out);
            continue;
        }
        let module = if name == "lib" || name == "mod" {
            prefix.to_string()
        } else {
            module
        };
        let text: String = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        match text.find("\nmod tests {") {
            Some(at) => {
                out.insert(format!("{module}::tests"), text[at..].to_string());
                out.insert(module, text[..at].to_string());
            }
            None => {
                out.insert(module, text);
            }
        }
    }
}

/// The longest module path that `segments` starts with.
fn resolve(mods: &BTreeMap<String, String>, segments: &[&str]) -> Option<String> {
    (1..=segments.len())
        .rev()
        .map(|n| segments[..n].join("::"))
        .find(|p| mods.contains_key(p))
}

/// The `::`-separated identifiers after `at` (`a::b::{c, d}` gives `a::b::c` and `a::b::d`).
fn paths_after(text: &str) -> Vec<Vec<&str>> {
    let ident = |s: &str| {
        s.find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(s.len())
    };
    let mut segs = Vec::new();
    let mut rest = text;
    while let Some(r) = rest.strip_prefix("::") {
        if let Some(group) = r.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            return inner
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    let mut p = segs.clone();
                    p.push(&s[..ident(s)]);
                    p
                })
                .collect();
        }
        let n = ident(r);
        segs.push(&r[..n]);
        rest = &r[n..];
    }
    vec![segs]
}

fn graph(mods: &BTreeMap<String, String>) -> Graph {
    let mut g = Graph::new();
    for (module, text) in mods {
        let mut to = BTreeSet::new();
        let parent: Vec<&str> = module.split("::").collect();
        let parent = &parent[..parent.len().saturating_sub(1)];
        for (at, _) in text.match_indices("crate::") {
            for p in paths_after(&text[at + 5..]) {
                to.extend(resolve(mods, &p));
            }
        }
        for (at, _) in text.match_indices("super::") {
            for p in paths_after(&text[at + 5..]) {
                let full: Vec<&str> = parent.iter().copied().chain(p).collect();
                to.extend(resolve(mods, &full).or_else(|| Some(parent.join("::"))));
            }
        }
        for line in text.lines().map(str::trim) {
            let Some(u) = line
                .strip_prefix("use ")
                .or_else(|| line.strip_prefix("pub(crate) use "))
            else {
                continue;
            };
            let child = &u[..u.find("::").unwrap_or(0)];
            let full = if module.is_empty() {
                child.to_string()
            } else {
                format!("{module}::{child}")
            };
            if !child.is_empty() && mods.contains_key(&full) {
                to.insert(full);
            }
        }
        to.remove(module);
        to.remove("");
        g.insert(module.clone(), to);
    }
    g
}

/// A cycle through `from`, if any (depth-first).
fn cycle(
    g: &Graph,
    from: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(i) = path.iter().position(|m| m == from) {
        return Some(path[i..].to_vec());
    }
    if !done.insert(from.to_string()) {
        return None;
    }
    path.push(from.to_string());
    for next in g.get(from).into_iter().flatten() {
        if let Some(c) = cycle(g, next, path, done) {
            return Some(c);
        }
    }
    path.pop();
    None
}

fn cycles(g: &Graph) -> Option<Vec<String>> {
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|m| cycle(g, m, &mut Vec::new(), &mut done))
}

#[test]
fn modules_have_no_import_cycles() {
    let mut mods = BTreeMap::new();
    modules(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        "",
        &mut mods,
    );
    let g = graph(&mods);
    assert!(g["auth"].contains("cache"), "the graph sees edges: {g:?}");
    assert!(g["flow::request"].contains("flow::worker"), "{g:?}");
    assert_eq!(cycles(&g), None, "{g:#?}");
}

#[test]
fn a_cycle_is_found() {
    let mods: BTreeMap<String, String> = [
        ("a", "use crate::b::X;"),
        ("b", "fn f() { crate::c::g() }"),
        ("c", "use super::{a, b};"),
        ("c::tests", "use super::*;"),
    ]
    .into_iter()
    .map(|(m, t)| (m.to_string(), t.to_string()))
    .collect();
    let g = graph(&mods);
    assert_eq!(g["c::tests"], BTreeSet::from(["c".to_string()]));
    assert!(cycles(&g).is_some(), "{g:?}");
}
