//! The Debian package: `cargo deb` builds it; it installs with `dpkg -i` on
//! this machine (the tests run as root), its binary runs as its user with
//! its config and serves `/metrics`, lintian finds no error, and remove and
//! purge leave only what Debian policy keeps (the system user).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{eventually, free_port, repo};

fn sh(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// `cargo deb`, and the package it wrote.
fn build() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .arg("deb")
        .current_dir(repo())
        .output()
        .expect("cargo deb (scripts/test installs cargo-deb)");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cargo deb: {text}");
    let path = text
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .unwrap_or_else(|| panic!("no .deb named in: {text}"));
    PathBuf::from(path)
}

fn mode_owner(path: &str) -> String {
    sh("stat", &["-c", "%a %U:%G", path]).1.trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debian_package_installs_runs_and_purges_cleanly() {
    let deb = build();
    let deb_s = deb.display().to_string();
    assert!(
        deb.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(&format!("inferwatch_{}-1_amd64", env!("CARGO_PKG_VERSION"))),
        "{deb_s}"
    );
    // What it holds.
    let (_, contents) = sh("dpkg-deb", &["-c", &deb_s]);
    for want in [
        "./usr/bin/inferwatch",
        "./etc/inferwatch/inferwatch.yml",
        "./usr/lib/systemd/system/inferwatch.service",
        "./usr/share/inferwatch/alert_rules.yml",
        "./usr/share/inferwatch/recording_rules.yml",
        "./usr/share/inferwatch/inference_rules.yml",
        "./usr/share/inferwatch/grafana-dashboards/inferwatch-gpu.json",
        "./usr/share/doc/inferwatch/changelog.Debian.gz",
    ] {
        assert!(contents.contains(want), "{want} in:\n{contents}");
    }
    let (_, conffiles) = sh("dpkg-deb", &["-I", &deb_s, "conffiles"]);
    assert_eq!(conffiles.trim(), "/etc/inferwatch/inferwatch.yml");
    // lintian: no error (each warning is explained in the README).
    let (_, lint) = sh("lintian", &[&deb_s]);
    let errors: Vec<&str> = lint.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(errors.is_empty(), "{lint}");
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for warning in lint.lines().filter(|l| l.starts_with("W:")) {
        let tag = warning.split_whitespace().nth(2).unwrap();
        assert!(
            readme.contains(tag),
            "lintian warning {tag} is not explained in the README: {warning}"
        );
    }

    // Install.
    let (ok, text) = sh("dpkg", &["-i", &deb_s]);
    assert!(ok, "{text}");
    let (ok, user) = sh("getent", &["passwd", "inferwatch"]);
    assert!(ok && user.contains(":/var/lib/inferwatch:/usr/sbin/nologin"), "{user}");
    assert_eq!(mode_owner("/var/lib/inferwatch"), "750 inferwatch:inferwatch");
    assert_eq!(mode_owner("/etc/inferwatch/inferwatch.yml"), "640 root:inferwatch");
    assert_eq!(mode_owner("/usr/bin/inferwatch"), "755 root:root");

    // The installed binary, as the installed user, with the installed config.
    let port = free_port();
    let mut child = Command::new("setpriv")
        .args([
            "--reuid=inferwatch",
            "--regid=inferwatch",
            "--init-groups",
            "/usr/bin/inferwatch",
        ])
        .args(["--config", "/etc/inferwatch/inferwatch.yml"])
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .current_dir("/var/lib/inferwatch")
        .env("GPU_KERNEL_LOG", "")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let page = eventually(
        "the installed daemon to serve /metrics",
        Duration::from_secs(30),
        || async move {
            let r = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.ok()?;
            r.text().await.ok().filter(|t| t.contains("inferwatch_build_info"))
        },
    )
    .await;
    assert!(page.contains("gpu_available"), "{page}");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        Path::new("/var/lib/inferwatch/data").is_dir(),
        "its state went to /var/lib/inferwatch"
    );

    // Remove keeps the config and the state; purge takes them.
    let (ok, text) = sh("dpkg", &["-r", "inferwatch"]);
    assert!(ok, "{text}");
    assert!(!Path::new("/usr/bin/inferwatch").exists());
    assert!(
        Path::new("/etc/inferwatch/inferwatch.yml").exists(),
        "a conffile stays until purge"
    );
    let (ok, text) = sh("dpkg", &["-P", "inferwatch"]);
    assert!(ok, "{text}");
    for gone in [
        "/etc/inferwatch",
        "/var/lib/inferwatch",
        "/usr/share/inferwatch",
        "/usr/lib/systemd/system/inferwatch.service",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} is left after purge");
    }
    let (_, status) = sh("dpkg-query", &["-W", "-f=${Status}", "inferwatch"]);
    assert!(!status.contains("installed"), "{status}");
    // Debian policy keeps the system user (files it owned may remain).
    assert!(sh("getent", &["passwd", "inferwatch"]).0);
}
