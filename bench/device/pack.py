"""Pack what a GPU machine lent for a session needs and will not have, into the ignored folder ``.devrun/``
of the checkout (name it in the device call's ``carry``): the films the benchmarks pick from
``../shared/data`` (that folder does not travel), a quarter of the Kermany films for training, and the
pure-Python packages missing from that machine's image (lime, pydicom, platformdirs). About 20 MB.

Then one call runs ``bench/device/run.sh`` (the CUDA tests, inference timings, training and faithfulness) or
``bench/device/settle.sh`` (settle studies whose caches come back for ``bench_explain --replay``); see
there. Used for the H200 checks in docs/benchmarks.md.
"""

from __future__ import annotations

import csv
import importlib
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
PACKAGES = ("lime", "pydicom", "platformdirs")


def main() -> int:
    import bench_explain as b

    out = ROOT / ".devrun"
    exclude = ROOT / ".git" / "info" / "exclude"
    if exclude.parent.is_dir() and "/.devrun/" not in (exclude.read_text() if exclude.exists() else ""):
        with open(exclude, "a") as fh:
            fh.write("/.devrun/\n")
    shutil.rmtree(out, ignore_errors=True)
    films = out / "films"
    listed = []
    for f in b.pick_films(12):  # the bench's films, in its order; 12: ten measured, the last eight calibrate
        rel = f.relative_to(b.DATA)
        (films / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, films / rel)
        listed.append(str(rel))
    (films / "list.txt").write_text("\n".join(listed) + "\n")
    src = b.DATA / "kermany"
    with open(src / "MANIFEST.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))[::4]
    kermany = out / "kermany"
    for r in rows:
        (kermany / r["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / r["path"], kermany / r["path"])
    with open(kermany / "quarter.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for name in PACKAGES:
        pkg = Path(importlib.import_module(name).__file__).parent
        shutil.copytree(pkg, out / "site" / name, ignore=shutil.ignore_patterns("__pycache__", "tests", "test_files"))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {len(listed)} bench films, {len(rows)} training films, {', '.join(PACKAGES)}; {size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
