# Shared by the scripts: where the build cache lives, and a check that the toolchain is there.
# Sourced, not run.

# Build outside the work tree so that a fresh checkout reuses the cache (a cold run still works).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${TRIPLINE_TARGET_DIR:-$HOME/.cache/tripline/target}}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

tripline_require_toolchain() {
  if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
      export PATH="$HOME/.cargo/bin:$PATH"
    else
      echo "error: cargo is not installed. Install Rust (https://rustup.rs), then run this again." >&2
      exit 2
    fi
  fi
  # C toolchain for crates with C parts; Debian package names.
  if ! command -v cc >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "installing build-essential ..." >&2
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential pkg-config >/dev/null
    else
      echo "error: a C compiler is needed: apt-get install build-essential pkg-config" >&2
      exit 2
    fi
  fi
}
