//! The code's shape, checked: data and calls flow one way.
//!
//! - No module of the crate (a file: `src/a.rs`, `src/a/b.rs`) uses one that uses it back
//!   (`crate::a::..` in `b` and `crate::b::..` in `a`, directly or through others).
//! - The reactor's files (`src/reactor/*.rs`, each an `impl Reactor` part) call each other in
//!   one direction: the loop at the top, what reads and routes below it, what decides below
//!   that, and at the bottom what queues on a connection (`replies.rs`). A method is placed by
//!   who calls it, so a new call upward shows up here instead of as a circle to untangle later.
//!
//! Read from the source text (comments and tests left out); no sockets, no binary.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The source text of a file without its tests and comment lines.
fn code_of(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap();
    let text = text.split("#[cfg(test)]").next().unwrap();
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Identifiers following `marker` in `code` (`crate::` -> module names, `self.` -> methods
/// when followed by `(`).
fn names_after<'a>(code: &'a str, marker: &str, call: bool) -> Vec<&'a str> {
    let mut names = Vec::new();
    for (at, _) in code.match_indices(marker) {
        let rest = &code[at + marker.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end > 0 && (!call || rest[end..].starts_with('(')) {
            names.push(&rest[..end]);
        }
    }
    names
}

/// A cycle in `graph`, if there is one (depth-first search, colours).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, bool>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(node) {
            Some(true) => {
                let from = path.iter().position(|n| n == node).unwrap();
                let mut cycle = path[from..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            Some(false) => return None,
            None => {}
        }
        state.insert(node.to_string(), true);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, state, path) {
                return Some(cycle);
            }
        }
        path.pop();
        state.insert(node.to_string(), false);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut state, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

/// The file that defines `crate::a::b::c` (or the nearest module on its path): `src/a/b.rs`,
/// `src/a/b/mod.rs`, `src/a.rs`... `None` if it is not a module of the crate.
fn file_of(src: &Path, path: &[&str], files: &BTreeSet<PathBuf>) -> Option<PathBuf> {
    (1..=path.len()).rev().find_map(|n| {
        let base = path[..n]
            .iter()
            .fold(src.to_path_buf(), |dir, part| dir.join(part));
        [base.with_extension("rs"), base.join("mod.rs")]
            .into_iter()
            .find(|file| files.contains(file))
    })
}

/// Every `crate::` path in `code`, `use crate::a::{b, c::d}` read as `a::b` and `a::c::d`.
fn crate_paths(code: &str) -> Vec<Vec<&str>> {
    let mut paths = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let prefix: Vec<&str> = rest[..end].split("::").filter(|p| !p.is_empty()).collect();
        if rest[end..].starts_with('{') {
            let group = &rest[end + 1..rest[end..].find('}').map_or(rest.len(), |c| end + c)];
            for item in group.split(',') {
                let item = item.split(" as ").next().unwrap().trim();
                let mut path = prefix.clone();
                path.extend(item.split("::").filter(|p| !p.is_empty() && *p != "{"));
                paths.push(path);
            }
        }
        paths.push(prefix);
    }
    paths
}

#[test]
fn no_module_uses_one_that_uses_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut list = Vec::new();
    rust_files(&src, &mut list);
    let files: BTreeSet<PathBuf> = list.into_iter().collect();
    let name = |path: &Path| path.strip_prefix(&src).unwrap().display().to_string();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        if ["main.rs", "lib.rs"].contains(&name(file).as_str()) {
            continue;
        }
        let code = code_of(file);
        for path in crate_paths(&code) {
            if let Some(used) = file_of(&src, &path, &files)
                && &used != file
            {
                graph.entry(name(file)).or_default().insert(name(&used));
            }
        }
    }
    assert!(
        graph
            .get("reactor/mod.rs")
            .is_some_and(|uses| uses.contains("coordinator/mod.rs")),
        "the crate's uses were not read: {graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("modules use each other in a circle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_reactors_files_call_each_other_one_way() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/reactor");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    let name = |path: &Path| path.file_name().unwrap().to_str().unwrap().to_string();
    let code: BTreeMap<String, String> = files.iter().map(|p| (name(p), code_of(p))).collect();
    // Which file defines each method (names defined in several files are left out: they
    // are not the reactor's, e.g. a type's own `new`).
    let mut defined_in: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (file, text) in &code {
        for method in names_after(text, "fn ", false) {
            defined_in.entry(method).or_default().insert(file);
        }
    }
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, text) in &code {
        for method in names_after(text, "self.", true) {
            if let Some(owners) = defined_in.get(method)
                && owners.len() == 1
            {
                let owner = owners.first().unwrap();
                if owner != file {
                    graph
                        .entry(file.clone())
                        .or_default()
                        .insert(owner.to_string());
                }
            }
        }
    }
    assert!(
        graph
            .get("mod.rs")
            .is_some_and(|calls| calls.contains("replies.rs")),
        "the reactor's calls were not read: {graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "the reactor's files call each other in a circle: {}",
            cycle.join(" -> ")
        );
    }
}
