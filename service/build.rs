//! Records the git commit the binary is built from (`tripline_build_info`), or `unknown`.

use std::process::Command;

/// `git <args>`'s output, trimmed; `None` when git or the repository is not there.
fn git(args: &[&str]) -> Option<String> {
    let o = Command::new("git").args(args).output().ok().filter(|o| o.status.success())?;
    let s = String::from_utf8(o.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

fn main() {
    let hash = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=TRIPLINE_GIT_HASH={hash}");
    // Rebuild when HEAD moves (a commit or a checkout), not on every build. In a worktree, HEAD
    // is in the worktree's git dir and the branches in the common one.
    if let (Some(dir), Some(common)) = (git(&["rev-parse", "--git-dir"]), git(&["rev-parse", "--git-common-dir"])) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={common}/refs/heads");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
