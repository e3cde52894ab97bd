#!/usr/bin/env bash
# Builds the control plane of the Kubernetes-mode tests (etcd, kube-apiserver,
# kube-controller-manager) from the Go module beside this script, unless a build for the same
# go.mod/go.sum is already in the cache outside the repository:
#   ${LIFELONG_K8S_CACHE:-${XDG_CACHE_HOME:-~/.cache}/lifelong/k8s}/<sha256 of go.mod+go.sum>/
# Prints that folder on its last line. With --cached it builds nothing: exit status 4 when the
# binaries are not in the cache yet. Called by tests/harness/k8s_cluster.py (the pytest
# fixture) and by .ci/run; a person can run it too. Two builds at once wait on one lock.
# A cold build takes 8-13 minutes on 2 cores and about 3.4 GiB of Go caches; a warm one seconds.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
command -v go >/dev/null 2>&1 || { echo "build.sh: no Go toolchain on PATH" >&2; exit 3; }

key="$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-16)"
root="${LIFELONG_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lifelong/k8s}"
out="$root/$key"
bins=(etcd kube-apiserver kube-controller-manager)

have_all() {
  local b
  for b in "${bins[@]}"; do [ -x "$out/$b" ] || return 1; done
}

if [ "${1:-}" = "--cached" ]; then
  have_all || { echo "build.sh: not built yet: run tests/k8s/build.sh (or make test)" >&2; exit 4; }
  echo "$out"
  exit 0
fi

mkdir -p "$root"
exec 9>"$root/.build.lock"
flock 9
if ! have_all; then
  echo "build.sh: building ${bins[*]} into $out (a cold build takes minutes)" >&2
  tmp="$(mktemp -d "$root/.build.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  v=v1.37.2
  ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$v"
  ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37"
  ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
  start=$SECONDS
  (cd "$here" && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "$ldflags" -o "$tmp/" \
    ./etcd ./kube-apiserver ./kube-controller-manager)
  rm -rf "$out"
  mv "$tmp" "$out"
  trap - EXIT
  echo "build.sh: built in $((SECONDS - start)) s" >&2
fi
echo "$out"
