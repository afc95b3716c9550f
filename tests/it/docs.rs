//! The README and `docs/`: every relative link resolves to a file of the
//! repository (never outside it: a clone stands alone), and every `#anchor`
//! into a Markdown file names one of its headings, as GitHub makes their ids.

use std::path::{Path, PathBuf};

use crate::common::repo;

/// GitHub's heading id: lowercase, punctuation dropped, spaces to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(markdown: &str) -> Vec<String> {
    let mut in_code = false;
    let mut out = Vec::new();
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if !in_code && line.starts_with('#') {
            out.push(slug(line.trim_start_matches('#')));
        }
    }
    out
}

/// `(text, target)` of every inline link outside code blocks.
fn links(markdown: &str) -> Vec<String> {
    let mut in_code = false;
    let mut out = Vec::new();
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    out
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![repo().join("README.md")];
    for entry in std::fs::read_dir(repo().join("docs")).unwrap().flatten() {
        if entry.path().extension().and_then(|e| e.to_str()) == Some("md") {
            files.push(entry.path());
        }
    }
    files
}

#[test]
fn every_relative_link_in_the_readme_and_docs_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let dir = file.parent().unwrap();
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") || target.contains(' ') {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let resolved: PathBuf = if path.is_empty() { file.clone() } else { dir.join(path) };
            if !Path::new(&resolved).exists() {
                broken.push(format!("{}: {target} (no such file)", file.display()));
                continue;
            }
            let inside = resolved
                .canonicalize()
                .is_ok_and(|r| r.starts_with(repo().canonicalize().unwrap()));
            if !inside {
                broken.push(format!("{}: {target} (outside the repository)", file.display()));
                continue;
            }
            if let (Some(anchor), Some("md")) = (anchor, resolved.extension().and_then(|e| e.to_str())) {
                let heads = anchors(&std::fs::read_to_string(&resolved).unwrap());
                if !heads.iter().any(|h| h == anchor) {
                    broken.push(format!("{}: {target} (no heading #{anchor})", file.display()));
                }
            }
        }
    }
    assert!(checked > 100, "only {checked} links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_is_a_front_door_and_docs_has_an_index() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= 400,
        "README.md has {lines} lines; reference material goes to docs/"
    );
    let index = std::fs::read_to_string(repo().join("docs/README.md")).unwrap();
    for file in markdown_files() {
        let name = file.file_name().unwrap().to_str().unwrap().to_string();
        if file.parent().unwrap().ends_with("docs") && name != "README.md" {
            assert!(
                index.contains(&format!("]({name})")),
                "docs/README.md does not list {name}"
            );
        }
    }
}
