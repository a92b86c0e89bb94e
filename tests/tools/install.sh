#!/usr/bin/env bash
# Builds the tools KCO's tests and demo need into a cache, once:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (Kubernetes),
#   etcd, helm, kwok, promtool, helm-docs, actionlint  -> $KCO_CACHE_DIR/tools/<versions>/bin
#   kwok's stock node and pod stages  -> $KCO_CACHE_DIR/tools/<versions>/kwok/stages
#   the mina-sdk wheel's GraphQL introspection file and client queries -> $KCO_CACHE_DIR/tools/<versions>/mina-sdk
#   the o1js npm package's compiled GraphQL queries -> $KCO_CACHE_DIR/tools/<versions>/o1js/<version>
# Everything is built from source through the Go module proxy, PyPI and the npm
# registry; nothing else is downloaded. A tool that is already in the cache and
# runs is left alone. Prints the tools directory on the last line of stdout.
#
#   install.sh            everything
#   install.sh mina-sdk   only the Mina schema and the queries of Mina's client
#                         libraries, mina-sdk and o1js (what the schema tests need)
#
# KCO_CACHE_DIR (default ~/.cache/kco) moves the whole cache; KCO_TOOLS_DIR names
# the tools directory itself.
set -euo pipefail
what="${1:-all}"
case "$what" in all|mina-sdk) ;; *) echo "usage: $0 [all|mina-sdk]" >&2; exit 2;; esac

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache_root="${KCO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kco}"
key="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}_kwok-${KWOK_VERSION}_mina-sdk-${MINA_SDK_VERSION}"
tools="${KCO_TOOLS_DIR:-$cache_root/tools/$key}"
bin="$tools/bin"
mkdir -p "$bin" "$tools/mina-sdk"

say() { echo "[tools] $*" >&2; }
die() { echo "[tools] error: $*" >&2; exit 1; }

command -v python3 >/dev/null || die "python3 is not installed (needed to fetch the mina-sdk schema); see README.md"
command -v npm >/dev/null || die "npm is not installed (needed to fetch the o1js package's queries); see README.md"

# go.sum is committed and complete: -mod=readonly refuses anything it does not pin,
# so the checksum database (not reachable from every build machine) is not needed.
export GOFLAGS="-mod=readonly -trimpath -buildvcs=false" GOSUMDB=off CGO_ENABLED=0
# Go's module and build caches live beside the tools, so that deleting
# $KCO_CACHE_DIR removes everything this script made. The build cache (GBs) is
# dropped once every tool is built.
export GOMODCACHE="$cache_root/go/mod" GOCACHE="$cache_root/go/build"

k8s_ldflags() {
  local v="${KUBERNETES_VERSION#v}" major minor
  major="${v%%.*}"; minor="${v#*.}"; minor="${minor%%.*}"
  local f="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    f="$f -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    f="$f -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$f"
}

# build NAME MODULE_DIR PACKAGE LDFLAGS
build() {
  local name="$1" dir="$2" pkg="$3" ldflags="$4"
  if [ -x "$bin/$name" ] && "$bin/$name" --help >/dev/null 2>&1; then
    say "$name: cached"
    return
  fi
  say "$name: building $pkg (this takes a few minutes the first time)"
  local start=$SECONDS
  (cd "$here/$dir" && go build -ldflags "$ldflags" -o "$bin/$name.tmp" "$pkg") \
    || die "building $name failed (see the Go output above)"
  mv "$bin/$name.tmp" "$bin/$name"
  say "$name: built in $((SECONDS - start))s"
}

if [ "$what" = all ]; then
command -v go >/dev/null || die "Go is not installed (needed to build the Kubernetes components, etcd, kwok, kubectl and helm); see README.md"
build etcd etcd go.etcd.io/etcd/server/v3 "-s -w"
build kube-apiserver kube k8s.io/kubernetes/cmd/kube-apiserver "$(k8s_ldflags)"
build kube-controller-manager kube k8s.io/kubernetes/cmd/kube-controller-manager "$(k8s_ldflags)"
build kube-scheduler kube k8s.io/kubernetes/cmd/kube-scheduler "$(k8s_ldflags)"
build kubectl kube k8s.io/kubernetes/cmd/kubectl "$(k8s_ldflags)"
build helm helm helm.sh/helm/v3/cmd/helm "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
grep -Eq "sigs.k8s.io/kwok ${KWOK_VERSION}( |$)" "$here/kwok/go.mod" \
  || die "tests/tools/kwok/go.mod does not require sigs.k8s.io/kwok $KWOK_VERSION (versions.env)"
build kwok kwok sigs.k8s.io/kwok/cmd/kwok "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}"
# kwok's stock stages (the node and pod life cycles it plays), from the pinned module.
stages="$tools/kwok/stages"
if [ -s "$stages/pod-ready.yaml" ]; then
  say "kwok stages: cached"
else
  module="$(cd "$here/kwok" && go mod download -json sigs.k8s.io/kwok | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [ -d "$module/kustomize/stage" ] || die "cannot find kwok's stages in the module cache"
  mkdir -p "$stages"
  for f in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
           pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
    cp "$module/kustomize/stage/$f.yaml" "$stages/"
  done
  chmod u+w "$stages"/*.yaml
  say "kwok stages: copied from $module"
fi
# promtool (alert rule tests): its version is pinned by promtool/go.mod.
build promtool promtool github.com/prometheus/prometheus/cmd/promtool "-s -w"
# helm-docs (the chart's README from values.yaml) and actionlint (the GitHub
# workflows), pinned by their own go.mod like promtool.
build helm-docs helm-docs github.com/norwoodj/helm-docs/cmd/helm-docs "-s -w"
build actionlint actionlint github.com/rhysd/actionlint/cmd/actionlint "-s -w"
rm -rf "$GOCACHE"
fi

schema="$tools/mina-sdk/graphql_schema.json"
queries="$tools/mina-sdk/queries.py"
if [ -s "$schema" ] && [ -s "$queries" ]; then
  say "mina-sdk $MINA_SDK_VERSION schema and queries: cached"
else
  say "mina-sdk $MINA_SDK_VERSION: downloading the wheel from PyPI"
  wheels="$(mktemp -d)"
  trap 'rm -rf "$wheels"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$wheels" "mina-sdk==$MINA_SDK_VERSION" \
    || die "could not download mina-sdk==$MINA_SDK_VERSION from PyPI"
  python3 - "$wheels" "$schema" "$queries" "$MINA_SDK_SHA256" <<'PY' || die "could not extract the schema and queries from the mina-sdk wheel"
import glob, hashlib, os, sys, zipfile
wheels, schema, queries, want = sys.argv[1:]
[whl] = glob.glob(wheels + "/mina_sdk-*.whl")
got = hashlib.sha256(open(whl, "rb").read()).hexdigest()
if got != want:
    sys.exit(f"mina-sdk wheel sha256 {got} does not match the pinned {want}")
# The daemon's schema, and the GraphQL documents the package's client sends.
with zipfile.ZipFile(whl) as z:
    for member, out in [("mina_sdk/schema/graphql_schema.json", schema),
                        ("mina_sdk/daemon/queries.py", queries)]:
        with open(out + ".tmp", "wb") as f:
            f.write(z.read(member))
        os.replace(out + ".tmp", out)
PY
fi

# o1js, Mina's TypeScript library: the GraphQL documents its client sends to a
# daemon, as the published package ships them (compiled JavaScript).
o1js="$tools/o1js/$O1JS_VERSION"
if [ -s "$o1js/graphql.js" ]; then
  say "o1js $O1JS_VERSION queries: cached"
else
  say "o1js $O1JS_VERSION: downloading the package from the npm registry"
  packs="$(mktemp -d)"
  trap 'rm -rf "$packs" "${wheels:-}"' EXIT
  (cd "$packs" && npm pack --silent "o1js@$O1JS_VERSION" >/dev/null) \
    || die "could not download o1js@$O1JS_VERSION from the npm registry"
  tarball="$packs/o1js-$O1JS_VERSION.tgz"
  got="$(sha256sum "$tarball" | cut -d' ' -f1)"
  [ "$got" = "$O1JS_SHA256" ] || die "o1js tarball sha256 $got does not match the pinned $O1JS_SHA256"
  mkdir -p "$o1js"
  tar -xzf "$tarball" -C "$packs" package/dist/node/lib/mina/v1/graphql.js \
    || die "the o1js package has no dist/node/lib/mina/v1/graphql.js"
  mv "$packs/package/dist/node/lib/mina/v1/graphql.js" "$o1js/graphql.js.tmp"
  mv "$o1js/graphql.js.tmp" "$o1js/graphql.js"
fi

say "tools ready in $tools ($(du -sh "$tools" | cut -f1))"
echo "$tools"
