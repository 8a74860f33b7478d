#!/usr/bin/env bash
# Vendors the browser libraries of the terminal page into static/vendor/ from the npm
# registry (pinned versions), so pages load nothing from a CDN. Run at set-up time by
# bootstrap.sh (so by run.sh and test.sh); the files are not committed. Idempotent: a stamp
# with the versions skips the download when they are already in place.
source "$(dirname "$0")/lib.sh"

XTERM_VERSION="5.5.0"
FIT_VERSION="0.10.0"
dest="$ROOT/static/vendor/xterm"
stamp="$dest/.versions"
want="xterm=$XTERM_VERSION fit=$FIT_VERSION"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
   && [ -f "$dest/xterm.js" ] && [ -f "$dest/xterm.css" ] && [ -f "$dest/addon-fit.js" ]; then
  exit 0
fi
command -v npm >/dev/null || die "npm is missing: run scripts/install-system.sh"
say "vendoring xterm.js $XTERM_VERSION into static/vendor/xterm (npm)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
( cd "$work" && npm install --silent --no-audit --no-fund --no-save --ignore-scripts \
    "@xterm/xterm@$XTERM_VERSION" "@xterm/addon-fit@$FIT_VERSION" >/dev/null )
mkdir -p "$dest"
cp "$work/node_modules/@xterm/xterm/lib/xterm.js" "$dest/xterm.js"
cp "$work/node_modules/@xterm/xterm/css/xterm.css" "$dest/xterm.css"
cp "$work/node_modules/@xterm/addon-fit/lib/addon-fit.js" "$dest/addon-fit.js"
cp "$work/node_modules/@xterm/xterm/LICENSE" "$dest/LICENSE"
echo "$want" > "$stamp"
