//! Build facts for `inferwatch --version` and `inferwatch_build_info`, as
//! Prometheus tools carry them: the git revision and branch (`unknown`
//! outside a git checkout), the build date (`SOURCE_DATE_EPOCH` when set, for
//! reproducible builds) and the rustc version.

use std::process::Command;

fn run(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    let revision = run("git", &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let branch = run("git", &["rev-parse", "--abbrev-ref", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let date = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(epoch) => run("date", &["-u", "-d", &format!("@{epoch}"), "+%Y-%m-%dT%H:%M:%SZ"]),
        Err(_) => run("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
    }
    .unwrap_or_else(|| "unknown".into());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = run(&rustc, &["--version"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=INFERWATCH_REVISION={revision}");
    println!("cargo:rustc-env=INFERWATCH_BRANCH={branch}");
    println!("cargo:rustc-env=INFERWATCH_BUILD_DATE={date}");
    println!("cargo:rustc-env=INFERWATCH_RUSTC_VERSION={rustc_version}");
    // A new commit or checkout, not every build, gives new facts.
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
}
