#!/usr/bin/env bash
# Build CXR Viewer as a one-folder application: dist/CXRViewer/ (dist/CXR Viewer.app on macOS).
#
#   packaging/build.sh                 CPU-only bundle (the default; no CUDA libraries)
#   CXRVIEWER_BUNDLE_CUDA=1 packaging/build.sh    keep torch's CUDA libraries (Linux/Windows, GBs more)
#
# Environment:
#   PYTHON               interpreter with the project's dependencies (default: python3, else python)
#   TORCH_INDEX          where the CPU wheel of torch comes from (default https://download.pytorch.org/whl/cpu;
#                        empty: pip's configured indexes / find-links)
#   CPU_TORCH_PACKAGES   what to install there (default "torch torchvision"; pin versions with a mirror,
#                        e.g. "torch==2.13.0+cpu torchvision==0.28.0")
#   BUILD_VENV           the CPU build environment (default build/venv-cpu; reused between builds)
#   SKIP_SMOKE=1         do not run the smoke test after the build
#
# Why a separate environment: a CUDA build of torch cannot be imported without its CUDA libraries, so
# leaving them out of the bundle only works with the CPU wheel. When $PYTHON already has a CPU torch (or
# CUDA is wanted), it builds with $PYTHON directly. The environment shares everything else with $PYTHON
# (--system-site-packages), so only torch, torchvision and PyInstaller are installed into it.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
TORCH_INDEX="${TORCH_INDEX-https://download.pytorch.org/whl/cpu}"
CPU_TORCH_PACKAGES="${CPU_TORCH_PACKAGES:-torch torchvision}"
BUILD_VENV="${BUILD_VENV:-$ROOT/build/venv-cpu}"
WITH_CUDA="${CXRVIEWER_BUNDLE_CUDA:-0}"

say() { printf '\n==> %s\n' "$*"; }

torch_kind() {  # prints cuda, cpu or none
  "$1" - <<'EOF' 2>/dev/null || echo none
try:
    import torch
except ImportError:
    print("none")
else:
    print("cuda" if getattr(torch.version, "cuda", None) else "cpu")
EOF
}

case "$WITH_CUDA" in 1|true|yes|on) WITH_CUDA=1 ;; *) WITH_CUDA=0 ;; esac
KIND="$(torch_kind "$PYTHON")"
BUILD_PY="$PYTHON"
case "$(uname -s)" in Darwin*) OS=macos ;; MINGW*|MSYS*|CYGWIN*) OS=windows ;; *) OS=linux ;; esac

if [[ "$WITH_CUDA" == 0 && "$KIND" != cpu && "$OS" != macos ]]; then
  say "$PYTHON has torch: $KIND; making a CPU build environment in $BUILD_VENV"
  if [[ ! -x "$BUILD_VENV/bin/python" && ! -x "$BUILD_VENV/Scripts/python.exe" ]]; then
    "$PYTHON" -m venv --system-site-packages "$BUILD_VENV"
  fi
  BUILD_PY="$BUILD_VENV/bin/python"
  [[ -x "$BUILD_PY" ]] || BUILD_PY="$BUILD_VENV/Scripts/python.exe"
  if [[ "$(torch_kind "$BUILD_PY")" != cpu ]]; then
    # shellcheck disable=SC2086  (the package list is meant to split)
    if [[ -n "$TORCH_INDEX" ]]; then
      "$BUILD_PY" -m pip install --index-url "$TORCH_INDEX" $CPU_TORCH_PACKAGES
    else
      "$BUILD_PY" -m pip install $CPU_TORCH_PACKAGES
    fi
  fi
  [[ "$(torch_kind "$BUILD_PY")" == cpu ]] || { echo "build.sh: no CPU torch in $BUILD_VENV" >&2; exit 1; }
elif [[ "$KIND" == none ]]; then
  echo "build.sh: $PYTHON has no torch; install the project first (pip install .)" >&2
  exit 1
fi

if ! "$BUILD_PY" -c "import PyInstaller" 2>/dev/null; then
  say "installing PyInstaller from PyPI"
  "$BUILD_PY" -m pip install "pyinstaller>=6.3"
fi

say "building with $("$BUILD_PY" -c 'import sys, torch, PyInstaller; print(sys.version.split()[0], "torch", torch.__version__, "PyInstaller", PyInstaller.__version__)')"
START=$(date +%s)
CXRVIEWER_BUNDLE_CUDA="$WITH_CUDA" "$BUILD_PY" -m PyInstaller --noconfirm --clean \
  --distpath "$ROOT/dist" --workpath "$ROOT/build/pyinstaller" "$HERE/cxrviewer.spec"
END=$(date +%s)

if [[ "$OS" == macos ]]; then OUT="$ROOT/dist/CXR Viewer.app"; else OUT="$ROOT/dist/CXRViewer"; fi
SIZE="$(du -sh "$OUT" | cut -f1)"
say "built $OUT: $SIZE in $((END - START)) s"

if [[ "${SKIP_SMOKE:-0}" != 1 ]]; then
  say "smoke test"
  "$PYTHON" "$HERE/smoke_test.py" --app "$OUT"
fi
