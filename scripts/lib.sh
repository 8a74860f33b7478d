# Shared helpers for the project's scripts. Sourced, not run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VSB_VENV:-$ROOT/.venv}"
export VSB_DATA_DIR="${VSB_DATA_DIR:-/var/lib/virsh-sandbox}"
# Generated secrets (0700; files 0600): Django's key, the credentials key, Redis's password.
export VSB_SECRETS_DIR="${VSB_SECRETS_DIR:-$VSB_DATA_DIR/secrets}"
export VSB_IMAGE_CACHE="${VSB_IMAGE_CACHE:-/var/cache/virsh-sandbox/images}"

say() { printf '\033[1m[virsh-sandbox]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31m[virsh-sandbox] error:\033[0m %s\n' "$*" >&2; exit 1; }
