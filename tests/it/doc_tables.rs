//! The tables the docs keep of what the code declares, held against the
//! code, as the metrics table is held against the golden page:
//! - `docs/configuration.md`'s key table against the config structs (the
//!   parser's own list of fields, read from its unknown-field errors);
//! - `docs/reload.md`'s two tables against each key's declared reload
//!   decision (`#[reload(...)]` on the config fields);
//! - the README's flag table against `inferwatch --help`.

use std::collections::BTreeSet;
use std::process::Command;

use inferwatch::config::{keys_of, Config, KeyDecision};

use crate::common::repo;

/// The first column of a Markdown table's rows, each backticked name in it
/// (`a.b`/`c`/`.d` names the siblings `a.c` and `a.d` too), from the table
/// whose header row starts with `header`.
fn first_column(markdown: &str, header: &str) -> Vec<String> {
    let mut lines = markdown.lines().skip_while(|l| !l.starts_with(header)).skip(2);
    let mut keys = Vec::new();
    for line in lines.by_ref().take_while(|l| l.starts_with('|')) {
        let cell = line.split('|').nth(1).unwrap_or("");
        let parts: Vec<&str> = cell.split('`').collect();
        let mut last = String::new();
        for i in (1..parts.len()).step_by(2) {
            let name = parts[i];
            // `a.b`/`c` and `a.b`/`.c`: a sibling of the name before.
            last = match last.rsplit_once('.') {
                Some((parent, _)) if parts[i - 1].trim() == "/" => format!("{parent}.{}", name.trim_start_matches('.')),
                _ => name.to_string(),
            };
            keys.push(last.clone());
        }
    }
    assert!(!keys.is_empty(), "no table headed {header:?}");
    keys
}

/// A path of config keys: a field, `[]` for an item of a list, or
/// `@tag=variant` for the tag a tagged struct (a service's `kind`) needs
/// beside the field that follows.
fn yaml_setting(path: &[String], value: &str) -> String {
    path.iter().rev().fold(value.to_string(), |inner, seg| {
        if let Some(tag) = seg.strip_prefix('@') {
            let (k, v) = tag.split_once('=').unwrap();
            return format!("{{{k}: {v}, {}", &inner[1..]);
        }
        match seg.as_str() {
            "[]" => format!("[{inner}]"),
            field => format!("{{{field}: {inner}}}"),
        }
    })
}

/// The keys the parser expects at `path`, if it is a struct: what its
/// unknown-field error lists, each as the segments that lead to it. A
/// struct tagged by a key (a service's `kind`) has the tag, and the fields
/// of each variant behind `@tag=variant`.
fn fields_at(path: &[String]) -> Option<Vec<Vec<String>>> {
    let unknown = "unknown field `zz_not_a_key`, expected";
    let text = parse_error(path, "{zz_not_a_key: 1}")?;
    if let Some(expected) = expected_after(&text, unknown) {
        return Some(expected.into_iter().map(|f| vec![f]).collect());
    }
    let tag = text.split("missing field `").nth(1)?.split('`').next()?.to_string();
    let no_variant = parse_error(path, &format!("{{{tag}: zz_no_variant}}"))?;
    let variants = expected_after(&no_variant, "unknown variant `zz_no_variant`, expected")?;
    let mut fields = vec![vec![tag.clone()]];
    for v in variants {
        let text = parse_error(path, &format!("{{{tag}: {v}, zz_not_a_key: 1}}"))?;
        for f in expected_after(&text, unknown)? {
            fields.push(vec![format!("@{tag}={v}"), f]);
        }
    }
    Some(fields)
}

/// The parser's error for `value` set at `path`, if it refuses it.
fn parse_error(path: &[String], value: &str) -> Option<String> {
    let err = Config::from_yaml(&yaml_setting(path, value)).err()?;
    Some(err.to_string())
}

/// The backticked names after `marker` in `text` (serde's "expected one of
/// `a`, `b`" and "expected `a` or `b`").
fn expected_after(text: &str, marker: &str) -> Option<Vec<String>> {
    let (_, expected) = text.split_once(marker)?;
    Some(expected.split('`').skip(1).step_by(2).map(str::to_string).collect())
}

/// A path as the docs write it: `health.services[].tls`.
fn key_of(path: &[String]) -> String {
    let shown: Vec<&str> = path
        .iter()
        .filter(|s| !s.starts_with('@'))
        .map(String::as_str)
        .collect();
    shown.join(".").replace(".[]", "[]")
}

/// Every leaf key of the config (`health.services[].tls.ca_file`), and
/// every key with fields below it (`health.services[]`, `queues.tls`).
fn config_keys() -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut leaves, mut parents) = (BTreeSet::new(), BTreeSet::new());
    let mut todo = vec![Vec::<String>::new()];
    let mut walked = 0;
    while let Some(path) = todo.pop() {
        let fields = fields_at(&path).expect("the top level and each found struct list their fields");
        for f in fields {
            let p: Vec<String> = path.iter().cloned().chain(f).collect();
            let mut item = p.clone();
            item.push("[]".into());
            if fields_at(&p).is_some() {
                parents.insert(key_of(&p));
                todo.push(p);
            } else if fields_at(&item).is_some() {
                parents.insert(key_of(&item));
                todo.push(item);
            } else {
                leaves.insert(key_of(&p));
            }
            walked += 1;
        }
        assert!(walked < 5000, "runaway walk at {path:?}");
    }
    (leaves, parents)
}

#[test]
fn the_configuration_table_lists_every_key_the_parser_accepts_and_no_other() {
    let doc = std::fs::read_to_string(repo().join("docs/configuration.md")).unwrap();
    let rows: BTreeSet<String> = first_column(&doc, "| key |").into_iter().collect();
    let (leaves, parents) = config_keys();
    assert!(leaves.contains("health.services[].tls.ca_file"), "{leaves:?}");
    // A row names a key, or a struct or a list of them documented as a
    // whole (`queues.tls`, `health.services[].match`); a row ending in `[]`
    // (`health.services[]`) is the list's own, and its fields have rows.
    let covered = |leaf: &str| {
        rows.contains(leaf)
            || rows.iter().any(|r| {
                !r.ends_with("[]") && (leaf.starts_with(&format!("{r}.")) || leaf.starts_with(&format!("{r}[].")))
            })
    };
    let missing: Vec<&String> = leaves.iter().filter(|l| !covered(l)).collect();
    assert!(
        missing.is_empty(),
        "keys missing from docs/configuration.md: {missing:?}"
    );
    let unknown: Vec<&String> = rows
        .iter()
        .filter(|r| !leaves.contains(*r) && !parents.contains(*r) && !parents.contains(&format!("{r}[]")))
        .collect();
    assert!(
        unknown.is_empty(),
        "docs/configuration.md names keys the config does not have: {unknown:?}"
    );
}

/// The declared keys matched by a table's names (`web.*_timeout`).
fn matching(names: &[String], keys: &[(String, KeyDecision)]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for name in names {
        let (head, tail) = name.split_once('*').unwrap_or((name, ""));
        let hits: Vec<&String> = keys
            .iter()
            .map(|(k, _)| k)
            .filter(|k| {
                if name.contains('*') {
                    k.starts_with(head) && k.ends_with(tail)
                } else {
                    *k == name
                }
            })
            .collect();
        assert!(
            !hits.is_empty(),
            "docs/reload.md names {name:?}, which is no declared key"
        );
        out.extend(hits.into_iter().cloned());
    }
    out
}

#[test]
fn the_reload_tables_say_what_each_field_declares() {
    let doc = std::fs::read_to_string(repo().join("docs/reload.md")).unwrap();
    let keys = keys_of::<Config>();
    let declared = |live: bool| -> BTreeSet<String> {
        keys.iter()
            .filter(|(_, d)| (*d == KeyDecision::Live) == live)
            .map(|(k, _)| k.clone())
            .collect()
    };
    let live = matching(&first_column(&doc, "| changes live |"), &keys);
    let kept = matching(&first_column(&doc, "| kept until a restart |"), &keys);
    assert_eq!(
        live,
        declared(true),
        "docs/reload.md's live table and the #[reload(live)] fields"
    );
    assert_eq!(
        kept,
        declared(false),
        "docs/reload.md's kept table and the #[reload(kept)] fields"
    );
}

#[test]
fn the_readme_flag_table_matches_help() {
    let out = Command::new(env!("CARGO_BIN_EXE_inferwatch"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let rows = first_column(&readme, "| flag |");
    let words = |s: &str| -> Vec<String> { s.split_whitespace().map(str::to_string).collect() };
    // Options: every --flag of --help has a row, and every row's flag is one.
    let flag_of = |w: &str| w.trim_end_matches(',').split('=').next().unwrap().to_string();
    let help_flags: BTreeSet<String> = help
        .lines()
        .flat_map(|l| words(l).into_iter().take(3))
        .filter(|w| w.starts_with("--"))
        .map(|w| flag_of(&w))
        .filter(|f| f != "--help" && f != "--version")
        .collect();
    let row_flags: BTreeSet<String> = rows
        .iter()
        .flat_map(|r| words(r))
        .filter(|w| w.starts_with("--") && !w.contains('<'))
        .map(|w| flag_of(&w))
        .collect();
    let collectors: Vec<&String> = help_flags.iter().filter(|f| f.contains("collector.")).collect();
    assert!(!collectors.is_empty());
    let collector_row = readme
        .lines()
        .find(|l| l.starts_with("| `--collector.<name>`"))
        .unwrap();
    for f in &collectors {
        let name = f.rsplit('.').next().unwrap();
        assert!(
            collector_row.contains(&format!("`{name}`")),
            "the --collector row does not name {name}"
        );
    }
    let plain: BTreeSet<String> = help_flags
        .iter()
        .filter(|f| !f.contains("collector."))
        .cloned()
        .collect();
    let documented: BTreeSet<String> = row_flags.iter().filter(|f| plain.contains(*f)).cloned().collect();
    assert_eq!(documented, plain, "flags of --help without a row in the README");
    let stray: Vec<&String> = row_flags.iter().filter(|f| !help_flags.contains(*f)).collect();
    // A subcommand's own flags (`redis-acl --user`) are checked below.
    let flags_in = |text: &str| -> BTreeSet<String> {
        words(text)
            .iter()
            .map(|w| flag_of(w.trim_matches(|c| c == '[' || c == ']')))
            .filter(|w| w.starts_with("--"))
            .collect()
    };
    let sub_flags = |sub: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_inferwatch"))
            .args([sub, "--help"])
            .output()
            .unwrap();
        flags_in(&String::from_utf8(out.stdout).unwrap())
    };
    // Commands: every command of --help has a row, and its flags are its own.
    let commands: Vec<String> = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.len() >= 5, "{commands:?}");
    for c in &commands {
        let row = rows
            .iter()
            .find(|r| r.starts_with("inferwatch ") && words(r).contains(c))
            .unwrap_or_else(|| panic!("no README row for `inferwatch {c}`"));
        let own = sub_flags(c);
        for f in flags_in(row) {
            assert!(
                own.contains(&f) || help_flags.contains(&f),
                "`{row}` names {f}, which `inferwatch {c} --help` does not"
            );
        }
    }
    let stray: Vec<&&String> = stray
        .iter()
        .filter(|f| !commands.iter().any(|c| sub_flags(c).contains(f.as_str())))
        .collect();
    assert!(stray.is_empty(), "README flags that no --help lists: {stray:?}");
}
