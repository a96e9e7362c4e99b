//! The shape of the house, kept: the modules of `host/src` stand on floors
//! and import only from floors below (or from their own module), and no
//! files import each other in a circle. ARCHITECTURE.md explains the floors.
//!
//! Imports are read from the source text (`use crate::..`, `use super::..`
//! and paths written in place); a `pub use` of a module's own children is a
//! re-export, not an import, and an item named through a re-export counts
//! as an import of the file that defines it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The floors, lowest first. A module may import from a lower floor only.
const FLOORS: &[&[&str]] = &[
    &["protocol", "log_limit", "redis_link"],
    &["mailbox", "metrics"],
    &["auth", "kv", "broker", "outbound"],
    &["services"],
    &["plugins"],
    &["session"],
    &["config"],
    &["server"],
];

fn floor_of(module: &str) -> usize {
    FLOORS
        .iter()
        .position(|floor| floor.contains(&module))
        .unwrap_or_else(|| {
            panic!("module `{module}` has no floor: add it to FLOORS and to ARCHITECTURE.md")
        })
}

/// One source file: its module path (`["plugins", "wit", "v0_1"]`) and text.
struct SourceFile {
    module: Vec<String>,
    text: String,
}

fn source_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every library file (the binary's `main.rs` and `new/` stand above all).
fn library_files() -> BTreeMap<PathBuf, SourceFile> {
    let root = source_root();
    let mut files = BTreeMap::new();
    let mut pending = vec![root.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(&root).unwrap().to_owned();
            if relative.starts_with("new") || relative == Path::new("main.rs") {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let mut module: Vec<String> = relative
                    .with_extension("")
                    .iter()
                    .map(|part| part.to_string_lossy().into_owned())
                    .collect();
                if module
                    .last()
                    .is_some_and(|last| last == "mod" || last == "lib")
                {
                    module.pop();
                }
                let text = std::fs::read_to_string(&path).unwrap();
                files.insert(relative, SourceFile { module, text });
            }
        }
    }
    files
}

/// The file that defines module `module`, if it is a file of its own.
fn file_of(files: &BTreeMap<PathBuf, SourceFile>, module: &[String]) -> Option<PathBuf> {
    files
        .iter()
        .find(|(_, file)| file.module == module)
        .map(|(path, _)| path.clone())
}

/// Paths a file names: the argument of each `use` (braces expanded) and
/// every `crate::`/`super::` path written in place.
fn named_paths(text: &str) -> Vec<(bool, String)> {
    let code: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let code = match code.find("#[cfg(test)]") {
        Some(tests) => &code[..tests],
        None => &code,
    };
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = &rest[..at];
        let is_pub = before.trim_end().ends_with("pub");
        let statement = &rest[at + 4..];
        let end = statement.find(';').unwrap_or(statement.len());
        let normalized = statement[..end]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        for path in expand(&normalized) {
            paths.push((is_pub, path));
        }
        rest = &statement[end..];
    }
    for prefix in ["crate::", "super::"] {
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            paths.push((false, tail[..end].trim_end_matches(':').to_owned()));
            rest = &tail[end..];
        }
    }
    paths
}

/// `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand(path: &str) -> Vec<String> {
    let Some(open) = path.find('{') else {
        return vec![path.trim().to_owned()];
    };
    let prefix = path[..open].trim();
    let inner = &path[open + 1..path.rfind('}').unwrap_or(path.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (index, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .flat_map(|part| expand(&format!("{prefix}{part}")))
        .collect()
}

/// The module path a `crate::`/`super::`/`self::` path starts from, seen
/// from `module`, and its remaining segments. `None` for other crates.
fn absolute(module: &[String], path: &str) -> Option<Vec<String>> {
    let path = path.split(" as ").next().unwrap_or(path);
    let mut segments = path.split("::").filter(|s| !s.is_empty());
    let first = segments.next()?;
    let mut base: Vec<String> = match first {
        "crate" => Vec::new(),
        // `a/b.rs` and `a/b/mod.rs` are both module a::b: `super` is a.
        "self" => module.to_vec(),
        "super" => module[..module.len().saturating_sub(1)].to_vec(),
        _ => return None,
    };
    for segment in segments {
        if segment == "super" {
            base.pop();
        } else {
            base.push(segment.to_owned());
        }
    }
    Some(base)
}

/// The file a path points into: its longest prefix that is a module file;
/// an item a `mod.rs` re-exports from a child counts as that child's.
fn target(
    files: &BTreeMap<PathBuf, SourceFile>,
    reexports: &BTreeMap<(Vec<String>, String), Vec<String>>,
    path: &[String],
) -> Option<PathBuf> {
    for len in (1..=path.len()).rev() {
        let prefix = &path[..len];
        if let Some(file) = file_of(files, prefix) {
            if let Some(item) = path.get(len)
                && let Some(child) = reexports.get(&(prefix.to_vec(), item.clone()))
            {
                return target(files, reexports, child);
            }
            return Some(file);
        }
    }
    None
}

/// `pub use child::Item` lines of each module: (module, Item) to the path
/// of the child it comes from.
fn reexports(
    files: &BTreeMap<PathBuf, SourceFile>,
) -> BTreeMap<(Vec<String>, String), Vec<String>> {
    let mut map = BTreeMap::new();
    for file in files.values() {
        for (is_pub, path) in named_paths(&file.text) {
            let segments: Vec<&str> = path.split("::").map(str::trim).collect();
            if !is_pub || segments.len() < 2 || ["crate", "super", "self"].contains(&segments[0]) {
                continue;
            }
            // `pub use child::Item as Name` is reached as `Name`.
            let (source, name) = match path.split_once(" as ") {
                Some((source, name)) if !name.contains("::") => (source, name.to_owned()),
                _ => (path.as_str(), segments.last().unwrap().to_string()),
            };
            let mut child = file.module.clone();
            child.extend(source.split("::").map(str::to_owned));
            map.insert((file.module.clone(), name), child);
        }
    }
    map
}

/// File to the files it imports from.
fn import_graph() -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let files = library_files();
    let reexports = reexports(&files);
    let mut graph = BTreeMap::new();
    for (path, file) in &files {
        let mut imports = BTreeSet::new();
        // `pub use child::..` re-exports are not `crate::`/`super::` paths,
        // so `absolute` leaves them out.
        for (_, named) in named_paths(&file.text) {
            let Some(absolute) = absolute(&file.module, &named) else {
                continue;
            };
            if let Some(target) = target(&files, &reexports, &absolute)
                && target != *path
            {
                imports.insert(target);
            }
        }
        graph.insert(path.clone(), imports);
    }
    graph
}

fn top_module(path: &Path) -> String {
    let first = path.iter().next().unwrap().to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

#[test]
fn modules_import_only_from_lower_floors() {
    let mut wrong = Vec::new();
    for (file, imports) in import_graph() {
        let module = top_module(&file);
        if module == "lib" {
            continue;
        }
        for target in imports {
            let other = top_module(&target);
            if other != module && other != "lib" && floor_of(&other) >= floor_of(&module) {
                wrong.push(format!(
                    "{} (floor {}) imports {} (floor {})",
                    file.display(),
                    floor_of(&module) + 1,
                    target.display(),
                    floor_of(&other) + 1
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that run up or sideways:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_files_import_each_other_in_a_circle() {
    let graph = import_graph();
    // Depth-first search for a back edge, reporting the circle it closes.
    fn visit(
        file: &PathBuf,
        graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        stack: &mut Vec<PathBuf>,
        done: &mut BTreeSet<PathBuf>,
    ) -> Option<Vec<PathBuf>> {
        if let Some(at) = stack.iter().position(|on_stack| on_stack == file) {
            return Some(stack[at..].to_vec());
        }
        if done.contains(file) {
            return None;
        }
        stack.push(file.clone());
        for next in graph.get(file).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, stack, done) {
                return Some(circle);
            }
        }
        stack.pop();
        done.insert(file.clone());
        None
    }
    let mut done = BTreeSet::new();
    for file in graph.keys() {
        if let Some(circle) = visit(file, &graph, &mut Vec::new(), &mut done) {
            let names: Vec<String> = circle.iter().map(|f| f.display().to_string()).collect();
            panic!(
                "files that import each other in a circle: {}",
                names.join(" -> ")
            );
        }
    }
}

#[test]
fn the_reader_resolves_the_import_forms_used_here() {
    assert_eq!(
        expand("crate::plugins::{Socket,types::{Hook,Manifest}}"),
        [
            "crate::plugins::Socket",
            "crate::plugins::types::Hook",
            "crate::plugins::types::Manifest"
        ]
    );
    let module = vec!["plugins".to_owned(), "wit".to_owned(), "v0_1".to_owned()];
    assert_eq!(
        absolute(&module, "super::super::types::Socket").unwrap(),
        ["plugins", "types", "Socket"]
    );
    let graph = import_graph();
    let session_io = graph
        .get(Path::new("session/io.rs"))
        .expect("session/io.rs is read");
    assert!(
        session_io.contains(Path::new("protocol/parse.rs"))
            || session_io.contains(Path::new("protocol/mod.rs"))
    );
}
