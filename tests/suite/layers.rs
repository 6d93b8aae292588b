//! The architecture holds: every module of `src/` sits in a layer folder, imports only point
//! down (the domain never imports `cli` or `cmd`), and no two modules import each other,
//! directly or around a loop. Read from the source text, so a change that breaks the layering
//! fails here with the import that does.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The layers from the top; a module may import only from its own layer and those after it.
/// `cmd` may also use `cli`'s types (the parsed command line is its input), and nothing else
/// may. The base layer's two folders use each other (a report holds a `Pid`, a process error
/// is an exit code); the cycle test keeps their modules from importing each other round.
const LAYERS: &[&[&str]] = &[
    &["cli"],
    &["cmd"],
    &["serve"],
    &["lifecycle"],
    &["testdata"],
    &["server"],
    &["state"],
    &["os", "output"],
];

fn rank(folder: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&folder))
}

fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// `folder::module` of a source file (`folder` alone for a folder's mod.rs).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p != "mod")
        .collect();
    parts.join("::")
}

/// The `crate::folder::module` paths a file uses outside its unit tests.
fn imports(text: &str) -> BTreeSet<(String, Option<String>)> {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let word = |s: &str| -> String {
            s.chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect()
        };
        let folder = word(rest);
        let module = rest[folder.len()..]
            .strip_prefix("::")
            .map(word)
            .filter(|m| !m.is_empty());
        found.insert((folder, module));
    }
    found
}

struct Tree {
    /// module -> the modules it imports (folder::module, or folder)
    graph: BTreeMap<String, BTreeSet<String>>,
    /// (module, imported) pairs that go up or sideways into cli/cmd
    upward: Vec<String>,
    /// files directly in src/ other than lib.rs and main.rs
    loose: Vec<String>,
}

fn read_tree() -> Tree {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut tree = Tree {
        graph: BTreeMap::new(),
        upward: Vec::new(),
        loose: Vec::new(),
    };
    for file in files {
        let module = module_of(&src, &file);
        let folder = module.split("::").next().unwrap().to_string();
        if !module.contains("::")
            && !["lib", "main"].contains(&module.as_str())
            && rank(&folder).is_none()
        {
            tree.loose.push(module.clone());
        }
        let Some(mine) = rank(&folder) else { continue };
        for (to_folder, to_module) in imports(&fs::read_to_string(&file).unwrap()) {
            let Some(theirs) = rank(&to_folder) else {
                continue;
            };
            let target = match &to_module {
                Some(m) => format!("{to_folder}::{m}"),
                None => to_folder.clone(),
            };
            let allowed = theirs >= mine || (folder == "cmd" && to_folder == "cli");
            if !allowed {
                tree.upward
                    .push(format!("{module} imports crate::{target}"));
            }
            if target != module {
                tree.graph.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    tree
}

#[test]
fn every_module_sits_in_a_layer() {
    let tree = read_tree();
    assert!(
        tree.loose.is_empty(),
        "modules outside the layer folders: {:?}",
        tree.loose
    );
}

#[test]
fn imports_only_point_down() {
    let tree = read_tree();
    assert!(
        tree.upward.is_empty(),
        "imports that go up a layer (or into cli/cmd from the domain):\n{}",
        tree.upward.join("\n")
    );
}

#[test]
fn no_module_cycles() {
    let tree = read_tree();
    // Depth-first search for a path back to where it started.
    fn reaches(
        graph: &BTreeMap<String, BTreeSet<String>>,
        from: &str,
        goal: &str,
        seen: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> bool {
        for next in graph.get(from).into_iter().flatten() {
            if next == goal {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if reaches(graph, next, goal, seen, path) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    for start in tree.graph.keys() {
        let mut path = vec![start.clone()];
        if reaches(&tree.graph, start, start, &mut BTreeSet::new(), &mut path) {
            panic!("module cycle: {}", path.join(" -> "));
        }
    }
}

#[test]
fn the_checks_see_imports() {
    let found = imports(
        "use crate::state::safefs::Dir;\nfn f() { crate::os::process::alive(1); }\n#[cfg(test)]\nuse crate::cli;",
    );
    assert!(found.contains(&("state".into(), Some("safefs".into()))));
    assert!(found.contains(&("os".into(), Some("process".into()))));
    assert!(
        !found.iter().any(|(f, _)| f == "cli"),
        "test code is not counted"
    );
}
