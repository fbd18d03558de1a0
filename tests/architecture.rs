//! The shape of the code, checked: no module under `src/proxy/` (nor in
//! `mesh-ctl`) uses one that uses it back, directly or around a circle.
//! Shared helpers live below both users, never beside them.
//!
//! A module is a file (`a/b.rs` or `a/b/mod.rs` is `a::b`); it depends on
//! every module a `crate::`, `super::` or `self::` path in it names (in
//! `use` items or inline), tests excluded. A parent's `mod child;` is not
//! a use; its `pub use child::X` is.

// Test code: real processes on the wall clock, and unwrap() as assertion.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`proxy::outbound::http`) → file.
fn modules(src: &Path, under: &str) -> BTreeMap<String, PathBuf> {
    let mut found = BTreeMap::new();
    let mut stack = vec![src.join(under)];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts
                .last()
                .is_some_and(|p| p == "mod" || p == "main" || p == "lib")
            {
                parts.pop();
            }
            if parts.iter().any(|p| p == "tests") {
                continue;
            }
            found.insert(parts.join("::"), path);
        }
    }
    found
}

/// The code, without comment lines and without the test module.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    // The test module: `mod tests {` (or `mod tests;`) under `#[cfg(test)]`.
    let cut = text.match_indices("mod tests").find(|(i, _)| {
        let before = &text[..*i];
        let from = before.len().saturating_sub(80);
        before[from..].contains("#[cfg(test)]")
    });
    let text = match cut {
        Some((i, _)) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path in `code` that starts at `crate`, `super` or `self`, with
/// brace groups expanded one level (`a::{b, c::d}` → `a::b`, `a::c`).
fn paths(code: &str) -> Vec<Vec<String>> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let starts_word = i == 0 || !is_ident(chars[i - 1]) && chars[i - 1] != ':';
        if !starts_word || !is_ident(chars[i]) {
            i += 1;
            continue;
        }
        let (mut segs, mut j) = (Vec::new(), i);
        loop {
            let start = j;
            while j < chars.len() && is_ident(chars[j]) {
                j += 1;
            }
            segs.push(chars[start..j].iter().collect::<String>());
            if chars.get(j) == Some(&':') && chars.get(j + 1) == Some(&':') {
                j += 2;
                if chars.get(j).is_some_and(|c| is_ident(*c)) {
                    continue;
                }
                if chars.get(j) == Some(&'{') {
                    let mut depth = 0;
                    let mut item = String::new();
                    let mut items = Vec::new();
                    while j < chars.len() {
                        let c = chars[j];
                        j += 1;
                        match c {
                            '{' => {
                                depth += 1;
                                if depth == 1 {
                                    continue;
                                }
                            }
                            '}' => {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            ',' if depth == 1 => {
                                items.push(std::mem::take(&mut item));
                                continue;
                            }
                            _ => {}
                        }
                        item.push(c);
                    }
                    items.push(item);
                    for it in items {
                        let first: String =
                            it.trim().chars().take_while(|c| is_ident(*c)).collect();
                        if !first.is_empty() {
                            let mut p = segs.clone();
                            p.push(first);
                            out.push(p);
                        }
                    }
                    segs.clear();
                }
            }
            break;
        }
        if !segs.is_empty() {
            out.push(segs);
        }
        i = j.max(i + 1);
    }
    // `pub(super)` and friends are visibility, not paths.
    out.retain(|p| p.len() > 1);
    out
}

/// The module a path names, from module `cur`: its longest prefix that is
/// a module.
fn resolve(
    cur: &str,
    path: &[String],
    mods: &BTreeMap<String, PathBuf>,
    root: &str,
) -> Option<String> {
    let mut base: Vec<&str> = if cur.is_empty() {
        vec![]
    } else {
        cur.split("::").collect()
    };
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base = if root.is_empty() { vec![] } else { vec![root] };
            rest = &rest[1..];
        }
        Some("super") => {
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        Some("self") => rest = &rest[1..],
        // A child module named without `self::` (in `use child::X`).
        _ => {}
    }
    let mut best = None;
    for n in 0..=rest.len() {
        let mut cand: Vec<&str> = base.clone();
        cand.extend(rest[..n].iter().map(String::as_str));
        let name = cand.join("::");
        if mods.contains_key(&name) {
            best = Some(name);
        }
    }
    best
}

/// Modules that take part in a cycle, each with its uses inside it.
fn cycles(src: &Path, under: &str, root: &str) -> Vec<String> {
    let mods = modules(src, under);
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, file) in &mods {
        let code = code(file);
        let deps = uses.entry(m.clone()).or_default();
        for p in paths(&code) {
            let plain = !matches!(p[0].as_str(), "crate" | "super" | "self");
            // A bare `a::b` names a module only if `a` is a child of `m`.
            if plain && !mods.contains_key(&format!("{m}::{}", p[0])) {
                continue;
            }
            if let Some(d) = resolve(m, &p, &mods, root) {
                if d != *m && d.starts_with(under) {
                    deps.insert(d);
                }
            }
        }
    }
    // Tarjan's strongly connected components.
    struct Walk<'a> {
        uses: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        found: Vec<Vec<&'a str>>,
    }
    fn visit<'a>(w: &mut Walk<'a>, v: &'a str) {
        let n = w.index.len();
        w.index.insert(v, n);
        w.low.insert(v, n);
        w.stack.push(v);
        w.on.insert(v);
        let uses = w.uses;
        for d in uses.get(v).into_iter().flatten() {
            let d = d.as_str();
            if !w.index.contains_key(d) {
                visit(w, d);
                let l = w.low[d].min(w.low[v]);
                w.low.insert(v, l);
            } else if w.on.contains(d) {
                let l = w.index[d].min(w.low[v]);
                w.low.insert(v, l);
            }
        }
        if w.low[v] == w.index[v] {
            let mut comp = Vec::new();
            while let Some(x) = w.stack.pop() {
                w.on.remove(x);
                comp.push(x);
                if x == v {
                    break;
                }
            }
            if comp.len() > 1 {
                w.found.push(comp);
            }
        }
    }
    let mut w = Walk {
        uses: &uses,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        found: Vec::new(),
    };
    for m in uses.keys() {
        if !w.index.contains_key(m.as_str()) {
            visit(&mut w, m);
        }
    }
    w.found
        .iter()
        .flat_map(|comp| {
            comp.iter().map(|m| {
                let inside: Vec<&String> = uses[*m]
                    .iter()
                    .filter(|d| comp.contains(&d.as_str()))
                    .collect();
                format!("{m} uses {inside:?}")
            })
        })
        .collect()
}

#[test]
fn no_module_in_the_proxy_uses_one_that_uses_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = cycles(&src, "proxy", "");
    assert!(
        found.is_empty(),
        "cycles in src/proxy:\n{}",
        found.join("\n")
    );
    // The checker sees uses at all (it is not vacuously green).
    assert!(modules(&src, "proxy").len() > 30);
}

#[test]
fn no_module_in_mesh_ctl_uses_one_that_uses_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("mesh-ctl/src");
    let found = cycles(&src, "", "");
    assert!(
        found.is_empty(),
        "cycles in mesh-ctl:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_checker_finds_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("proxy")).unwrap();
    std::fs::write(src.join("proxy/mod.rs"), "mod a;\nmod b;\nmod c;\n").unwrap();
    std::fs::write(src.join("proxy/a.rs"), "use super::b::X;\n").unwrap();
    std::fs::write(src.join("proxy/b.rs"), "use crate::proxy::{c::Y, a};\n").unwrap();
    std::fs::write(src.join("proxy/c.rs"), "fn f() { super::a::g() }\n").unwrap();
    let mut found = cycles(src, "proxy", "");
    found.sort();
    assert_eq!(
        found,
        [
            "proxy::a uses [\"proxy::b\"]",
            "proxy::b uses [\"proxy::a\", \"proxy::c\"]",
            "proxy::c uses [\"proxy::a\"]",
        ]
    );
}
