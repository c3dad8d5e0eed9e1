//! The house rules of `student-trainer` and `teacher-server`, checked on their source: which
//! folder may import which (`use crate::…` lines, and the gRPC crates), no import circle among a
//! crate's top-level modules, and `mod.rs` files that only declare, re-export and dispatch. A
//! failure names the file, the line and the import that breaks a rule. The crates' `lib.rs`
//! "Layout" docs and the README's code map describe the same rules.
//!
//! Test code (`#[cfg(test)]` modules, `tests.rs` files) and comments are not checked: tests may
//! reach across the house, and doc links are not imports.

use distill_tests::workspace_root;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One source file of a crate, its code without comments and test modules.
struct Source {
    /// Path relative to the workspace root, for messages.
    path: String,
    /// The top-level module it belongs to (`teachers` for `src/teachers/pool/shell.rs`).
    top: String,
    /// The file name (`mod.rs`, `shell.rs`, ...).
    name: String,
    /// `(line number, code)` of every non-comment line before the first `#[cfg(test)]`.
    lines: Vec<(usize, String)>,
}

impl Source {
    /// `(line number, module)` of every `crate::` import, groups over several lines included.
    fn imports(&self) -> Vec<(usize, String)> {
        let mut code = String::new();
        let mut starts = Vec::new();
        for (n, line) in &self.lines {
            starts.push((code.len(), *n));
            code.push_str(line);
            code.push('\n');
        }
        crate_imports_at(&code)
            .into_iter()
            .map(|(at, m)| {
                let line = starts
                    .iter()
                    .rev()
                    .find(|(offset, _)| *offset <= at)
                    .map_or(0, |(_, n)| *n);
                (line, m)
            })
            .collect()
    }
}

fn sources(krate: &str) -> Vec<Source> {
    let src = workspace_root().join(krate).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n != "tests.rs"))
        .map(|p| {
            let rel = p.strip_prefix(&src).expect("under src");
            let first = rel.components().next().expect("a component");
            let top = first
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            let text = std::fs::read_to_string(&p).expect("readable source");
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let lines = code
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim_start().starts_with("//"))
                .map(|(i, l)| (i + 1, l.to_string()))
                .collect();
            Source {
                path: format!("{krate}/src/{}", rel.display()),
                top,
                name: p.file_name().unwrap().to_string_lossy().into_owned(),
                lines,
            }
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a piece of code imports through `crate::`, with the byte offset of
/// each: `crate::a::b`, and groups `crate::{a, b::{c, d}}` (over several lines too).
fn crate_imports_at(code: &str) -> Vec<(usize, String)> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let after = &code[i + "crate::".len()..];
        let Some(group) = after.strip_prefix('{') else {
            let name = ident(after);
            if !name.is_empty() {
                out.push((i, name));
            }
            continue;
        };
        // The group's top-level entries: split at commas outside nested braces.
        let (mut depth, mut start) = (0usize, 0usize);
        for (j, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    out.push((i, ident(group[start..j].trim_start())));
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.push((i, ident(group[start..j].trim_start())));
                    start = j + 1;
                }
                _ => {}
            }
        }
    }
    out.retain(|(_, n)| !n.is_empty());
    out
}

/// The top-level modules one line of code imports (see [`crate_imports_at`]).
fn crate_imports(line: &str) -> Vec<String> {
    crate_imports_at(line).into_iter().map(|(_, m)| m).collect()
}

/// Whether a line uses the external crate `name` (`name::…` as a path start).
fn uses_crate(line: &str, name: &str) -> bool {
    let needle = format!("{name}::");
    line.match_indices(&needle).any(|(i, _)| {
        i == 0 || {
            let before = line.as_bytes()[i - 1] as char;
            !(before.is_ascii_alphanumeric() || before == '_' || before == ':')
        }
    })
}

/// The rule violations of `sources`: for each source whose top-level module is `who` (or any,
/// for `"*"`), each import of a module in `forbidden` or use of a crate in `crates`.
fn violations(
    sources: &[Source],
    who: &str,
    forbidden: &[&str],
    crates: &[&str],
    why: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    for s in sources.iter().filter(|s| who == "*" || s.top == who) {
        for (n, m) in s.imports() {
            if forbidden.contains(&m.as_str()) && m != s.top {
                out.push(format!("{}:{n}: imports crate::{m} ({why})", s.path));
            }
        }
        for (n, line) in &s.lines {
            for c in crates {
                if uses_crate(line, c) {
                    out.push(format!("{}:{n}: uses {c} ({why})", s.path));
                }
            }
        }
    }
    out
}

/// The import graph among top-level modules (`lib` and `main` left out).
fn graph(sources: &[Source]) -> BTreeMap<String, BTreeSet<String>> {
    let tops: BTreeSet<&str> = sources.iter().map(|s| s.top.as_str()).collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in sources.iter().filter(|s| s.top != "lib" && s.top != "main") {
        let edges = g.entry(s.top.clone()).or_default();
        for (_, m) in s.imports() {
            if m != s.top && tops.contains(m.as_str()) && m != "lib" && m != "main" {
                edges.insert(m);
            }
        }
    }
    g
}

/// An import circle of `g`, as the modules along it, if there is one.
fn circle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        v: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == v) {
            let mut c = path[i..].to_vec();
            c.push(v.to_string());
            return Some(c);
        }
        if done.contains(v) {
            return None;
        }
        path.push(v.to_string());
        for w in g.get(v).into_iter().flatten() {
            if let Some(c) = visit(g, w, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(v.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|v| visit(g, v, &mut Vec::new(), &mut done))
}

/// `mod.rs` files that define items instead of declaring, re-exporting and dispatching.
fn busy_mod_files(sources: &[Source]) -> Vec<String> {
    let defines = [
        "fn ", "struct ", "enum ", "impl ", "impl<", "trait ", "const ", "static ", "type ",
    ];
    let mut out = Vec::new();
    for s in sources.iter().filter(|s| s.name == "mod.rs") {
        for (n, line) in &s.lines {
            let code = line.trim_start();
            let code = code
                .strip_prefix("pub(crate) ")
                .or_else(|| code.strip_prefix("pub "))
                .unwrap_or(code);
            if defines.iter().any(|d| code.starts_with(d)) {
                out.push(format!(
                    "{}:{n}: a mod.rs declares, re-exports and dispatches; move `{}` into a named file",
                    s.path,
                    line.trim()
                ));
            }
        }
    }
    out
}

fn assert_clean(what: &str, found: Vec<String>) {
    assert!(found.is_empty(), "{what}:\n{}", found.join("\n"));
}

#[test]
fn student_trainer_keeps_its_house_rules() {
    let s = sources("student-trainer");
    let mut found = Vec::new();
    found.extend(violations(
        &s,
        "teachers",
        &[
            "training",
            "loss",
            "optim",
            "data",
            "images",
            "logit_cache",
            "config",
            "cli",
            "commands",
        ],
        &[],
        "teachers/ talks to teachers only: hand soft targets over through soft_targets",
    ));
    found.extend(violations(
        &s,
        "training",
        &["teachers", "config", "cli", "commands"],
        &["tonic", "distill_proto"],
        "training/ never sees the teachers, the flags or gRPC",
    ));
    found.extend(violations(
        &s,
        "cli",
        &["config", "commands", "training"],
        &[],
        "cli.rs holds the clap structs and imports only domain enums",
    ));
    found.extend(violations(
        &s,
        "*",
        &["commands"],
        &[],
        "only the binary imports commands/",
    ));
    found.extend(violations(
        &s,
        "outputs",
        &[
            "cli",
            "commands",
            "config",
            "data",
            "ensemble",
            "eval",
            "hint",
            "images",
            "logit_cache",
            "loss",
            "optim",
            "schedule",
            "soft_targets",
            "teachers",
            "training",
        ],
        &[],
        "outputs/ is handed its results",
    ));
    // The maths and data: each imports only the ones before it, and no async or gRPC crate.
    let maths = [
        "data",
        "images",
        "schedule",
        "soft_targets",
        "ensemble",
        "loss",
        "optim",
        "hint",
        "logit_cache",
        "eval",
        "on_policy",
    ];
    let tops: BTreeSet<String> = s.iter().map(|x| x.top.clone()).collect();
    for (i, m) in maths.iter().enumerate() {
        assert!(tops.contains(*m), "student-trainer has no module {m}");
        let forbidden: Vec<&str> = tops
            .iter()
            .map(String::as_str)
            .filter(|t| !maths[..i].contains(t) && *t != "device")
            .collect();
        found.extend(violations(
            &s,
            m,
            &forbidden,
            &["tokio", "tonic", "distill_proto"],
            &format!("{m} is maths or data: it imports only {:?}", &maths[..i]),
        ));
    }
    assert_clean("student-trainer's house rules", found);
    assert_clean("student-trainer's mod.rs files", busy_mod_files(&s));
    let g = graph(&s);
    assert_eq!(circle(&g), None, "student-trainer import graph: {g:?}");
}

#[test]
fn teacher_server_keeps_its_house_rules() {
    let s = sources("teacher-server");
    // Each module imports only those before it: the model and the leaf services at the bottom,
    // `error` (the one mapping to gRPC statuses) above the engine and the model whose errors it
    // wraps, the gRPC service and the wiring on top.
    let order = [
        "model", "security", "incoming", "metrics", "config", "engine", "validate", "batcher",
        "error", "service", "server",
    ];
    let tops: BTreeSet<String> = s.iter().map(|x| x.top.clone()).collect();
    let mut found = Vec::new();
    for (i, m) in order.iter().enumerate() {
        assert!(tops.contains(*m), "teacher-server has no module {m}");
        let forbidden: Vec<&str> = tops
            .iter()
            .map(String::as_str)
            .filter(|t| !order[..i].contains(t))
            .collect();
        found.extend(violations(
            &s,
            m,
            &forbidden,
            &[],
            &format!("{m} may import only {:?}", &order[..i]),
        ));
    }
    for top in &tops {
        assert!(
            order.contains(&top.as_str()) || top == "lib" || top == "main",
            "teacher-server/src/{top}: a new module needs its place in this test's order"
        );
    }
    assert_clean("teacher-server's house rules", found);
    assert_clean("teacher-server's mod.rs files", busy_mod_files(&s));
    let g = graph(&s);
    assert_eq!(circle(&g), None, "teacher-server import graph: {g:?}");
}

#[test]
fn the_checks_see_imports_groups_and_circles() {
    assert_eq!(
        crate_imports("use crate::{cli::Cli, config::{A, B}, training};"),
        ["cli", "config", "training"]
    );
    assert_eq!(
        crate_imports("let x = crate::data::load(crate::schedule::plan());"),
        ["data", "schedule"]
    );
    let multi = "use crate::{\n    loss::X,\n    optim::{A, B},\n};\n";
    let at: Vec<String> = crate_imports_at(multi)
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    assert_eq!(at, ["loss", "optim"]);
    assert!(uses_crate("use tonic::Code;", "tonic"));
    assert!(!uses_crate("use crate::teachers::tonic_free::X;", "tonic"));
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(
        circle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}
