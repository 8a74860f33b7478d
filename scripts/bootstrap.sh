#!/usr/bin/env bash
# Python side: virtualenv with the project's requirements, database migrations, the guest
# image (built once, then cached by recipe), and its registration as source VM debian-base.
source "$(dirname "$0")/lib.sh"

req="${1:-requirements.txt}"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtualenv $VENV"
  python3 -m venv "$VENV"
fi
stamp="$VENV/.installed-$(cat "$ROOT/requirements.txt" "$ROOT/$req" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  say "installing Python packages from $req"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  "$VENV/bin/pip" install -q -r "$ROOT/$req"
  touch "$stamp"
fi
mkdir -p "$VSB_DATA_DIR" "$VSB_DATA_DIR/sandboxes" "$VSB_DATA_DIR/log"
chmod 0755 "$VSB_DATA_DIR" "$VSB_DATA_DIR/sandboxes"
# Browser libraries of the terminal page, from npm into static/vendor/ (not committed).
"$ROOT/scripts/vendor-static.sh"
