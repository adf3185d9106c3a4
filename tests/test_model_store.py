"""Finding, installing and caching models."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from cxrviewer import paths
from cxrviewer.checkpoint import CheckpointError
from cxrviewer.model_store import (
    ModelCache,
    ModelEntry,
    default_model_entry,
    discover_models,
    find_model,
    install_model,
)

from inference_helpers import CLASSES3, TINY, make_checkpoint


@pytest.fixture
def bundled(tmp_path, monkeypatch):
    res = tmp_path / "resources"
    (res / "models").mkdir(parents=True)
    monkeypatch.setenv("CXRVIEWER_RESOURCES", str(res))
    return res / "models"


def test_discover_lists_bundled_user_and_opened_and_reports_bad_files(bundled, tmp_path):
    make_checkpoint(bundled / "b_other.safetensors", name="aaa-other", display_name="AAA other")
    make_checkpoint(bundled / "b_default.safetensors", name="zzz-default", display_name="ZZZ default", default=True)
    (bundled / "broken.safetensors").write_bytes(b"garbage")
    torch.save({"w": torch.zeros(1)}, bundled / "old.pth")
    (bundled / "README.txt").write_text("not a model")
    user = paths.user_models_dir()
    user.mkdir(parents=True)
    make_checkpoint(user / "mine.safetensors", name="mine", classes=["Normal", "Pneumonia"])
    opened = make_checkpoint(tmp_path / "opened.safetensors", name="opened")

    entries, problems = discover_models(extra_paths=[opened, bundled / "b_other.safetensors"])
    assert [(e.name, e.source) for e in entries] == [
        ("zzz-default", "bundled"), ("aaa-other", "bundled"), ("mine", "user"), ("opened", "opened")]
    mine = entries[2]
    assert mine.classes == ("Normal", "Pneumonia") and mine.arch == TINY and mine.card["name"] == "mine"
    assert "Normal, Pneumonia" in mine.label() and "(user)" in mine.label()
    bad = {p.name: msg for p, msg in problems}
    assert set(bad) == {"broken.safetensors", "old.pth"}
    assert "not a safetensors file" in bad["broken.safetensors"] and "pickle" in bad["old.pth"]
    assert default_model_entry(entries).name == "zzz-default"


def test_default_falls_back_to_first_bundled_then_user(bundled):
    assert default_model_entry() is None
    user = paths.user_models_dir()
    user.mkdir(parents=True)
    make_checkpoint(user / "u.safetensors", name="u")
    assert default_model_entry().source == "user"
    make_checkpoint(bundled / "b.safetensors", name="b", display_name="B")
    make_checkpoint(bundled / "a.safetensors", name="a", display_name="A")
    assert default_model_entry().name == "a"


def test_missing_folders_are_fine(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRVIEWER_RESOURCES", str(tmp_path / "nowhere"))
    assert discover_models() == ([], [])


def test_find_model_by_path_name_display_name_and_stem(bundled, tmp_path):
    make_checkpoint(bundled / "file-stem.safetensors", name="shared-name", display_name="Nice Name")
    user = paths.user_models_dir()
    user.mkdir(parents=True)
    make_checkpoint(user / "u.safetensors", name="shared-name", display_name="User copy")
    assert find_model("shared-name").source == "user"  # an installed copy shadows the bundled one
    assert find_model("nice name").source == "bundled"
    assert find_model("FILE-STEM").display_name == "Nice Name"
    p = make_checkpoint(tmp_path / "x.safetensors", name="x")
    e = find_model(str(p))
    assert e.source == "opened" and e.path == p
    with pytest.raises(LookupError, match="no model named 'nope'; available: shared-name"):
        find_model("nope")
    with pytest.raises(LookupError, match="not found: gone.safetensors"):
        find_model(str(tmp_path / "gone.safetensors"))


def test_install_validates_copies_and_protects_names(tmp_path):
    src = make_checkpoint(tmp_path / "src.safetensors", name="my model/v2", seed=1)
    e = install_model(src)
    assert e.source == "user" and e.path.parent == paths.user_models_dir()
    assert e.path.name == "my_model_v2.safetensors" and e.path.read_bytes() == src.read_bytes()
    assert install_model(src).path == e.path  # same file again: no-op
    other = make_checkpoint(tmp_path / "other.safetensors", name="my model/v2", seed=2)
    with pytest.raises(CheckpointError, match="already installed"):
        install_model(other)
    assert install_model(other, overwrite=True).path.read_bytes() == other.read_bytes()
    assert [p.name for p in paths.user_models_dir().iterdir()] == ["my_model_v2.safetensors"]  # no temp files


def test_install_refuses_bad_files_and_copies_nothing(tmp_path):
    bad = tmp_path / "bad.safetensors"
    data = make_checkpoint(tmp_path / "good.safetensors").read_bytes()
    bad.write_bytes(data[: len(data) - 64])
    with pytest.raises(CheckpointError, match="truncated"):
        install_model(bad)
    pth = tmp_path / "w.pth"
    pth.write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(CheckpointError, match="pickle"):
        install_model(pth)
    assert not paths.user_models_dir().exists() or not any(paths.user_models_dir().iterdir())


def test_cache_loads_once_per_device_and_is_shared(tmp_path):
    p = make_checkpoint(tmp_path / "c.safetensors")
    cache = ModelCache()
    a = cache.get(p, "cpu")
    b = cache.get(ModelEntry("c", "c", p, "opened", TINY, tuple(CLASSES3), {}), "cpu")
    assert a is b and cache.loads == 1 and cache.cached(p, "cpu") is a
    assert cache.cached(p, None) is None
    c = cache.get(p, None)  # another device key: its own predictor
    assert c is not a and cache.loads == 2


def test_cache_concurrent_requests_load_once(tmp_path):
    p = make_checkpoint(tmp_path / "c.safetensors")
    q = make_checkpoint(tmp_path / "d.safetensors", seed=3)
    started, errors = [], []
    both_loading = threading.Barrier(2, timeout=10)  # passes only if the two files load at the same time

    def slow_loader(path, device):
        started.append(path.name)
        try:
            both_loading.wait()
        except threading.BrokenBarrierError as e:
            errors.append(e)
        time.sleep(0.05)  # let the duplicate requests arrive while loading
        return object()

    cache = ModelCache(loader=slow_loader)
    got = []
    threads = [threading.Thread(target=lambda f=f: got.append(cache.get(f, "cpu"))) for f in (p, p, p, q, q)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(started) == ["c.safetensors", "d.safetensors"] and cache.loads == 2
    assert len({id(g) for g in got}) == 2 and len(got) == 5
    assert not errors  # different models were not serialised behind one another


def test_cache_reloads_replaced_file_and_evicts_lru(tmp_path):
    cache = ModelCache(max_models=2, loader=lambda path, device: object())
    files = [make_checkpoint(tmp_path / f"m{i}.safetensors", seed=i) for i in range(3)]
    first = cache.get(files[0])
    st = files[0].stat()
    make_checkpoint(files[0], seed=9)  # retrained in place
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    assert cache.get(files[0]) is not first and cache.loads == 2
    cache.get(files[1])
    cache.get(files[2])
    assert len(cache) == 2 and cache.cached(files[1]) is not None
    cache.evict(files[1])
    assert cache.cached(files[1]) is None and len(cache) == 1
    cache.evict()
    assert len(cache) == 0


def test_cache_reports_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="cannot read"):
        ModelCache().get(tmp_path / "gone.safetensors")
