"""``cxrviewer predict`` end to end, through the real entry point ``cxrviewer.cli.main``."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from cxrviewer.cli import main

from inference_helpers import CLASSES3, chest_like, make_checkpoint, write_png


@pytest.fixture
def model(tmp_path, monkeypatch):
    res = tmp_path / "resources"
    (res / "models").mkdir(parents=True)
    monkeypatch.setenv("CXRVIEWER_RESOURCES", str(res))
    return make_checkpoint(res / "models" / "tiny.safetensors", name="tiny-cli", display_name="Tiny CLI",
                           sharpen=4.0, default=True)


@pytest.fixture
def films(tmp_path):
    d = tmp_path / "films"
    d.mkdir()
    return [write_png(d / f"film{i}.png", seed=i) for i in range(3)]


def test_json_output(model, films, capsys):
    rc = main(["predict", str(films[0]), str(films[1]), "--model", str(model), "--json", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    rows = json.loads(out)
    assert [r["file"] for r in rows] == ["film0.png", "film1.png"]
    for r in rows:
        assert r["model"] == "tiny-cli" and r["classes"] == CLASSES3
        assert sum(r["probabilities"]) == pytest.approx(1.0, abs=1e-9)
        assert r["top_class"] == CLASSES3[int(np.argmax(r["probabilities"]))]
        assert r["top_probability"] == pytest.approx(max(r["probabilities"]))


def test_table_output_with_default_model_and_name(model, films, capsys):
    assert main(["predict", str(films[2])]) == 0  # the bundled default
    out, _ = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("model: Tiny CLI")
    assert lines[1].split()[:3] == ["file", "top", "class"] and "Pneumonia-Viral" in lines[1]
    assert lines[2].startswith("film2.png") and len(lines) == 3
    assert main(["predict", str(films[2]), "--model", "tiny-cli", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["file"] == "film2.png"


def test_folder_gives_csv_and_bad_film_continues(model, films, capsys, tmp_path):
    folder = films[0].parent
    (folder / "broken.png").write_bytes(b"this is not an image")
    rc = main(["predict", str(folder), "--model", str(model)])
    out, err = capsys.readouterr()
    assert rc == 1
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["file", "top_class", "top_probability", *CLASSES3, "ood_verdict", "ood_score"]
    assert [r[0] for r in rows[1:]] == ["film0.png", "film1.png", "film2.png"]
    assert all(abs(sum(float(v) for v in r[3:6]) - 1) < 1e-4 for r in rows[1:])
    err_lines = [l for l in err.splitlines() if l.strip()]
    assert err_lines == [l for l in err_lines if "broken.png" in l] and len(err_lines) == 1
    assert err_lines[0].startswith("Cannot open broken.png:")

    out_csv = tmp_path / "out.csv"
    rc = main(["predict", str(films[0]), str(films[1]), "--csv", str(out_csv), "--model", str(model)])
    assert rc == 0
    written = list(csv.reader(io.StringIO(out_csv.read_text())))
    assert [r[0] for r in written[1:]] == ["film0.png", "film1.png"]


def test_a_damaged_dicom_gets_one_line_of_ours_and_no_library_warning(tmp_path):
    """pydicom warns about a cut-off file ("End of file reached before delimiter ... in file PATH"); run as
    a reader runs it (a process of its own, so no test harness sets the warning filters), stderr holds
    our one line and nothing else."""
    import subprocess
    import sys

    import dicom_factory as df

    from pydicom.uid import JPEG2000Lossless

    full = df.write(df.compress(df.make_dataset(rows=64, cols=64), JPEG2000Lossless), tmp_path / "full.dcm")
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])  # inside the encapsulated pixel data
    run = subprocess.run([sys.executable, "-m", "cxrviewer", "predict", str(cut)],  # the bundled default
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        "Cannot open cut.dcm: truncated or corrupt DICOM file (it ends before the image is complete)"], run.stderr


def test_no_patient_identifiers_in_output(model, tmp_path, capsys):
    d = tmp_path / "DOE^JOHN 1970-01-01"
    d.mkdir()
    write_png(d / "chest.png")
    _write_dicom(d / "study.dcm")
    rc = main(["predict", str(d), "--model", str(model), "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert sorted(r["file"] for r in json.loads(out)) == ["chest.png", "study.dcm"]
    for text in (out, err):
        assert "DOE" not in text and "JOHN" not in text and "123-45-678" not in text


def test_films_that_share_a_name_are_told_apart_on_request(model, tmp_path, capsys, monkeypatch):
    """A PACS export has IM0001 in every series folder: the rows, named by file name for privacy, look alike.
    The run says so, and --paths names each film by its path (the folder as typed, then the path under it)."""
    for series, seed in (("s1", 1), ("s2", 2)):
        (tmp_path / "export" / series).mkdir(parents=True)
        write_png(tmp_path / "export" / series / "IM0001.png", seed=seed)
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "export", "--model", str(model), "--json"]) == 0
    out, err = capsys.readouterr()
    assert [r["file"] for r in json.loads(out)] == ["IM0001.png", "IM0001.png"]
    assert "note: 1 file name(s) are shared by films in different folders (IM0001.png)" in err and "--paths" in err
    assert main(["predict", "export", "--model", str(model), "--json", "--paths"]) == 0
    out, err = capsys.readouterr()
    assert [r["file"] for r in json.loads(out)] == ["export/s1/IM0001.png", "export/s2/IM0001.png"]
    assert "shared" not in err


def _write_dicom(path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.Modality = "DOE^JOHN", "123-45-678", "DX"
    img = chest_like(128, 112)
    ds.Rows, ds.Columns = img.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = img.tobytes()
    ds.save_as(str(path), enforce_file_format=True)


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "required"),
        (["x.png", "--bogus"], "unrecognized"),
        (["x.png", "--model", "no-such-model"], "no model named 'no-such-model'"),
        (["x.png", "--device", "quantum"], "unknown device"),
    ],
)
def test_usage_errors_exit_2(model, args, message, capsys):
    assert main(["predict", *args]) == 2
    assert message in capsys.readouterr().err


def test_no_model_installed_is_a_usage_error(tmp_path, monkeypatch, films, capsys):
    monkeypatch.setenv("CXRVIEWER_RESOURCES", str(tmp_path / "empty"))
    assert main(["predict", str(films[0])]) == 2
    assert "no model is installed" in capsys.readouterr().err


def test_bad_model_file_and_missing_film(model, films, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nope")
    assert main(["predict", str(films[0]), "--model", str(bad)]) == 1
    assert "Cannot use model bad.safetensors: not a safetensors file" in capsys.readouterr().err
    assert main(["predict", str(films[0]), str(tmp_path / "gone.png"), "--model", str(model), "--json"]) == 1
    out, err = capsys.readouterr()
    assert [r["file"] for r in json.loads(out)] == ["film0.png"]
    assert "Cannot open gone.png: no such file or folder" in err


def test_requested_unavailable_gpu_is_a_notice_not_a_failure(model, films, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["predict", str(films[0]), "--device", "cuda", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)[0]["file"] == "film0.png" and "running on the CPU" in err
