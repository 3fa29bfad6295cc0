#!/usr/bin/env bash
# Vendors the web page's third-party browser code (olbproxy/ui/static/vendor/) from the
# npm registry. The versions below are the one place they are pinned: change one, rerun
# this script, run `make test` (the browser tests render Markdown through both), commit.
#
# Needs npm (any Node.js); nothing of Node is needed to install or run olbproxy, which
# serves the files as they are. `npm pack` checks each tarball against the registry's
# integrity hash; the hashes and a sha256 of every file copied are written to
# vendor/VERSIONS, which tests/test_ui_site.py checks against the files.
set -euo pipefail

MARKED_VERSION=18.3.0     # Markdown -> HTML (MIT)
DOMPURIFY_VERSION=3.5.0   # HTML sanitiser (MPL-2.0 OR Apache-2.0)

cd "$(dirname "$0")/.."
dest=olbproxy/ui/static/vendor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

pack() {  # pack NAME VERSION -> unpacks into $work/NAME, prints the integrity hash
  local name=$1 version=$2
  (cd "$work" && npm pack --json --silent "$name@$version" > "$name.json")
  mkdir -p "$work/$name"
  tar -xzf "$work/$name-$version.tgz" -C "$work/$name"
  node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1]))[0].integrity)' \
    "$work/$name.json"
}

marked_integrity=$(pack marked "$MARKED_VERSION")
dompurify_integrity=$(pack dompurify "$DOMPURIFY_VERSION")

rm -rf "$dest"
mkdir -p "$dest/marked" "$dest/dompurify"
# The ES module builds, as published, and their licences.
cp "$work/marked/package/lib/marked.esm.js" "$work/marked/package/LICENSE" "$dest/marked/"
cp "$work/dompurify/package/dist/purify.es.mjs" "$work/dompurify/package/LICENSE" \
  "$work/dompurify/package/LICENSE-MPL" "$dest/dompurify/"

{
  echo "# Written by scripts/vendor-ui.sh from the npm registry; do not edit by hand."
  echo "package marked $MARKED_VERSION MIT $marked_integrity"
  echo "package dompurify $DOMPURIFY_VERSION (MPL-2.0 OR Apache-2.0) $dompurify_integrity"
  (cd "$dest" && find . -type f ! -name VERSIONS | sed 's|^\./||' | LC_ALL=C sort |
    while read -r file; do echo "sha256 $(sha256sum "$file" | cut -d' ' -f1) $file"; done)
} > "$dest/VERSIONS"

echo "vendored marked $MARKED_VERSION and dompurify $DOMPURIFY_VERSION into $dest:"
cat "$dest/VERSIONS"
