//! The Architecture Invariants of ARCHITECTURE.md that the compiler does not keep by itself:
//! * which crates may depend on which (read from `cargo metadata`): the engine knows no socket
//!   and reaches glommio only through the runtime; the protocol has no runtime; the client has
//!   no engine, node or server-only crate, and no glommio without its `glommio` feature;
//! * only `dynacore-runtime` names glommio in its source;
//! * no source file of `engine/src` or `net/src` imports one that imports it back, directly or
//!   in a loop (a `mod.rs` may re-export its children; a child never imports its parent).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("net/ has a parent")
        .to_path_buf()
}

/// The names of the packages `package` depends on, transitively, through normal dependencies
/// with the given features (as `cargo tree -e normal` resolves them for that package alone).
fn normal_dependencies(package: &str, features: &[&str]) -> BTreeSet<String> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(workspace_root()).args([
        "tree", "-e", "normal", "--prefix", "none", "--format", "{p}", "-p", package,
    ]);
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    let out = cmd.output().expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != package)
        .map(str::to_owned)
        .collect()
}

fn assert_none_of(package: &str, features: &[&str], forbidden: &[&str]) {
    let deps = normal_dependencies(package, features);
    assert!(!deps.is_empty(), "{package} has dependencies");
    for f in forbidden {
        assert!(
            !deps.contains(*f),
            "{package} (features {features:?}) depends on {f}: {deps:?}"
        );
    }
}

#[test]
fn crates_depend_on_what_the_architecture_allows() {
    // The engine: no socket, glommio only through the runtime, nothing of the wire or the node.
    let engine_direct = {
        let out = Command::new(env!("CARGO"))
            .current_dir(workspace_root())
            .args(["tree", "-e", "normal", "--depth", "1", "--prefix", "none"])
            .args(["--format", "{p}", "-p", "dynacore-engine"])
            .output()
            .expect("cargo tree runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for f in [
        "socket2",
        "glommio",
        "flatbuffers",
        "dynacore-proto",
        "tokio",
    ] {
        assert!(
            !engine_direct
                .lines()
                .any(|l| l.split_whitespace().next() == Some(f)),
            "dynacore-engine depends on {f} directly:\n{engine_direct}"
        );
    }
    assert_none_of(
        "dynacore-engine",
        &[],
        &[
            "dynacore-proto",
            "dynacore-client",
            "dynacore-net",
            "flatbuffers",
            "tokio",
            "foca",
        ],
    );
    // The protocol: no runtime, no engine.
    assert_none_of(
        "dynacore-proto",
        &[],
        &[
            "glommio",
            "tokio",
            "dynacore-runtime",
            "dynacore-engine",
            "foca",
        ],
    );
    // The client: the protocol and a runtime, nothing of the node.
    let node_only = [
        "dynacore-engine",
        "dynacore-net",
        "foca",
        "toml",
        "signal-hook",
    ];
    let mut default_forbidden = node_only.to_vec();
    default_forbidden.extend(["glommio", "dynacore-runtime"]);
    assert_none_of("dynacore-client", &[], &default_forbidden);
    assert!(normal_dependencies("dynacore-client", &[]).contains("tokio"));
    // glommio itself uses signal-hook: with the glommio feature only the node's own crates are
    // out.
    assert_none_of(
        "dynacore-client",
        &["glommio"],
        &["dynacore-engine", "dynacore-net", "foca", "toml"],
    );
    // The node is nobody's library: the load generator is a client, the benchmarks drive the
    // engine (the node's own benchmarks start its binary).
    assert_none_of(
        "dynacore-loadgen",
        &[],
        &["dynacore-net", "dynacore-engine"],
    );
    assert_none_of("dynacore-bench", &[], &["dynacore-net", "dynacore-client"]);
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn only_the_runtime_names_glommio() {
    let root = workspace_root();
    let mut files = Vec::new();
    for dir in [
        "engine/src",
        "engine/types/src",
        "net",
        "bench",
        "loadgen",
        "tuning",
    ] {
        let dir = root.join(dir);
        if dir.exists() {
            rust_files(&dir, &mut files);
        }
    }
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        for (n, line) in text.lines().enumerate() {
            // Code only: comments and string literals may name it.
            let code = code_of(line);
            // A path rooted at the glommio crate (not a module of ours named after it, such as
            // `dynacore_client::glommio`).
            let rooted = code.match_indices("glommio::").any(|(at, _)| {
                !code[..at].ends_with("::")
                    && !code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_')
            });
            assert!(
                !rooted,
                "{}:{} names glommio outside dynacore-runtime: {line}",
                file.display(),
                n + 1
            );
        }
    }
    // And only the runtime's manifest (and the workspace's version pin) lists it.
    let mut manifests = Vec::new();
    for dir in [
        "engine",
        "engine/types",
        "net",
        "net/proto",
        "net/client",
        "bench",
        "loadgen",
        "tuning",
    ] {
        let m = root.join(dir).join("Cargo.toml");
        if m.exists() {
            manifests.push(m);
        }
    }
    for m in manifests {
        let text = std::fs::read_to_string(&m).expect("readable");
        assert!(
            !text.lines().any(|l| {
                let l = l.trim_start();
                // A dependency line; `glommio = [...]` is the client's feature of that name.
                l.starts_with("glommio.") || (l.starts_with("glommio =") && !l.contains('['))
            }),
            "{} depends on glommio directly",
            m.display()
        );
    }
}

/// A crate's source files as modules: `a::b` → its file.
struct Modules {
    files: BTreeMap<Vec<String>, PathBuf>,
}

impl Modules {
    fn of(src: &Path) -> Modules {
        let mut paths = Vec::new();
        rust_files(src, &mut paths);
        let files = paths
            .into_iter()
            .filter(|p| !p.ends_with("main.rs") && !p.ends_with("dynacore_generated.rs"))
            .map(|p| {
                let rel = p.strip_prefix(src).expect("under src");
                let mut parts: Vec<String> = rel
                    .iter()
                    .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_owned())
                    .collect();
                if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
                    parts.pop();
                }
                (parts, p)
            })
            .collect();
        Modules { files }
    }

    /// The file of the longest module prefix of `path`.
    fn file_of(&self, path: &[String]) -> Option<&PathBuf> {
        (1..=path.len())
            .rev()
            .find_map(|n| self.files.get(&path[..n]))
    }
}

/// Strips comments, string literals and `#[cfg(test)]` modules (tests may reach anywhere).
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut skip_depth: Option<usize> = None;
    let mut depth = 0usize;
    let mut test_next = false;
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let trimmed = code.trim();
        if trimmed == "#[cfg(test)]" {
            test_next = true;
            continue;
        }
        let opens = code.matches('{').count();
        let closes = code.matches('}').count();
        if test_next && trimmed.starts_with("mod ") && trimmed.ends_with('{') {
            skip_depth = Some(depth);
        }
        test_next = false;
        depth = depth + opens - closes.min(depth + opens);
        if let Some(d) = skip_depth {
            if depth <= d {
                skip_depth = None;
            }
            continue;
        }
        // Drop string literals (paths in messages are not imports).
        let mut in_str = false;
        for c in code.chars() {
            if c == '"' {
                in_str = !in_str;
            } else if !in_str {
                out.push(c);
            }
        }
        out.push('\n');
    }
    out
}

/// Expands a use tree (`a::{b, c::{d, e}}`) into its paths.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        return vec![tree
            .split(" as ")
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned()];
    };
    let prefix = tree[..open].trim_end_matches("::").trim();
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(expand)
        .map(|p| match p.as_str() {
            "self" => prefix.to_owned(),
            _ => format!("{prefix}::{p}"),
        })
        .collect()
}

/// The files `file` (module `me`) imports: `use` trees and inline `crate::`/`super::`/`self::`
/// paths, and paths starting with one of its own child modules.
fn imports(modules: &Modules, me: &[String], is_mod_file: bool, code: &str) -> BTreeSet<PathBuf> {
    let children: BTreeSet<String> = code
        .lines()
        .filter_map(|l| {
            let l = l
                .trim()
                .trim_start_matches("pub ")
                .trim_start_matches("pub(crate) ");
            l.strip_prefix("mod ")
                .and_then(|r| r.strip_suffix(';'))
                .map(str::to_owned)
        })
        .collect();
    let mut paths: Vec<String> = Vec::new();
    // `use` statements (possibly over several lines).
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        let after = &rest[at + 4..];
        let end = after.find(';').unwrap_or(after.len());
        if before.is_none_or(|c| c.is_whitespace() || c == '{' || c == ';') {
            paths.extend(expand(&after[..end]));
        }
        rest = &after[end.min(after.len())..];
    }
    // Inline paths.
    for word in code.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')) {
        if word.starts_with("crate::") || word.starts_with("super::") || word.starts_with("self::")
        {
            paths.push(word.to_owned());
        } else if let Some((first, _)) = word.split_once("::") {
            if children.contains(first) {
                paths.push(format!("self::{word}"));
            }
        }
    }
    // The module that `super` and `self` name: a `mod.rs` is its folder's module.
    let own: Vec<String> = me.to_vec();
    let parent: Vec<String> = me[..me.len().saturating_sub(1)].to_vec();
    let _ = is_mod_file;
    let mut found = BTreeSet::new();
    for p in paths {
        let segs: Vec<&str> = p.split("::").filter(|s| !s.is_empty()).collect();
        let Some((&head, tail)) = segs.split_first() else {
            continue;
        };
        let mut base = match head {
            "crate" => Vec::new(),
            "super" => parent.clone(),
            "self" => own.clone(),
            h if children.contains(h) => {
                let mut b = own.clone();
                b.push(h.to_owned());
                b
            }
            _ => continue,
        };
        let mut tail = tail.iter().peekable();
        while tail.peek() == Some(&&"super") {
            base.pop();
            tail.next();
        }
        base.extend(tail.map(|s| (*s).to_owned()));
        if base.is_empty() {
            continue;
        }
        if let Some(f) = modules.file_of(&base) {
            found.insert(f.clone());
        }
    }
    found
}

/// The import cycles among a crate's files (each as the files in it).
fn cycles(src: &Path) -> Vec<Vec<PathBuf>> {
    let modules = Modules::of(src);
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for (me, file) in &modules.files {
        let text = std::fs::read_to_string(file).expect("readable");
        let is_mod = file.ends_with("mod.rs") || file.ends_with("lib.rs");
        let mut to = imports(&modules, me, is_mod, &code_of(&text));
        to.remove(file);
        // The crate root only declares modules and re-exports: it is not part of any loop.
        if file.ends_with("lib.rs") {
            to.clear();
        }
        edges.insert(file.clone(), to);
    }
    // Tarjan's strongly connected components.
    struct Tarjan<'a> {
        edges: &'a BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        index: BTreeMap<&'a PathBuf, usize>,
        low: BTreeMap<&'a PathBuf, usize>,
        stack: Vec<&'a PathBuf>,
        on_stack: BTreeSet<&'a PathBuf>,
        next: usize,
        out: Vec<Vec<PathBuf>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a PathBuf) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.edges.get(v).into_iter().flatten() {
                if !self.edges.contains_key(w) {
                    continue;
                }
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.out.push(component);
                }
            }
        }
    }
    let mut t = Tarjan {
        edges: &edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.out
}

#[test]
fn no_source_file_imports_one_that_imports_it_back() {
    let root = workspace_root();
    let mut found = Vec::new();
    for src in ["engine/src", "net/src", "net/proto/src", "net/client/src"] {
        for cycle in cycles(&root.join(src)) {
            let names: Vec<String> = cycle
                .iter()
                .map(|p| p.strip_prefix(&root).unwrap_or(p).display().to_string())
                .collect();
            found.push(names.join(" ⇄ "));
        }
    }
    assert!(found.is_empty(), "import loops:\n{}", found.join("\n"));
}

#[test]
fn the_loop_finder_finds_loops() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).expect("dir");
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\n").expect("write");
    std::fs::write(
        src.join("a/mod.rs"),
        "mod c;\nuse c::X;\nuse crate::b::{Y, self};\n",
    )
    .expect("write");
    std::fs::write(src.join("a/c.rs"), "use super::super::b::Z;\n").expect("write");
    std::fs::write(
        src.join("b.rs"),
        "// use crate::a::Q; is a comment\nfn f() { crate::a::c::g() }\n#[cfg(test)]\nmod tests {\n    use crate::a::W;\n}\n",
    )
    .expect("write");
    let found = cycles(src);
    assert_eq!(found, vec![vec![src.join("a/c.rs"), src.join("b.rs")]]);
    // Without b's call into c, nothing loops.
    std::fs::write(src.join("b.rs"), "fn f() {}\n").expect("write");
    assert!(cycles(src).is_empty());
}

#[test]
fn the_nodes_concerns_depend_downwards_only() {
    // node → frontend → coordinator → core → {storage, cluster}; metrics is used by all.
    let layers: [(&str, &[&str]); 5] = [
        (
            "frontend",
            &["coordinator", "core", "storage", "cluster", "metrics"],
        ),
        ("coordinator", &["core", "storage", "cluster", "metrics"]),
        ("core", &["storage", "cluster", "metrics"]),
        ("storage", &["metrics"]),
        ("cluster", &["metrics"]),
    ];
    let src = workspace_root().join("net/src");
    let concerns = [
        "node",
        "frontend",
        "coordinator",
        "core",
        "storage",
        "cluster",
        "metrics",
    ];
    for (layer, allowed) in layers {
        let mut files = Vec::new();
        rust_files(&src.join(layer), &mut files);
        for file in files {
            let code = code_of(&std::fs::read_to_string(&file).expect("readable"));
            for c in concerns {
                if c == layer || allowed.contains(&c) {
                    continue;
                }
                assert!(
                    !code.contains(&format!("crate::{c}::"))
                        && !code.contains(&format!("crate::{c};")),
                    "{} ({layer}) reaches up or across into {c}",
                    file.display()
                );
            }
        }
    }
}
