#!/usr/bin/env bash
# KCO's one entry point for building, testing and trying it.
#
#   ./build.sh test    build what is missing, then fmt check, clippy and every test,
#                      instrumented: the same run measures line coverage per module
#                      and fails when a critical path is below 80% (target/coverage/)
#   ./build.sh demo    a local cluster, a Deployment of simulated Mina pods, TargetApps and `kco run`
#   ./build.sh tools   only build the local control plane tools into the cache
#   ./build.sh build   the kco binary as it ships (static, musl, without the simulator)
#   ./build.sh image   the container image, with Podman, from that binary on a
#                      staged root file system; IMAGE=name:tag (default kco:dev)
#   ./build.sh crds    regenerate crds/ (and the chart's copies) from the Rust types
#   ./build.sh chart-docs  regenerate charts/kco/README.md from values.yaml
#   ./build.sh coverage  the coverage table of the last test run, again
#   ./build.sh soak [SECONDS]  the soak run (default 3600 s, 300 targets); report in
#                      target/soak/
#   ./build.sh fuzz [SECONDS]  every cargo-fuzz target for SECONDS each (default 30)
#   ./build.sh bench [--quick]  every bench at its standard sizes, one report with
#                      the date and commit in target/bench/report.md (--quick: tiny
#                      sizes, built unoptimized, to check that the benches still
#                      run; no figure counts)
#   ./build.sh release-meta vX.Y.Z [OWNER]  the version, image and chart a release
#                      of that tag publishes (the release workflow's one source)
#
# Tools (the Kubernetes components, etcd, kwok, kubectl, helm) are built from source once and kept in
# $KCO_CACHE_DIR (default ~/.cache/kco); delete that directory to rebuild them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

step() { printf '\n==> %s\n' "$*" >&2; }
die() { echo "build.sh: $*" >&2; exit 1; }

need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 is not installed: $2 (see README.md, 'What you need')"
}

tools() {
  need go "Go builds the local Kubernetes control plane"
  need python3 "python3 fetches the Mina schema package"
  need npm "npm fetches the o1js package (Mina's TypeScript client)"
  step "local control plane tools (cached in ${KCO_CACHE_DIR:-~/.cache/kco})"
  KCO_TOOLS_DIR="$(bash tests/tools/install.sh all | tail -n 1)"
  export KCO_TOOLS_DIR
}

rust() {
  need cargo "Rust builds KCO"
}

cache_root="${KCO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kco}"

# prune_cache DIR: deletes from the cached target directory DIR what builds of
# KCO older than the last two left there (every clone and every change of
# Cargo.lock leaves a new set: gigabytes a day in CI); dependencies stay.
prune_cache() {
  python3 tests/tools/prune_cache.py "$1" Cargo.toml >&2
}

# cargo_tool NAME VERSION: installs a cargo subcommand from crates.io into the cache once.
cargo_tool() {
  local root="$cache_root/cargo"
  export PATH="$root/bin:$PATH"
  local have
  # Read whole before matching: under pipefail, `| grep -q` would fail the check
  # whenever grep stopped reading before the tool finished writing.
  have="$({ "$root/bin/$1" "${1#cargo-}" --version; "$root/bin/$1" --version; } 2>/dev/null || true)"
  if ! grep -qF "$2" <<<"$have"; then
    step "installing $1 $2 into $root (once)"
    cargo install --locked --quiet "$1" --version "$2" --root "$root"
  fi
}

# coverage_tools: llvm-tools and cargo-llvm-cov, installed once; the instrumented
# build is kept in the cache, so that a fresh clone (CI) rebuilds only KCO itself.
coverage_tools() {
  if ! ls "$(rustc --print sysroot)"/lib/rustlib/*/bin/llvm-profdata >/dev/null 2>&1; then
    need rustup "rustup installs the llvm-tools component coverage needs"
    step "rustup component add llvm-tools"
    rustup component add llvm-tools
  fi
  cargo_tool cargo-llvm-cov 0.9.1
  export CARGO_LLVM_COV_TARGET_DIR="${CARGO_LLVM_COV_TARGET_DIR:-$cache_root/llvm-cov-target}"
  prune_cache "$CARGO_LLVM_COV_TARGET_DIR"
  mkdir -p target/coverage
}

# release_env: what `kco version` reports, for builds that ship: the version of
# Cargo.toml, the commit and the commit's time (so that one commit builds one
# binary). Values already in the environment (the Containerfile's) win.
release_env() {
  export KCO_VERSION="${KCO_VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)}"
  if [ -z "${KCO_GIT_REVISION:-}" ] && git rev-parse HEAD >/dev/null 2>&1; then
    KCO_GIT_REVISION="$(git rev-parse HEAD)"
    SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}"
  fi
  export KCO_GIT_REVISION="${KCO_GIT_REVISION:-unknown}" SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-}"
}

# static_binary: the operator as it ships, a static musl binary without the
# simulator (which the default features, for tests and the demo, carry); prints
# its path. Needs the musl target and musl-gcc (jemalloc and ring compile C).
static_binary() {
  local triple
  triple="$(uname -m)-unknown-linux-musl"
  static_tools
  release_env
  export CARGO_TARGET_DIR="${KCO_STATIC_TARGET_DIR:-$cache_root/static-target}"
  prune_cache "$CARGO_TARGET_DIR"
  step "cargo build --release --target $triple (static, without the simulator)"
  cargo build --locked --release --target "$triple" --bin kco --no-default-features --features jemalloc >&2
  echo "$CARGO_TARGET_DIR/$triple/release/kco"
}

# static_tools: the musl target and musl-gcc (jemalloc and ring compile C).
static_tools() {
  local triple
  triple="$(uname -m)-unknown-linux-musl"
  rustup target list --installed 2>/dev/null | grep -qx "$triple" || {
    need rustup "rustup adds the $triple target"
    step "rustup target add $triple" ; rustup target add "$triple" >&2
  }
  command -v musl-gcc >/dev/null 2>&1 || apt_install musl-tools "musl-gcc compiles the C parts of a static binary"
}

# stage_rootfs BINARY: target/image/rootfs holds the binary (stripped), the CA
# certificates and the non-root user 1000 (the chart's), and nothing else: no shell, no libc.
stage_rootfs() {
  local rootfs=target/image/rootfs certs=/etc/ssl/certs/ca-certificates.crt
  [ -s "$certs" ] || apt_install ca-certificates "the image carries the CA certificates"
  rm -rf "$rootfs" && mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs"
  install -m 0755 "$1" "$rootfs/usr/local/bin/kco"
  strip "$rootfs/usr/local/bin/kco" 2>/dev/null || true
  install -m 0644 "$certs" "$rootfs/etc/ssl/certs/ca-certificates.crt"
  printf 'kco:x:1000:1000:kco:/nonexistent:/sbin/nologin\n' > "$rootfs/etc/passwd"
  printf 'kco:x:1000:\n' > "$rootfs/etc/group"
  find "$rootfs" -exec touch -h -d "@${SOURCE_DATE_EPOCH:-0}" {} +
}

# image_tools: podman (Debian's package), installed when missing.
image_tools() {
  command -v podman >/dev/null 2>&1 || apt_install podman "podman builds the image"
}

# apt_install PACKAGE WHY: Debian's package, installed as root (or with sudo).
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "$1 is not installed: $2 (install it with your package manager)"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  step "installing $1 (Debian package): $2"
  $sudo apt-get install -y -q "$1" >&2 || die "could not install $1: $2"
}

# supply_chain: the dependency tree's licenses, sources, banned crates and
# duplicate versions (deny.toml), and no dependency that is never used. The
# advisory database is not fetched here; the GitHub workflow checks advisories.
supply_chain() {
  cargo_tool cargo-deny 0.20.2
  cargo_tool cargo-machete 0.9.2
  step "cargo deny check bans licenses sources"
  # cargo deny reads the metadata of every platform's dependencies (Windows'
  # too): a fresh machine has fetched only its own, so fetch them all first.
  cargo fetch --locked --quiet
  cargo deny --locked --offline check bans licenses sources
  step "cargo machete (unused dependencies)"
  cargo machete
}

# coverage_gate: the per-module table of the last test run, failing when a critical
# path is below 80% (docs/coverage.md).
coverage_gate() {
  step "line coverage of the critical paths (docs/coverage.md)"
  python3 tests/tools/coverage.py target/coverage/lcov.info \
    --markdown target/coverage/coverage.md
}

# Every bench in one go, and one table of their headline figures.
benches() {
  local quick=${1:-} out=target/bench name
  mkdir -p "$out"
  # Benches build in release: their own target directory in the cache stays warm.
  # A quick run only checks that they run: built unoptimized, minutes sooner.
  export CARGO_TARGET_DIR="$cache_root/bench-target"
  prune_cache "$CARGO_TARGET_DIR"
  local -a profile=()
  [ "$quick" = "--quick" ] && profile=(--profile dev)
  step "building the benches (${profile[1]:-release})"
  cargo bench --locked "${profile[@]}" --no-run --benches
  for name in pipeline scale admission failover hostile series secured; do
    local -a args=()
    if [ "$quick" = "--quick" ]; then
      case "$name" in
        pipeline) args=(--targets 200 --interval 2 --seconds 3) ;;
        scale) args=(--apps 100 --namespaces 5 --interval 2 --window 3) ;;
        admission) args=(--creates 20) ;;
        failover) args=(--runs 1) ;;
        hostile) args=(--healthy 20 --seconds 3) ;;
        series) args=(--targets 100) ;;
        secured) args=(--polls 500) ;;
      esac
    fi
    step "bench: $name ${args[*]}"
    cargo bench --locked "${profile[@]}" --bench "$name" -- "${args[@]}" | tee "$out/$name.md"
    grep -q '^headline |' "$out/$name.md" || die "the $name bench printed no figures"
  done
  {
    echo "# Bench report"
    echo
    echo "$(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)," \
      "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)${quick:+ — quick run: sizes too small for the figures to mean anything}"
    echo
    echo "| bench | figure | value |"
    echo "|---|---|---|"
    cat "$out"/{pipeline,scale,admission,failover,hostile,series,secured}.md \
      | sed -n 's/^headline | \(.*\)$/| \1 |/p'
    echo
    echo "Each bench's own tables: target/bench/<bench>.md."
  } > "$out/report.md"
  cat "$out/report.md"
}

case "${1:-}" in
  tools)
    tools
    ;;
  test)
    rust
    tools
    step "cargo fmt --check"
    cargo fmt --all -- --check
    step "the build scripts' own tests (tests/tools/test_*.py)"
    python3 -m unittest discover -s tests/tools -p 'test_*.py'
    # The image test builds the image with Podman from the static binary.
    image_tools
    static_tools
    step "actionlint (the GitHub workflows)"
    "$KCO_TOOLS_DIR/bin/actionlint" .github/workflows/*.yml
    supply_chain
    step "cargo clippy"
    cargo clippy --locked --all-targets -- -D warnings
    cargo clippy --locked --bin kco --no-default-features --features jemalloc -- -D warnings
    coverage_tools
    step "cargo test, instrumented (cargo llvm-cov)"
    start=$SECONDS
    # One run: every test must pass, and the same run measures line coverage.
    cargo llvm-cov --locked --all-targets --lcov --output-path target/coverage/lcov.info
    step "all tests passed in $((SECONDS - start))s"
    coverage_gate
    ;;
  demo)
    rust
    tools
    step "building the demo"
    cargo build --locked --bin kco --example demo
    step "starting the demo"
    exec target/debug/examples/demo
    ;;
  crds)
    rust
    rm -f crds/*.yaml charts/kco/files/crds/*.yaml
    cargo run --locked --quiet --bin kco -- crds --out-dir crds
    # The chart reads only its own files: it carries copies of the CRDs and of the
    # admission policy (a test checks they match).
    cp crds/*.yaml charts/kco/files/crds/
    cp policies/targetapp-invariants.vap.yaml charts/kco/files/
    mkdir -p docs/reference
    cargo run --locked --quiet --bin kco -- crds --reference > docs/reference/crds.md
    ls crds
    ;;
  chart-docs)
    tools
    # charts/kco/README.md from the comments of values.yaml (a test fails when stale).
    "$KCO_TOOLS_DIR/bin/helm-docs" --chart-search-root charts --skip-version-footer \
      --sort-values-order file --log-level warning
    echo charts/kco/README.md
    ;;
  coverage)
    rust
    [ -s target/coverage/lcov.info ] || die "no coverage measured yet: run ./build.sh test first"
    coverage_gate
    ;;
  bench)
    rust
    tools
    benches "${2:-}"
    ;;
  fuzz)
    rust
    step "fuzzing every target for ${2:-30}s (docs/fuzzing.md)"
    bash tests/tools/fuzz.sh "${2:-30}"
    ;;
  soak)
    rust
    tools
    step "soak run: ${2:-3600}s, ${KCO_SOAK_TARGETS:-300} targets (report in target/soak/)"
    KCO_SOAK_SECS="${2:-3600}" KCO_SOAK_TARGETS="${KCO_SOAK_TARGETS:-300}" \
      KCO_SOAK_RESTART_EVERY="${KCO_SOAK_RESTART_EVERY:-300}" KCO_SOAK_SAMPLE_EVERY="${KCO_SOAK_SAMPLE_EVERY:-15}" \
      cargo test --locked --test soak -- --nocapture
    ;;
  build)
    rust
    static_binary
    ;;
  rootfs)
    # The image's whole file system, in target/image/rootfs: what the
    # Containerfile's last stage copies, here and on GitHub alike.
    rust
    release_env
    stage_rootfs "$(static_binary)"
    ;;
  image)
    rust
    image_tools
    release_env
    stage_rootfs "$(static_binary)"
    image="${IMAGE:-kco:dev}"
    step "building $image with podman (no base image: the root file system is staged)"
    # The Containerfile's last stage, with the staged rootfs as its source.
    sed -n '/^FROM scratch/,$p' Containerfile \
      | sed 's#^COPY --from=rootfs /src/target/image/rootfs/ /#COPY rootfs/ /#' > target/image/Containerfile
    grep -q '^COPY rootfs/ /' target/image/Containerfile || die "the Containerfile's last stage does not copy the staged rootfs"
    podman build --quiet -f target/image/Containerfile \
      --build-arg VERSION="$KCO_VERSION" --build-arg REVISION="$KCO_GIT_REVISION" \
      --build-arg CREATED="$(date -u -d "@${SOURCE_DATE_EPOCH:-0}" +%Y-%m-%dT%H:%M:%SZ)" \
      --timestamp "${SOURCE_DATE_EPOCH:-0}" -t "$image" target/image >&2
    echo "$image"
    ;;
  release-meta)
    # What a release publishes, from its git tag: the one place the image tag the
    # workflow pushes and the version the chart is packaged with (and so the
    # image tag it pulls) are decided. Prints GitHub step outputs.
    tag="${2:-}"; owner="$(printf '%s' "${3:-kco-local}" | tr '[:upper:]' '[:lower:]')"
    [[ "$tag" =~ ^v([0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?)$ ]] \
      || die "release tags look like v1.2.3 or v1.2.3-rc.1, not '$tag'"
    version="${BASH_REMATCH[1]}"
    echo "version=$version"
    echo "image=ghcr.io/$owner/kco:$version"
    echo "chart=oci://ghcr.io/$owner/charts"
    ;;
  *)
    sed -n '2,/^# Tools/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
