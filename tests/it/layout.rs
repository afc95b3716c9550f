//! The layout rules the code holds to: no function over 60 lines outside
//! tests (`scripts/check_fn_length`), and no import cycle between the
//! crate's top-level modules or between sibling files
//! (`scripts/check_cycles`), run on the tree and on a small tree with a
//! known cycle, so that a checker that went blind would fail here too.

use std::process::Command;

use crate::common::repo;

/// `scripts/check_cycles DIR`: whether it passed, and what it printed.
fn check_cycles(dir: &std::path::Path) -> (bool, String) {
    let out = Command::new("python3")
        .arg(repo().join("scripts/check_cycles"))
        .arg(dir)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_source_tree_has_no_import_cycle() {
    let (ok, out) = check_cycles(&repo().join("src"));
    assert!(ok, "{out}");
    assert!(out.starts_with("no import cycles among "), "{out}");
}

#[test]
fn the_checker_finds_a_cycle_past_a_test_module_and_ignores_strings_and_comments() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n");
    // a -> b only after a test module; b -> a; c is named only in a
    // string, a comment and test code, which are not imports.
    write(
        "a.rs",
        "#[cfg(test)]\nmod tests {\n    use crate::c::X;\n}\n\npub fn f() -> u32 {\n    crate::b::g()\n}\n",
    );
    write(
        "b.rs",
        "use crate::a;\n// crate::c::Y in a comment\npub fn g() -> u32 {\n    let _ = \"crate::c:: // in a string\";\n    1\n}\n",
    );
    write("c.rs", "pub struct X;\npub struct Y;\n");
    let (ok, out) = check_cycles(dir.path());
    assert!(!ok, "{out}");
    assert_eq!(out.trim(), "cycle: a -> b -> a");
}

#[test]
fn nothing_in_the_repository_points_outside_it_to_the_shared_folder() {
    let out = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success());
    // Spelled in two parts, so that this file does not name it.
    let needles = [format!("../{}", "shared"), format!("{}/gpu/README", "shared")];
    let mut found = Vec::new();
    for file in String::from_utf8(out.stdout)
        .unwrap()
        .split('\0')
        .filter(|f| !f.is_empty())
    {
        let Ok(text) = std::fs::read_to_string(repo().join(file)) else {
            continue;
        };
        for needle in &needles {
            if text.contains(needle.as_str()) {
                found.push(format!("{file}: {needle}"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "the repository must stand alone:\n{}",
        found.join("\n")
    );
}

/// `scripts/check_fn_length DIR [LIMIT]`: whether it passed, and what it
/// printed.
fn check_fn_length(dir: &std::path::Path, limit: &str) -> (bool, String) {
    let out = Command::new("python3")
        .arg(repo().join("scripts/check_fn_length"))
        .arg(dir)
        .arg(limit)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn no_function_outside_tests_is_over_60_lines() {
    let (ok, out) = check_fn_length(&repo().join("src"), "60");
    assert!(ok, "{out}");
    assert!(out.starts_with("no function over 60 lines"), "{out}");
}

#[test]
fn the_length_checker_counts_bodies_past_strings_and_test_modules() {
    let dir = tempfile::tempdir().unwrap();
    // `long` is 7 lines with a brace in a string and a comment; the test
    // module before it is longer and not counted; `short` is 3 lines; a
    // trait method without a body is no function.
    let text = "#[cfg(test)]\nmod tests {\n    fn t() {\n        1;\n        2;\n        3;\n        4;\n    }\n}\n\
                trait T {\n    fn decl(&self);\n}\n\
                fn long() {\n    let _ = \"}\";\n    // }\n    let _ = '}';\n    let _ = 1;\n    let _ = 2;\n}\n\
                fn short() {\n    let _ = 0;\n}\n";
    std::fs::write(dir.path().join("lib.rs"), text).unwrap();
    let (ok, out) = check_fn_length(dir.path(), "6");
    assert!(!ok, "{out}");
    let lib = dir.path().join("lib.rs");
    assert_eq!(
        out.trim(),
        format!("{}:13: fn long is 7 lines (limit 6)", lib.display())
    );
    let (ok, out) = check_fn_length(dir.path(), "7");
    assert!(ok, "{out}");
}

#[test]
fn the_redis_client_and_the_client_tls_settings_are_leaves() {
    // They may name only each other: the config sits above them, so it
    // never builds a client, and they never read it.
    for (file, allowed) in [("src/redis_conn.rs", "crate::client_tls"), ("src/client_tls.rs", "")] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        let named: Vec<&str> = code
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .filter(|l| l.contains("crate::") && (allowed.is_empty() || !l.contains(allowed)))
            .collect();
        assert!(named.is_empty(), "{file} names other modules: {named:?}");
    }
}
