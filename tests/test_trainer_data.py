"""Data folders, refusals, patient-grouped splits, the shared preprocessing, augmentation and recipes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from _trainer_synth import CLASSES, make_dataset, pattern, snapshot
from trainer import data as D
from trainer.augment import Augmenter, random_erasing, sample_generator
from trainer.recipes import RECIPES, Recipe, apply_overrides, get_recipe


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("synth") / "data")


def test_scan_counts_classes_and_problems(dataset):
    scan = D.scan_dataset(dataset)
    assert scan["ok"] and scan["kind"] == "folders"
    assert scan["classes"] == list(CLASSES)
    assert scan["counts"] == {"Alpha": 25, "Beta": 25, "Gamma": 24}  # DICOM counted in Alpha, broken.png in Beta
    assert scan["total"] == 74


def test_decode_skips_unreadable_reads_dicom_patient_and_writes_nothing(dataset):
    before = snapshot(dataset)
    fs = D.decode(D.discover(dataset), 32)
    assert snapshot(dataset) == before
    assert [rel for rel, _ in fs.skipped] == ["Beta/broken.png"]
    assert len(fs.rels) == 73 and fs.images.shape == (73, 32, 32) and fs.images.dtype == np.uint8
    i = fs.rels.index("Alpha/scan.dcm")
    assert fs.groups[i] == D._patient_key("SYNTH-0042")  # from the DICOM header, hashed
    assert "SYNTH-0042" not in json.dumps(D.split_to_json(fs, np.zeros(len(fs.rels), int), 0, (0.7, 0.2, 0.1)))
    assert len(fs.fingerprint()) == 64


def test_refusals_have_clear_messages(tmp_path):
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "notes.txt").write_text("hi")
    with pytest.raises(D.DataError, match="no films found"):
        D.discover(tmp_path / "none")
    one = tmp_path / "one"
    make_dataset(one, per_class=4, dicom=False, corrupt=False)
    for c in CLASSES[1:]:
        for p in (one / c).iterdir():
            p.unlink()
        (one / c).rmdir()
    with pytest.raises(D.DataError, match="only one class"):
        D.discover(one)
    empty = tmp_path / "empty"
    make_dataset(empty, per_class=4, dicom=False, corrupt=False)
    for p in (empty / "Beta").iterdir():
        p.unlink()
    with pytest.raises(D.DataError, match="'Beta' has no films"):
        D.discover(empty)
    assert D.scan_dataset(empty)["ok"] is False and "Beta" in D.scan_dataset(empty)["error"]
    with pytest.raises(D.DataError, match="does not exist"):
        D.discover(tmp_path / "missing")
    # every film of a class unreadable: refused at decode time, naming the class
    bad = tmp_path / "bad"
    make_dataset(bad, per_class=4, dicom=False, corrupt=False)
    for p in (bad / "Gamma").iterdir():
        p.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(D.DataError, match="'Gamma' is unreadable"):
        D.decode(D.discover(bad), 32)


def test_split_is_grouped_stratified_and_reproducible(dataset):
    src = D.discover(dataset, patient_pattern=r"pat(\d+)_")
    fs = D.decode(src, 32)
    ids = D.split_films(fs, (0.7, 0.2, 0.1), seed=3)
    assert np.array_equal(ids, D.split_films(fs, (0.7, 0.2, 0.1), seed=3))
    assert not np.array_equal(ids, D.split_films(fs, (0.7, 0.2, 0.1), seed=4))
    where = {}
    for g, s in zip(fs.groups, ids):
        where.setdefault(g, set()).add(int(s))
    assert all(len(s) == 1 for s in where.values())  # no patient in two splits
    assert sum(1 for g in where if g.startswith("p:")) == 37  # 36 pattern patients + the DICOM's
    for c in range(3):
        n = (fs.labels == c).sum()
        counts = [((fs.labels == c) & (ids == s)).sum() for s in range(3)]
        assert abs(counts[0] - 0.7 * n) <= 2 and abs(counts[1] - 0.2 * n) <= 2 and counts[2] >= 1
    # saved and reloaded: identical
    back = D.split_from_json(fs, json.loads(json.dumps(D.split_to_json(fs, ids, 3, (0.7, 0.2, 0.1)))))
    assert np.array_equal(back, ids)


def test_a_class_missing_from_validation_or_test_is_said_when_training_starts(tmp_path):
    """Two films of a rare class all go to training: validation and test cannot see it. The run says so as
    it starts (console and the dialog's warnings), not only in the report at its end."""
    from trainer.loop import FitOptions, prepare_data
    from trainer.progress import Progress

    rng = np.random.default_rng(0)
    for ci, (name, n) in enumerate((("Common", 20), ("Rare", 2))):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(pattern(ci, rng, 32)).save(tmp_path / "data" / name / f"{name}{i}.png")
    events = tmp_path / "events.jsonl"
    progress = Progress.from_target(str(events), quiet=True)
    fs, ids, origin = prepare_data(FitOptions(data=tmp_path / "data", out=tmp_path / "run",
                                              recipe=apply_overrides(get_recipe("smoke"), {"input_size": 32})), progress)
    progress.close()
    assert origin == "computed" and set(fs.labels[ids != 0].tolist()) == {0}
    warned = [json.loads(x)["message"] for x in events.read_text().splitlines() if '"warning"' in x]
    assert warned == [f"the {s} split has no film of 'Rare' (too few patients): its metrics say nothing about that "
                      "class" for s in ("val", "test")]


def test_a_film_listed_twice_in_a_csv_is_used_once_and_one_with_two_labels_not_at_all(dataset, tmp_path):
    """A spreadsheet export lists a film twice: with the same label it counted twice, with two labels the
    network was taught both answers for one film. Now: once, or not at all, and the run says so as it starts."""
    from trainer.loop import FitOptions, prepare_data
    from trainer.progress import Progress

    films = {c: sorted((dataset / c).glob("pat*.png"))[:8] for c in CLASSES}
    rows = ["path,label"] + [f"{p.as_posix()},{c}" for c, ps in films.items() for p in ps]
    twice, torn = films["Alpha"][0], films["Beta"][0]
    rows += [f"{twice.as_posix()},Alpha", f"{torn.as_posix()},Gamma"]
    listing = tmp_path / "labels.csv"
    listing.write_text("\n".join(rows))
    src = D.discover(listing)
    assert len(src.samples) == 24 - 1 and torn not in [s.path for s in src.samples]
    assert sorted(s.path for s in src.samples).count(twice) == 1
    assert f"labels.csv line 26: {twice.as_posix()} is listed again (line 2); used once" in src.problems
    assert (f"labels.csv line 27: {torn.as_posix()} is labelled 'Gamma' here and 'Beta' on line 10; skipped, "
            "both times") in src.problems
    events = tmp_path / "events.jsonl"
    progress = Progress.from_target(str(events), quiet=True)
    prepare_data(FitOptions(data=listing, out=tmp_path / "run",
                            recipe=apply_overrides(get_recipe("smoke"), {"input_size": 32})), progress)
    progress.close()
    warned = [json.loads(x)["message"] for x in events.read_text().splitlines() if '"warning"' in x]
    assert [w for w in warned if "labels.csv line" in w] == [p for p in src.problems if "labels.csv line" in p]


def test_group_split_keeps_large_patients_whole():
    labels = np.array([0] * 30 + [1] * 30)
    groups = [f"a{i // 6}" for i in range(30)] + [f"b{i // 3}" for i in range(30)]
    ids = D.stratified_group_split(labels, groups, (0.7, 0.2, 0.1), seed=0)
    for g in set(groups):
        assert len(set(ids[[i for i, x in enumerate(groups) if x == g]])) == 1
    assert set(ids[labels == 0]) >= {0, 1} and set(ids[labels == 1]) >= {0, 1}


def test_csv_and_presplit_layouts(dataset, tmp_path):
    rows = ["path,label,patient"]
    for c in CLASSES:
        for p in sorted((dataset / c).glob("pat*.png")):
            rows.append(f"{p.relative_to(dataset).as_posix()},{c},{p.name.split('_')[0]}")
    rows.append("Alpha/missing.png,Alpha,x")
    # paths are relative to the CSV's own folder
    inside = dataset / "labels.csv"
    try:
        inside.write_text("\n".join(rows))
        src = D.discover(inside)
    finally:
        inside.unlink()
    assert src.kind == "csv" and src.classes == list(CLASSES) and len(src.samples) == 72
    assert any("missing.png" in p for p in src.problems)
    assert src.samples[0].patient == "pat0000"

    pre = tmp_path / "pre"
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        for ci, c in enumerate(CLASSES[:2]):
            d = pre / split / c
            d.mkdir(parents=True)
            rng = np.random.default_rng(ci)
            for i in range(n):
                Image.fromarray(pattern(ci, rng, 32)).save(d / f"{split}{i}.png")
    scan = D.scan_dataset(pre)
    assert scan["ok"] and scan["kind"] == "presplit" and scan["split_counts"]["val"] == {"Alpha": 2, "Beta": 2}
    fs = D.decode(D.discover(pre), 32)
    ids = D.split_films(fs, (0.7, 0.2, 0.1), 0)
    assert np.bincount(ids).tolist() == [12, 4, 4]


def test_training_tensor_equals_the_viewers_preprocessing(dataset):
    from cxrviewer.film.loader import load_film
    from cxrviewer.preprocess import PreprocessSpec, preprocess_film
    from trainer.loop import Normaliser

    spec = PreprocessSpec(input_size=40)
    fs = D.decode(D.discover(dataset), 40)
    for rel in ("Alpha/scan.dcm", "Gamma/pat2000_0.png"):
        i = fs.rels.index(rel)
        ours = Normaliser(spec.mean, spec.std)(torch.from_numpy(fs.images[[i]]).unsqueeze(1))[0].numpy()
        ref, _ = preprocess_film(load_film(dataset / rel), spec)
        np.testing.assert_array_equal(ours, ref)


def test_augmentation_is_a_function_of_seed_epoch_and_index():
    r = apply_overrides(get_recipe("seed002"), {"augment": ("crop", "hflip", "vflip", "rotate", "affine", "erase")})
    aug = Augmenter(r)
    img = torch.from_numpy(pattern(2, np.random.default_rng(0), 48)).unsqueeze(0)
    a = aug(img, sample_generator(1, 2, 3))
    assert a.dtype == torch.uint8 and a.shape == img.shape
    assert torch.equal(a, aug(img, sample_generator(1, 2, 3)))
    assert not torch.equal(a, aug(img, sample_generator(1, 3, 3)))


def test_random_erasing_box_fits_and_follows_parameters():
    img = torch.zeros(1, 40, 60, dtype=torch.uint8)
    areas = []
    for i in range(50):
        out = random_erasing(img, sample_generator(0, 0, i), p=1.0, sl=0.02, sh=0.4, r1=0.3)
        changed = out[0] != 0
        if changed.any():
            rows, cols = torch.nonzero(changed, as_tuple=True)
            areas.append(((rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)).item() / (40 * 60))
    assert len(areas) >= 45 and min(areas) >= 0.005 and max(areas) <= 0.45
    assert torch.equal(random_erasing(img, sample_generator(0, 0, 0), p=0.0, sl=0.02, sh=0.4, r1=0.3), img)


def test_recipes_presets_and_overrides():
    assert {"seed000", "seed001", "seed002", "seed003", "seed004", "smoke"} <= set(RECIPES)
    r3 = get_recipe("seed003")
    assert (r3.optimizer, r3.lr, r3.momentum, r3.step_size, r3.early_stop_patience) == ("sgd", 0.01, 0.9, 10, 10)
    assert get_recipe("seed000").augment == ("erase", "hflip") and get_recipe("seed004").loss == "nll"
    r = apply_overrides(r3, ["lr=1e-4", "augment=hflip,erase", "split=0.8,0.1,0.1", "pretrained=false", "epochs=7"])
    assert (r.lr, r.augment, r.split, r.pretrained, r.epochs) == (1e-4, ("hflip", "erase"), (0.8, 0.1, 0.1), False, 7)
    assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    with pytest.raises(ValueError, match="unknown recipe field 'lrr'"):
        apply_overrides(r3, ["lrr=1"])
    with pytest.raises(ValueError, match="optimizer"):
        apply_overrides(r3, ["optimizer=lion"])
    with pytest.raises(ValueError, match="expected a number"):
        apply_overrides(r3, ["lr=fast"])


def test_balanced_sampler_weights_and_epoch_order():
    from trainer.loop import batch_slices, class_weights, epoch_order

    labels = np.array([0] * 90 + [1] * 10)
    drawn = epoch_order(len(labels), labels, epoch=1, seed=0, balance="sampler", n_classes=2)
    share = (labels[drawn] == 1).mean()
    assert 0.35 < share < 0.65  # balanced, where plain shuffling would give 0.1
    perm = epoch_order(len(labels), labels, epoch=1, seed=0, balance="none", n_classes=2)
    assert sorted(perm.tolist()) == list(range(100))
    assert np.array_equal(perm, epoch_order(len(labels), labels, 1, 0, "none", 2))
    assert not np.array_equal(perm, epoch_order(len(labels), labels, 2, 0, "none", 2))
    w = class_weights(labels, 2)
    assert w.tolist() == pytest.approx([100 / (2 * 90), 100 / (2 * 10)])
    assert batch_slices(17, 8) == [(0, 8), (8, 16)]  # a lone last film is dropped (BatchNorm)
    assert batch_slices(18, 8) == [(0, 8), (8, 16), (16, 18)]


def test_ood_statistics_sample_keeps_each_class_share_and_is_reproducible():
    from trainer.loop import ood_sample

    ids = np.arange(1000, 4000)  # 3000 training films among others
    labels = np.array([0] * 2000 + [1] * 990 + [2] * 10)
    got = ood_sample(ids, labels, seed=7, cap=300)
    assert len(got) == 300 and len(set(got.tolist())) == 300 and set(got.tolist()) <= set(ids.tolist())
    assert np.all(np.diff(got) > 0)
    per_class = np.bincount(labels[got - 1000], minlength=3).tolist()
    assert per_class == [200, 99, 1]  # each class keeps its share; a rare class is never dropped
    assert np.array_equal(got, ood_sample(ids, labels, seed=7, cap=300))
    assert not np.array_equal(got, ood_sample(ids, labels, seed=8, cap=300))
    assert np.array_equal(ood_sample(ids[:250], labels[:250], seed=7, cap=300), ids[:250])  # under the cap: all


def test_merge_classes_relabels_without_touching_the_data(dataset):
    before = snapshot(dataset)
    plain = D.discover(dataset)
    merged = D.discover(dataset, merge="AB=Alpha+Beta")
    assert snapshot(dataset) == before
    assert merged.classes == ["AB", "Gamma"]
    assert [merged.classes[s.label] for s in merged.samples] == [
        "AB" if plain.classes[s.label] in ("Alpha", "Beta") else "Gamma" for s in plain.samples]
    assert merged.counts() == {"AB": 50, "Gamma": 24}  # broken.png is only dropped at decode
    assert any("AB = Alpha + Beta" in p for p in merged.problems)
    assert D.discover(dataset, merge="Alpha=Alpha; Rest=Beta+Gamma").classes == ["Alpha", "Rest"]
    for bad, words in (("AB=Alpha+Delta", "Delta"), ("Alpha+Beta", r"NEW=old1\+old2"),
                       ("X=Alpha;Y=Alpha", "twice"), ("All=Alpha+Beta+Gamma", "one class")):
        with pytest.raises(D.DataError, match=words):
            D.discover(dataset, merge=bad)


def test_fit_cli_trains_the_merged_task(dataset, tmp_path):
    from trainer.cli import main
    from cxrviewer.checkpoint import load_checkpoint

    out = tmp_path / "run"
    rc = main(["fit", str(dataset), "--arch", "squeezenet", "--recipe", "smoke", "--epochs", "1", "--quiet",
               "--pretrained", "none", "--threads", "1", "--out", str(out),
               "--merge-classes", "AB=Alpha+Beta"])
    assert rc == 0
    _, card = load_checkpoint(out / "best.safetensors")
    assert card["classes"] == ["AB", "Gamma"]
    assert "--merge-classes AB=Alpha+Beta" in card["training"]["command"]
