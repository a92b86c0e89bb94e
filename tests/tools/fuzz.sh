#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a while (docs/fuzzing.md):
#
#   fuzz.sh [SECONDS]     each target for SECONDS (default 30)
#
# FUZZ_TARGETS="trigger_path admission_review" runs only those targets.
# Needs a nightly toolchain (`cargo +nightly`): targets are built with
# AddressSanitizer, overflow checks and debug assertions. cargo-fuzz itself is
# installed, pinned, into $KCO_CACHE_DIR/cargo (default ~/.cache/kco/cargo), once.
#
# Each target starts from a copy of its committed corpus (fuzz/corpus/TARGET) in a
# temporary directory, so the committed corpus never grows by itself. A crash, a
# timeout or a leak fails the run and names the input that caused it, saved under
# fuzz/artifacts/TARGET/, with the command that reproduces it.
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2

seconds="${1:-30}"
case "$seconds" in '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;; esac

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
fuzz="$root/fuzz"
cache_root="${KCO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kco}"
tools="$cache_root/cargo"

say() { echo "[fuzz] $*" >&2; }
die() { echo "[fuzz] error: $*" >&2; exit 1; }

cargo +nightly --version >/dev/null 2>&1 ||
  die "a nightly Rust toolchain is needed (rustup toolchain install nightly)"

export PATH="$tools/bin:$PATH"
if [ "$(cargo-fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  say "installing cargo-fuzz $CARGO_FUZZ_VERSION into $tools (once)"
  cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION" --root "$tools" ||
    die "cannot install cargo-fuzz $CARGO_FUZZ_VERSION"
fi

cd "$fuzz"
# The instrumented build lives in the cache, so that a fresh clone (CI) does not
# rebuild the whole dependency tree with AddressSanitizer every time.
export CARGO_TARGET_DIR="${KCO_FUZZ_TARGET_DIR:-$cache_root/fuzz/target}"
# Each build of the targets leaves 0.8 GiB there: keep the last two builds' only.
python3 "$here/prune_cache.py" "$CARGO_TARGET_DIR" "$root/Cargo.toml" "$fuzz/Cargo.toml" >&2
all_targets="$(cargo fuzz list)"
targets="${FUZZ_TARGETS:-$all_targets}"
for target in $targets; do
  grep -qx "$target" <<<"$all_targets" || die "no fuzz target $target (there are: $(echo $all_targets))"
done

# fuzz/Cargo.lock is committed: refuse to build with anything it does not pin.
cargo +nightly metadata --locked --format-version 1 >/dev/null ||
  die "fuzz/Cargo.lock is out of date: run cargo +nightly update --workspace in fuzz/ and commit it"

say "building $(echo $targets) (AddressSanitizer, debug assertions)"
start=$SECONDS
for target in $targets; do
  cargo +nightly fuzz build "$target"
done
say "built in $((SECONDS - start))s"

work="$(mktemp -d "${TMPDIR:-/tmp}/kco-fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT

summary=()
for target in $targets; do
  corpus="$work/corpus/$target"
  mkdir -p "$corpus" "$fuzz/artifacts/$target"
  cp -R "$fuzz/corpus/$target/." "$corpus/"
  log="$work/$target.log"
  say "$target: ${seconds}s from $(find "$corpus" -type f | wc -l) seeds"
  before="$(date +%s)"
  status=0
  # -timeout: one input taking 10 s is a hang; -rss_limit_mb: a bounded process.
  cargo +nightly fuzz run "$target" "$corpus" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$fuzz/artifacts/$target/" >"$log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    tail -n 60 "$log" >&2
    artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)"
    say "$target FAILED (exit $status) after $(($(date +%s) - before))s"
    if [ -n "$artifact" ]; then
      say "the failing input: $artifact"
      say "reproduce: (cd fuzz && cargo +nightly fuzz run $target $artifact)"
    fi
    exit 1
  fi
  stats="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true)"
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  speed="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
  summary+=("$(printf '%-18s %10s runs %8s exec/s   %s' "$target" "${runs:-?}" "${speed:-?}" \
    "$(sed -E 's/^#[0-9]+[[:space:]]+DONE[[:space:]]+//; s/[[:space:]]+exec\/s.*//' <<<"$stats")")")
done

say "no crash in $(echo $targets) (${seconds}s each):"
printf '  %s\n' "${summary[@]}" >&2
echo "fuzz: $(wc -w <<<"$targets") passed, 0 failed"
