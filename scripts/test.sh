#!/usr/bin/env bash
# README command 2: install what the tests need and run the whole suite: unit tests (fake
# driver, libvirt's test:/// driver), integration tests (PostgreSQL, Redis, a real Celery
# worker process) and end-to-end tests (real libvirtd + QEMU guests). Extra arguments go
# to pytest, e.g. scripts/test.sh -m "not e2e" or scripts/test.sh tests/sandboxes/api.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

"$ROOT/scripts/install-system.sh" --test
"$ROOT/scripts/start-services.sh" --postgres
"$ROOT/scripts/bootstrap.sh" requirements-dev.txt

say "guest image (cached by recipe)"
image_dir=$(bash "$ROOT/scripts/build-guest-image.sh" --cache-dir "$VSB_IMAGE_CACHE" | tail -1)
export VSB_TEST_IMAGE_DIR="$image_dir"
export DJANGO_SETTINGS_MODULE=config.settings.test
mkdir -p "$ROOT/test-artifacts"
say "lint (ruff)"
"$VENV/bin/ruff" check "$ROOT"
set +e
"$VENV/bin/pytest" "$@"
rc=$?
set -e
# pytest's 5 means no test ran: that is a failure of the suite, not a pass.
[ $rc -eq 5 ] && { say "no tests were collected"; exit 1; }
exit $rc
