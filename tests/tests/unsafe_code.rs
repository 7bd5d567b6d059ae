//! Unsafe code stays where SECURITY.md ("Unsafe code") says it is: every crate
//! root of the workspace (libraries and binaries, from `cargo metadata`) says
//! `#![forbid(unsafe_code)]` or `#![deny(unsafe_code)]`, and
//! `#[allow(unsafe_code)]` appears only on the declaration of a module listed
//! there. Crate roots listed there whole (test tooling) are exempt.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// The source files of every library and binary target, relative to `base`.
fn crate_roots(base: &Path) -> Vec<String> {
    let out = Command::new(option_env!("CARGO").unwrap_or("cargo"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(base)
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut roots = Vec::new();
    for package in meta["packages"].as_array().unwrap() {
        for target in package["targets"].as_array().unwrap() {
            let kinds: Vec<&str> = target["kind"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|k| k.as_str())
                .collect();
            if kinds.iter().any(|k| {
                matches!(
                    *k,
                    "lib" | "rlib" | "cdylib" | "dylib" | "bin" | "proc-macro"
                )
            }) {
                let path = Path::new(target["src_path"].as_str().unwrap());
                let rel = path
                    .strip_prefix(base)
                    .expect("target inside the workspace");
                roots.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    roots.sort();
    roots
}

/// The backquoted `.rs` paths of SECURITY.md's "Unsafe code" section (but this
/// test's own, which the section names too).
fn listed(security_md: &str) -> BTreeSet<String> {
    let section = security_md
        .split("\n## ")
        .find(|s| s.starts_with("Unsafe code"))
        .expect("SECURITY.md has a \"## Unsafe code\" section");
    section
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|t| t.ends_with(".rs") && !t.contains(' ') && !t.starts_with("tests/tests/"))
        .map(str::to_string)
        .collect()
}

/// Where `mod name;` declared in `file` lives (`name.rs` or `name/mod.rs`).
fn module_file(base: &Path, file: &str, name: &str) -> Option<String> {
    let file = Path::new(file);
    let stem = file.file_stem()?.to_str()?;
    let parent = file.parent()?;
    let dir = if matches!(stem, "lib" | "main" | "mod") || parent.ends_with("bin") {
        parent.to_path_buf()
    } else {
        parent.join(stem)
    };
    [
        dir.join(format!("{name}.rs")),
        dir.join(name).join("mod.rs"),
    ]
    .into_iter()
    .find(|p| base.join(p).is_file())
    .map(|p| p.to_string_lossy().into_owned())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every breach of the rule, as one line each.
fn problems(base: &Path, roots: &[String], listed: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    let mut scanned = BTreeSet::new();
    for root in roots {
        if listed.contains(root) {
            used.insert(root.clone());
            continue;
        }
        let text = std::fs::read_to_string(base.join(root)).unwrap();
        if !text.lines().any(|l| {
            matches!(
                l.trim(),
                "#![forbid(unsafe_code)]" | "#![deny(unsafe_code)]"
            )
        }) {
            problems.push(format!(
                "{root}: crate root without #![forbid(unsafe_code)] or #![deny(unsafe_code)]"
            ));
        }
        let src_dir = Path::new(root).parent().unwrap();
        let mut files = Vec::new();
        rust_files(&base.join(src_dir), &mut files);
        files.sort();
        for path in files {
            let rel = path
                .strip_prefix(base)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if !scanned.insert(rel.clone()) {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let lines: Vec<&str> = text.lines().map(str::trim).collect();
            for (i, line) in lines.iter().enumerate() {
                if !line.contains("allow(unsafe_code)") || line.starts_with("//") {
                    continue;
                }
                let declared = lines[i + 1..]
                    .iter()
                    .find(|l| !l.starts_with("//") && !l.starts_with("#["))
                    .and_then(|l| l.strip_prefix("pub ").or(Some(l)))
                    .and_then(|l| l.strip_prefix("mod "))
                    .and_then(|l| l.strip_suffix(';'));
                let module = (*line == "#[allow(unsafe_code)]")
                    .then_some(declared)
                    .flatten()
                    .and_then(|name| module_file(base, &rel, name));
                match module {
                    Some(m) if listed.contains(&m) => {
                        used.insert(m);
                    }
                    Some(m) => problems.push(format!(
                        "{rel}:{}: unsafe code allowed in {m}, which SECURITY.md does not list",
                        i + 1
                    )),
                    None => problems.push(format!(
                        "{rel}:{}: allow(unsafe_code) other than on a `mod NAME;` declaration",
                        i + 1
                    )),
                }
            }
        }
    }
    for entry in listed.difference(&used) {
        problems.push(format!(
            "SECURITY.md lists {entry}, but no crate root or module allow names it"
        ));
    }
    problems
}

#[test]
fn unsafe_code_is_only_in_the_modules_security_md_lists() {
    let base = workspace();
    let security = std::fs::read_to_string(base.join("SECURITY.md")).unwrap();
    let roots = crate_roots(&base);
    assert!(
        roots.iter().any(|r| r == "spa-core/src/lib.rs"),
        "{roots:?}"
    );
    let found = problems(&base, &roots, &listed(&security));
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_check_finds_a_bare_root_an_unlisted_module_and_a_stale_entry() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let write = |p: &str, text: &str| {
        let path = base.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("a/src/lib.rs", "pub mod x;\n");
    write("a/src/x.rs", "");
    write(
        "b/src/lib.rs",
        "#![deny(unsafe_code)]\n// why\n#[allow(unsafe_code)]\nmod sys;\n#[allow(unsafe_code)]\npub mod net;\n",
    );
    write("b/src/sys.rs", "#[allow(unsafe_code)]\nfn f() {}\n");
    write("b/src/net/mod.rs", "");
    let roots = vec!["a/src/lib.rs".to_string(), "b/src/lib.rs".to_string()];
    let list: BTreeSet<String> = ["b/src/net/mod.rs", "c/src/gone.rs"]
        .map(String::from)
        .into();
    let found = problems(base, &roots, &list);
    assert_eq!(
        found,
        [
            "a/src/lib.rs: crate root without #![forbid(unsafe_code)] or #![deny(unsafe_code)]",
            "b/src/lib.rs:3: unsafe code allowed in b/src/sys.rs, which SECURITY.md does not list",
            "b/src/sys.rs:1: allow(unsafe_code) other than on a `mod NAME;` declaration",
            "SECURITY.md lists c/src/gone.rs, but no crate root or module allow names it",
        ],
        "{found:#?}"
    );
    let fixed: BTreeSet<String> = ["b/src/net/mod.rs", "b/src/sys.rs", "a/src/lib.rs"]
        .map(String::from)
        .into();
    write("b/src/sys.rs", "");
    assert_eq!(problems(base, &roots, &fixed), Vec::<String>::new());
}
