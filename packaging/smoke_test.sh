#!/usr/bin/env bash
# Smoke test of the built bundle (see smoke_test.py): starts it with --screenshot on bundled sample
# films under offscreen Qt and checks the PNGs.   packaging/smoke_test.sh [dist/CXRViewer]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
case "$(uname -s)" in Darwin*) DEFAULT="$ROOT/dist/CXR Viewer.app" ;; *) DEFAULT="$ROOT/dist/CXRViewer" ;; esac
APP="${1:-$DEFAULT}"
shift || true
PY="${PYTHON:-$(command -v python3 || command -v python)}"
exec "$PY" "$HERE/smoke_test.py" --app "$APP" "$@"
