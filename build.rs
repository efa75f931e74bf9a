//! Build script: the version `trace-proxy --version` prints, with the git commit it was built
//! from. Built outside a checkout (`cargo install` from a tarball, a container build context
//! without `.git`) it takes `TRACE_PROXY_COMMIT` when that is set, else prints the version alone.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    // Without this, any file of the package changing would rerun the script.
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=TRACE_PROXY_COMMIT");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = std::env::var("TRACE_PROXY_COMMIT")
        .ok()
        .and_then(|c| c.split_whitespace().next().map(str::to_owned))
        .or_else(|| git_commit(&dir));
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let version = match commit {
        Some(commit) => format!("{version} (commit {commit})"),
        None => version,
    };
    println!("cargo:rustc-env=TRACE_PROXY_VERSION={version}");
}

/// `git` in `dir`, its trimmed stdout when it succeeds.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8(out.stdout).ok()?;
    Some(text.trim().to_owned()).filter(|t| !t.is_empty())
}

/// The commit checked out in `dir`, if `dir` is the top of a git work tree (a tarball unpacked
/// inside some other repository must not print that repository's commit). Also asks cargo to
/// run this again when HEAD moves.
fn git_commit(dir: &Path) -> Option<String> {
    let top = git(dir, &["rev-parse", "--show-toplevel"])?;
    let same = |a: &Path, b: &Path| a.canonicalize().ok() == b.canonicalize().ok();
    if !same(Path::new(&top), dir) {
        return None;
    }
    let commit = git(dir, &["rev-parse", "--short=12", "HEAD"])?;
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    watched.extend(git(dir, &["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        let Some(path) = git(dir, &["rev-parse", "--git-path", &name]) else {
            continue;
        };
        let path = dir.join(path);
        // A path that does not exist would make cargo run this on every build.
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    Some(commit)
}
