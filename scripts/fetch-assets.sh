#!/usr/bin/env bash
# Fetches the dashboard's front-end libraries, pinned by version and by the npm registry's
# sha512 integrity, into controller/static/vendor/ (not committed). The controller serves them
# itself, so the dashboard and the API docs work on a site without internet access.
#
#   scripts/fetch-assets.sh            fetch what is missing or stale
#   NPM_REGISTRY=https://mirror/ ...   another registry with the same tarballs
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
vendor="$root/controller/static/vendor"
registry="${NPM_REGISTRY:-https://registry.npmjs.org}"
registry="${registry%/}"

# package version integrity(sha512, base64) member-in-tarball:file-name-in-vendor ...
assets=(
  "htmx.org 2.0.8 fm297iru0iWsNJlBrjvtN7V9zjaxd+69Oqjh4F/Vq9Wwi2kFisLcrLCiv5oBX0KLfOX/zG8AUo9ROMU5XUB44Q== package/dist/htmx.min.js:htmx.min.js"
  "swagger-ui-dist 5.17.14 CVbSfaLpstV65OnSjbXfVd6Sta3q3F7Cj/yYuvHMp1P90LztOLs6PfUnKEVAeiIVQt9u2SaPwv0LiH/OyMjHRw== package/swagger-ui-bundle.js:swagger-ui-bundle.js package/swagger-ui.css:swagger-ui.css"
)

fetch() {
  local url="$1" out="$2"
  if command -v curl >/dev/null 2>&1; then
    curl --fail --silent --show-error --location --retry 3 --max-time 300 -o "$out" "$url"
  else
    wget --quiet --tries=3 --timeout=300 -O "$out" "$url"
  fi
}

mkdir -p "$vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

for line in "${assets[@]}"; do
  read -r package version integrity members <<<"$line"
  stamp="$vendor/.$package-$version"
  present=1
  for pair in $members; do
    [ -f "$vendor/${pair##*:}" ] || present=0
  done
  if [ -f "$stamp" ] && [ "$present" = 1 ]; then
    continue
  fi
  base="${package##*/}"
  tarball="$work/$base-$version.tgz"
  url="$registry/$package/-/$base-$version.tgz"
  echo "fetch-assets: $package@$version"
  if ! fetch "$url" "$tarball"; then
    echo "fetch-assets: could not download $url" >&2
    exit 1
  fi
  actual="$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
  if [ "$actual" != "$integrity" ]; then
    echo "fetch-assets: $package@$version: sha512 mismatch (expected $integrity, got $actual)" >&2
    exit 1
  fi
  for pair in $members; do
    member="${pair%%:*}"
    name="${pair##*:}"
    tar -xzf "$tarball" -C "$work" "$member"
    install -m 0644 "$work/$member" "$vendor/$name"
  done
  rm -f "$vendor/.$package-"*
  touch "$stamp"
done
