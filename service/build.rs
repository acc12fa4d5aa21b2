//! Records the git commit the binary is built from (`tripline_build_info`), or `unknown`.

use std::process::Command;

fn main() {
    let hash = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=TRIPLINE_GIT_HASH={hash}");
    // Rebuild when HEAD moves (a commit or a checkout), not on every build.
    for p in ["../.git/HEAD", "../.git/refs/heads"] {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
