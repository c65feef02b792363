//! The module graph of a crate, drawn from its imports: which file uses which, its layers, and
//! any import cycle (docs/architecture.md is drawn from `cargo xtask graph`; a unit test keeps
//! every crate of the workspace free of cycles).
//!
//! A file's edges are the crate modules it names: `use crate::a::b`, `crate::a::b::f()`,
//! `super::x`, and a child module it declares and then names (`mod x;` ... `x::f()`). Each path
//! goes to the longest prefix that is a module with a file of its own. Code after the file's
//! `#[cfg(test)]` test module is not read: tests may use anything.

use anyhow::{Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`""` for the crate root, `a::b`) → the modules it imports.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// The module a source file under `src` is: `lib.rs`/`main.rs` the root, `a/mod.rs` `a`,
/// `a/b.rs` `a::b`; `None` for files that are not modules (`bin/`, build scripts).
fn module_of(rel: &Path) -> Option<String> {
    let parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let (last, dirs) = parts.split_last()?;
    if dirs.first().is_some_and(|d| d == "bin") {
        return None;
    }
    let stem = last.strip_suffix(".rs")?;
    let mut path: Vec<&str> = dirs.iter().map(String::as_str).collect();
    if !matches!(stem, "lib" | "main" | "mod") || !dirs.is_empty() && stem != "mod" {
        path.push(stem);
    }
    Some(path.join("::"))
}

/// The part of a file that is not its unit tests.
fn without_tests(text: &str) -> &str {
    let mut at = 0;
    while let Some(i) = text[at..].find("#[cfg(test)]").map(|i| i + at) {
        at = i + 1;
        let next = text[i..].lines().nth(1).unwrap_or_default().trim();
        if next.starts_with("mod tests") || next.starts_with("pub(crate) mod tests") {
            return &text[..i];
        }
    }
    text
}

/// The code of `text` with comments and the contents of string and character literals blanked
/// (a doc comment or a message that names a module is no import).
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            i += rest.find("*/").map_or(rest.len(), |e| e + 2);
        } else if b[i] == b'"' || (b[i] == b'r' && (rest[1..].starts_with('"') || rest[1..].starts_with("#"))) {
            // Raw strings end at `"` plus as many `#` as they opened with; others at an
            // unescaped `"`.
            let (hashes, open) = if b[i] == b'r' {
                let h = rest[1..].bytes().take_while(|&c| c == b'#').count();
                if !rest[1 + h..].starts_with('"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                (Some(h), 2 + h)
            } else {
                (None, 1)
            };
            let mut j = i + open;
            while j < b.len() {
                match hashes {
                    Some(h) if b[j] == b'"' && text[j + 1..].bytes().take(h).filter(|&c| c == b'#').count() == h => {
                        j += 1 + h;
                        break;
                    }
                    None if b[j] == b'\\' => j += 1,
                    None if b[j] == b'"' => {
                        j += 1;
                        break;
                    }
                    _ => {}
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j.min(b.len());
        } else if b[i] == b'\'' && (rest[1..].starts_with('\\') || rest[1..].chars().nth(1) == Some('\'')) {
            // A character literal (a lifetime has no closing quote right after one character).
            let end = if rest[1..].starts_with('\\') {
                3 + rest[3..].find('\'').map_or(rest.len() - 3, |e| e + 1)
            } else {
                2 + rest[1..].chars().next().map_or(0, char::len_utf8)
            };
            out.push_str("' '");
            i += end;
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Every `::`-path in `text` that starts with one of `heads`, as its segments (braces of a `use`
/// tree expanded one level: `use crate::a::{b, c::d}` gives `a::b` and `a::c::d`).
fn paths_from<'a>(text: &'a str, head: &str) -> Vec<Vec<&'a str>> {
    let mut out = Vec::new();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut at = 0;
    while let Some(i) = text[at..].find(head).map(|i| i + at) {
        at = i + head.len();
        if text[..i].chars().next_back().is_some_and(|c| ident(c) || c == ':') {
            continue;
        }
        let rest = &text[at..];
        let mut segs = Vec::new();
        let mut j = 0;
        loop {
            let len = rest[j..].find(|c: char| !ident(c)).unwrap_or(rest.len() - j);
            if len == 0 {
                break;
            }
            segs.push(&rest[j..j + len]);
            j += len;
            if rest[j..].starts_with("::") {
                j += 2;
            } else {
                break;
            }
        }
        if rest[j..].starts_with('{') {
            let end = rest[j..].find('}').map_or(rest.len(), |e| j + e);
            for item in rest[j + 1..end].split(',') {
                let item: Vec<&str> = item.trim().split("::").map(|s| s.trim_matches(|c: char| !ident(c))).collect();
                let mut p = segs.clone();
                p.extend(item.into_iter().filter(|s| !s.is_empty() && *s != "self"));
                out.push(p);
            }
        } else if !segs.is_empty() || rest[j..].starts_with('*') {
            out.push(segs);
        }
    }
    out
}

/// The child modules a file declares (`mod x;`, `pub mod x;`).
fn declared_children(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("pub ").or_else(|| l.strip_prefix("pub(crate) ")).unwrap_or(l);
            l.strip_prefix("mod ")?.strip_suffix(';')
        })
        .collect()
}

/// The module a path names from `from`: the longest prefix of `base ++ segs` in `modules`.
fn resolve(modules: &BTreeSet<String>, base: &[&str], segs: &[&str]) -> Option<String> {
    let full: Vec<&str> = base.iter().chain(segs).copied().collect();
    (0..=full.len()).rev().map(|n| full[..n].join("::")).find(|m| modules.contains(m))
}

/// The graph of the crate whose sources are `files` (module path, text).
pub fn graph(files: &[(String, String)]) -> Graph {
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut g = Graph::new();
    for (m, text) in files {
        let code = code_only(without_tests(text));
        let text = code.as_str();
        let here: Vec<&str> = if m.is_empty() { Vec::new() } else { m.split("::").collect() };
        let mut edges = BTreeSet::new();
        for p in paths_from(text, "crate::") {
            edges.extend(resolve(&modules, &[], &p));
        }
        for p in paths_from(text, "super::") {
            // `super::super::x` climbs once per `super`.
            let ups = 1 + p.iter().take_while(|s| **s == "super").count();
            let base = &here[..here.len().saturating_sub(ups)];
            edges.extend(resolve(&modules, base, &p[ups - 1..]));
        }
        for child in declared_children(text) {
            if !paths_from(text, &format!("{child}::")).is_empty() || text.contains(&format!("use {child}::")) {
                let mut p = here.clone();
                p.push(child);
                edges.extend(resolve(&modules, &[], &p));
            }
        }
        edges.remove(m);
        g.insert(m.clone(), edges);
    }
    g
}

/// Reads every module file of the crate at `src` (its `src` folder).
pub fn read_crate(src: &Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(m) = p.strip_prefix(src).ok().and_then(module_of) {
                // A module's test file (`a/tests.rs` with `#[cfg(test)] mod tests;`) is a test.
                if m == "tests" || m.ends_with("::tests") {
                    continue;
                }
                out.push((m, std::fs::read_to_string(&p)?));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The import cycles: each strongly connected component of more than one module (Tarjan).
pub fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct State<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on.insert(v);
        for w in s.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// Layers of an acyclic graph: layer 1 imports nothing of the crate, layer n only lower
/// layers.
pub fn layers(g: &Graph) -> BTreeMap<String, usize> {
    let mut layer: BTreeMap<String, usize> = BTreeMap::new();
    fn depth(g: &Graph, m: &str, layer: &mut BTreeMap<String, usize>, seen: &mut BTreeSet<String>) -> usize {
        if let Some(&d) = layer.get(m) {
            return d;
        }
        if !seen.insert(m.to_string()) {
            return 0; // a cycle: `cycles` reports it
        }
        let d = 1 + g.get(m).into_iter().flatten().map(|w| depth(g, w, layer, seen)).max().unwrap_or(0);
        layer.insert(m.to_string(), d);
        d
    }
    for m in g.keys() {
        depth(g, m, &mut layer, &mut BTreeSet::new());
    }
    layer
}

/// The graph as text: one line per module, highest layer first, with what it imports.
pub fn render(name: &str, g: &Graph) -> String {
    let layers = layers(g);
    let mut by: Vec<(&String, &usize)> = layers.iter().collect();
    by.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let mut out = String::new();
    for (m, l) in by {
        let shown = if m.is_empty() { "(root)" } else { m.as_str() };
        let deps: Vec<&str> = g[m].iter().map(|d| if d.is_empty() { "(root)" } else { d.as_str() }).collect();
        out += &format!("{name} {l:>2}  {shown}");
        if !deps.is_empty() {
            out += &format!(" -> {}", deps.join(", "));
        }
        out += "\n";
    }
    out
}

/// The graph of top-level modules (a folder is one): `a::b -> c::d` becomes `a -> c`.
pub fn top_level(g: &Graph) -> Graph {
    let top = |m: &str| m.split("::").next().unwrap_or_default().to_string();
    let mut out = Graph::new();
    for (m, deps) in g {
        let t = top(m);
        let entry = out.entry(t.clone()).or_default();
        entry.extend(deps.iter().map(|d| top(d)).filter(|d| *d != t));
    }
    out
}

/// The crates whose graphs the project keeps free of cycles: name and source folder.
pub const CRATES: [(&str, &str); 3] =
    [("hvcore", "hypervisor/core/src"), ("kernel", "hypervisor/kernel/src"), ("xtask", "xtask/src")];

/// Each crate's top-level modules by layer, as docs/architecture.md shows them.
pub fn top_level_text(root: &Path) -> Result<String> {
    let mut out = String::new();
    for (name, src) in CRATES {
        out += &render(name, &top_level(&graph(&read_crate(&root.join(src))?)));
    }
    Ok(out)
}

/// `cargo xtask graph`: each crate's modules (every file with `files`, else the top level) by
/// layer, and its cycles; an error if any.
pub fn run(files: bool) -> Result<()> {
    if !files {
        print!("{}", top_level_text(Path::new("."))?);
    }
    let mut found = Vec::new();
    for (name, src) in CRATES {
        let g = graph(&read_crate(Path::new(src))?);
        if files {
            print!("{}", render(name, &g));
        }
        for c in cycles(&g) {
            found.push(format!("{name}: {}", c.join(" <-> ")));
        }
    }
    if !found.is_empty() {
        anyhow::bail!("import cycles: {}", found.join("; "));
    }
    println!("no import cycles");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(m, t)| (m.to_string(), t.to_string())).collect()
    }

    #[test]
    fn modules_of_files() {
        assert_eq!(module_of(Path::new("lib.rs")).as_deref(), Some(""));
        assert_eq!(module_of(Path::new("main.rs")).as_deref(), Some(""));
        assert_eq!(module_of(Path::new("a/mod.rs")).as_deref(), Some("a"));
        assert_eq!(module_of(Path::new("a/b.rs")).as_deref(), Some("a::b"));
        assert_eq!(module_of(Path::new("a/main.rs")).as_deref(), Some("a::main"));
        assert_eq!(module_of(Path::new("bin/x.rs")), None);
    }

    #[test]
    fn comments_and_literals_are_no_code() {
        assert_eq!(code_only("a // crate::x\nb /* super::y */ c"), "a \nb  c");
        assert_eq!(
            code_only(r###"f("crate::x \" y", 'c', '\'', r"super::z", r##"a"#b"##, 'a) g"###),
            r#"f("", ' ', ' ', "", "", 'a) g"#
        );
    }

    #[test]
    fn edges_from_crate_super_and_children() {
        let g = graph(&files(&[
            ("", "mod a;\nmod b;\nfn main() { a::run(); }"),
            ("a", "pub mod x;\nuse crate::b::{self, Thing};\nfn f() { x::g(); }"),
            ("a::x", "use super::super::b::Y;\nuse super::Z;\n#[cfg(test)]\npub(crate) mod tests { use crate::c; }"),
            ("b", "pub struct Y;"),
            ("c", ""),
        ]));
        assert_eq!(g[""], BTreeSet::from(["a".to_string()]));
        assert_eq!(g["a"], BTreeSet::from(["b".to_string(), "a::x".to_string()]));
        assert_eq!(g["a::x"], BTreeSet::from(["b".to_string(), "a".to_string()]), "test imports are not edges");
        assert_eq!(cycles(&g), vec![vec!["a".to_string(), "a::x".to_string()]]);
        let l = layers(&graph(&files(&[("", "mod a;\nuse a::f;"), ("a", "")])));
        assert_eq!((l[""], l["a"]), (2, 1));
    }

    #[test]
    fn the_architecture_document_shows_the_graph() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let doc = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
        let want = top_level_text(root).unwrap();
        assert!(
            doc.contains(&format!("```text\n{want}```")),
            "docs/architecture.md should show the module graph as `cargo xtask graph` prints it:\n{want}"
        );
    }

    #[test]
    fn the_workspace_has_no_import_cycles() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        for (name, src) in CRATES {
            let g = graph(&read_crate(&root.join(src)).unwrap());
            assert!(g.len() > 5, "{name}: the graph read {} modules", g.len());
            assert_eq!(cycles(&g), Vec::<Vec<String>>::new(), "{name}: import cycles");
        }
    }
}
