//! The crate's layers, enforced: every top-level module of `src/` has a
//! layer, imports (`crate::x` paths outside comments and test modules) only
//! point down or sideways, the modules' import graph has no cycle, `base`
//! imports nothing of the crate, and the proxy's request state (`Ctx`),
//! Pingora's `Session` and the live runtime holder (`Shared`) are named in
//! the top layer only. `docs/architecture.md` draws the same table.
//!
//! Run it alone with `cargo test --test layers`. The checker is tested on
//! made-up files too, so a broken checker cannot pass quietly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Lowest first. A module may import modules of its own layer or below.
const LAYERS: &[(&str, &[&str])] = &[
    ("base", &["base"]),
    (
        "libraries",
        &[
            "json_scan",
            "form",
            "sse",
            "eventstream",
            "rewrite",
            "auth",
            "ca_file",
            "config",
            "accounting",
            "resilience",
            "translate",
            "workload",
        ],
    ),
    (
        "services",
        &[
            "telemetry",
            "governance",
            "routing",
            "providers",
            "upstream",
            "tls",
            "keys",
            "keystore",
            "objects",
            "cache",
            "capture",
        ],
    ),
    ("runtime", &["runtime"]),
    ("engine", &["engine"]),
    (
        "server",
        &[
            "live",
            "proxy",
            "admin",
            "reload",
            "lifecycle",
            "cli",
            "server",
        ],
    ),
];

/// Names only the top layer may use: the proxy's per-request state,
/// Pingora's session, and the live runtime holder.
const TOP_ONLY: &[&str] = &["Ctx", "Session", "Shared"];

/// One source file: its top-level module and its code without comments or
/// test modules.
struct Source {
    path: String,
    module: String,
    code: String,
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, ms)| ms.contains(&module))
}

/// The code of a file without `//` comment lines and without the test
/// module at its end (tests may use anything).
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|n| n.trim_start().starts_with("mod tests"))
        {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The top-level modules a piece of code names through `crate::`,
/// including those inside `crate::{a, b::c}` groups.
fn imports(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = code.as_bytes();
    let mut from = 0;
    while let Some(i) = code[from..].find("crate::") {
        let at = from + i;
        from = at + 7;
        if at > 0 && is_ident(b[at - 1]) {
            continue; // `tollgate_crate::` or similar
        }
        if b.get(from) == Some(&b'{') {
            // A group: every first segment at depth one.
            let mut depth = 0;
            let mut start = true;
            let mut j = from;
            while j < b.len() {
                match b[j] {
                    b'{' => {
                        depth += 1;
                        start = depth == 1;
                    }
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    b',' if depth == 1 => start = true,
                    c if start && is_ident(c) => {
                        let end = (j..b.len()).find(|&k| !is_ident(b[k])).unwrap_or(b.len());
                        out.insert(code[j..end].to_string());
                        start = false;
                        j = end;
                        continue;
                    }
                    c if !c.is_ascii_whitespace() => start = false,
                    _ => {}
                }
                j += 1;
            }
        } else {
            let end = (from..b.len())
                .find(|&k| !is_ident(b[k]))
                .unwrap_or(b.len());
            out.insert(code[from..end].to_string());
        }
    }
    out
}

/// Whether `code` uses `name` as a whole identifier.
fn names(code: &str, name: &str) -> bool {
    let b = code.as_bytes();
    code.match_indices(name).any(|(i, _)| {
        let before = i == 0 || !is_ident(b[i - 1]);
        let after = b.get(i + name.len()).is_none_or(|c| !is_ident(*c));
        before && after
    })
}

/// Everything wrong with these sources, one line each.
fn problems(sources: &[Source]) -> Vec<String> {
    let mut out = Vec::new();
    let mut graph: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for s in sources {
        let Some(layer) = layer_of(&s.module) else {
            out.push(format!(
                "{}: module `{}` has no layer in tests/layers.rs (add it to LAYERS)",
                s.path, s.module
            ));
            continue;
        };
        for m in imports(&s.code) {
            if m == s.module || m == "self" || m == "super" {
                continue;
            }
            match layer_of(&m) {
                None => out.push(format!("{}: imports `{m}`, which has no layer", s.path)),
                Some(l) if l > layer => out.push(format!(
                    "{}: `{}` ({}) imports `{m}` ({}), a higher layer",
                    s.path, s.module, LAYERS[layer].0, LAYERS[l].0
                )),
                Some(_) if layer == 0 => out.push(format!(
                    "{}: `base` imports `{m}`; it must import nothing of the crate",
                    s.path
                )),
                Some(_) => {}
            }
            graph.entry(&s.module).or_default().insert(m);
        }
        if layer + 1 < LAYERS.len() {
            for n in TOP_ONLY {
                if names(&s.code, n) {
                    out.push(format!(
                        "{}: names `{n}`, which only the {} layer may use",
                        s.path,
                        LAYERS[LAYERS.len() - 1].0
                    ));
                }
            }
        }
    }
    out.extend(cycles(&graph));
    out
}

/// Each import cycle among modules, as `a -> b -> a`.
fn cycles(graph: &BTreeMap<&str, BTreeSet<String>>) -> Vec<String> {
    // Depth-first search; a back edge closes a cycle.
    fn visit<'a>(
        m: &'a str,
        graph: &'a BTreeMap<&str, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        out: &mut Vec<String>,
    ) {
        if let Some(i) = path.iter().position(|p| *p == m) {
            let mut c: Vec<&str> = path[i..].to_vec();
            c.push(m);
            out.push(format!("import cycle: {}", c.join(" -> ")));
            return;
        }
        if !done.insert(m) {
            return;
        }
        path.push(m);
        if let Some(next) = graph.get(m) {
            for n in next {
                visit(n, graph, path, done, out);
            }
        }
        path.pop();
    }
    let mut out = Vec::new();
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, graph, &mut Vec::new(), &mut done, &mut out);
    }
    out
}

fn read_tree(dir: &Path, root: &Path, out: &mut Vec<Source>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            read_tree(&p, root, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            let rel = p.strip_prefix(root).expect("under src").to_path_buf();
            let first = rel
                .components()
                .next()
                .expect("a path")
                .as_os_str()
                .to_string_lossy()
                .into_owned();
            let module = first.strip_suffix(".rs").unwrap_or(&first).to_string();
            // The crate roots are not modules of a layer.
            if module == "lib" || module == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&p).expect("read source");
            out.push(Source {
                path: format!("src/{}", rel.display()),
                module,
                code: code_of(&text),
            });
        }
    }
}

#[test]
fn every_import_points_down_and_no_module_cycle_remains() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut sources = Vec::new();
    read_tree(&root, &root, &mut sources);
    assert!(sources.len() > 100, "read {} files", sources.len());
    let found = problems(&sources);
    assert!(
        found.is_empty(),
        "layer rules broken:\n{}",
        found.join("\n")
    );
}

#[test]
fn every_module_declared_in_lib_has_a_layer() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"))
        .expect("src/lib.rs");
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("pub(crate) mod "))
        })
        .map(|m| m.trim_end_matches(';'))
        .collect();
    assert!(declared.len() > 20, "{declared:?}");
    for m in declared {
        assert!(layer_of(m).is_some(), "`{m}` has no layer in LAYERS");
    }
}

fn src(path: &str, code: &str) -> Source {
    let first = path.split('/').next().unwrap_or(path);
    Source {
        path: path.to_string(),
        module: first.trim_end_matches(".rs").to_string(),
        code: code_of(code),
    }
}

#[test]
fn the_checker_finds_an_upward_import_a_cycle_and_a_top_only_name() {
    let ok = [
        src("base/mod.rs", "pub mod error;\n"),
        src("config/mod.rs", "use crate::base::error::GatewayError;\n"),
        src(
            "governance/mod.rs",
            "use crate::{config::Config, base::{clock, error}};\n",
        ),
        src("proxy/ctx.rs", "pub struct Ctx; use crate::runtime::Runtime;\n"),
        src(
            "runtime/mod.rs",
            "// crate::proxy in a comment\nuse crate::governance::Rule;\n#[cfg(test)]\nmod tests {\n    use crate::proxy::ctx::Ctx;\n}\n",
        ),
    ];
    assert_eq!(problems(&ok), Vec::<String>::new());

    let up = [src(
        "routing/track.rs",
        "use crate::proxy::ctx::Ctx;\nfn f(c: &Ctx) {}\n",
    )];
    let found = problems(&up);
    assert!(
        found
            .iter()
            .any(|p| p.contains("imports `proxy` (server), a higher layer")),
        "{found:?}"
    );
    assert!(found.iter().any(|p| p.contains("names `Ctx`")), "{found:?}");

    let grouped = [src(
        "config/validate.rs",
        "use crate::{auth, upstream::tls};\n",
    )];
    let found = problems(&grouped);
    assert!(
        found.iter().any(|p| p.contains("imports `upstream`")),
        "{found:?}"
    );

    let cycle = [
        src("telemetry/metrics.rs", "use crate::governance::Level;\n"),
        src("governance/mod.rs", "use crate::telemetry::metrics;\n"),
    ];
    let found = problems(&cycle);
    assert!(
        found.iter().any(|p| p.starts_with("import cycle:")
            && p.contains("governance")
            && p.contains("telemetry")),
        "{found:?}"
    );

    let base = [src("base/clock.rs", "use crate::config::Config;\n")];
    assert!(problems(&base).iter().any(|p| p.contains("higher layer")));
    let base_sideways = [src("base/clock.rs", "use crate::base::error;\n")];
    assert_eq!(problems(&base_sideways), Vec::<String>::new());

    let unknown = [src("newthing/mod.rs", "fn f() {}\n")];
    assert!(problems(&unknown)[0].contains("has no layer"));

    // `Shared` inside a longer name is not the holder.
    let fine = [src(
        "upstream/x.rs",
        "struct SharedState; let shared_x = 1;\n",
    )];
    assert_eq!(problems(&fine), Vec::<String>::new());
}
