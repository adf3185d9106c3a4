"""DICOMDIR: a file-set built with pydicom's FileSet opens as a worklist of exactly the images it lists."""

import shutil
from pathlib import Path

import pytest
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid

import dicom_factory as dfac
from cxrviewer.film.dicomdir import DicomdirError, is_dicomdir, looks_like_dicomdir, read_dicomdir
from cxrviewer.film.loader import load_film


def _film(study_uid, series_uid, number, rows=24, cols=20, **kw):
    ds = dfac.make_dataset(rows=rows, cols=cols, **kw)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = number
    ds.SeriesNumber = 1
    ds.StudyID = "S1"
    ds.StudyTime = "101500"
    ds.StudyDescription = "CHEST PA"
    return ds


def make_media(root: Path, with_report: bool = True) -> tuple:
    """A media folder with a DICOMDIR: two studies (3 + 1 films) and, optionally, an SR report."""
    fs = FileSet()
    study_a, study_b = generate_uid(), generate_uid()
    series_a, series_b = generate_uid(), generate_uid()
    films = [_film(study_a, series_a, i, rows=24 + i) for i in (1, 2, 3)]
    films.append(_film(study_b, series_b, 1, rows=40, modality="DX", sop_class=dfac.DX_STORAGE))
    for ds in films:
        fs.add(ds)
    if with_report:
        sr = dfac.make_dataset(sop_class=dfac.BASIC_TEXT_SR, modality="SR")
        del sr.PixelData
        sr.StudyInstanceUID, sr.SeriesInstanceUID = study_a, generate_uid()
        sr.InstanceNumber, sr.SeriesNumber = 1, 9
        sr.StudyID, sr.StudyTime, sr.ValueType = "S1", "101500", "CONTAINER"
        sr.ContentDate, sr.ContentTime = "20240301", "101600"
        sr.CompletionFlag, sr.VerificationFlag = "COMPLETE", "UNVERIFIED"
        sr.ConceptNameCodeSequence = []
        fs.add(sr)
    fs.write(root)
    return root / "DICOMDIR", [ds.SOPInstanceUID for ds in films]


def test_dicomdir_lists_its_images_in_order_and_skips_non_images(tmp_path):
    dicomdir, uids = make_media(tmp_path / "cd")
    assert looks_like_dicomdir(dicomdir) and is_dicomdir(dicomdir)
    renamed = tmp_path / "index.dcm"  # recognised by content too, not only by its standard name
    shutil.copy(dicomdir, renamed)
    assert is_dicomdir(renamed) and not looks_like_dicomdir(renamed)

    dd = read_dicomdir(dicomdir)
    assert len(dd.entries) == 4 and dd.skipped == 1  # the SR report is not a film
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in dd.paths())
    films = [load_film(p) for p in dd.paths()]
    assert [f.shape[0] for f in films] == [25, 26, 27, 40]  # the first study's three films in order, then the DX
    assert dd.entries[0].modality == "CR" and dd.entries[3].modality == "DX"
    assert "CHEST PA" in dd.entries[0].study and dd.entries[0].instance == 1
    assert "4 image(s) in 2 studies" in dd.summary()


def test_missing_files_are_reported_and_a_dicomdir_with_none_left_is_refused(tmp_path):
    dicomdir, _ = make_media(tmp_path / "cd", with_report=False)
    first = read_dicomdir(dicomdir).paths()[0]
    Path(first).unlink()
    dd = read_dicomdir(dicomdir)
    assert len(dd.entries) == 3 and len(dd.missing) == 1 and "missing" in dd.summary()
    for p in dd.paths():
        Path(p).unlink()
    with pytest.raises(DicomdirError) as err:
        read_dicomdir(dicomdir)
    assert "DICOMDIR" in str(err.value) and "none of the 4 image(s)" in str(err.value)


@pytest.mark.parametrize("content, reason", [
    (b"", "not a DICOM file"),
    (b"hello, this is not a DICOMDIR" * 10, "not a DICOM file"),
])
def test_bad_dicomdirs_give_one_clear_message(tmp_path, content, reason):
    bad = tmp_path / "DICOMDIR"
    bad.write_bytes(content)
    with pytest.raises(DicomdirError) as err:
        read_dicomdir(bad)
    assert str(err.value).startswith("Cannot open DICOMDIR:") and reason in str(err.value)


def test_a_plain_film_or_a_truncated_dicomdir_is_refused(tmp_path):
    film = dfac.write(dfac.make_dataset(), tmp_path / "DICOMDIR")
    with pytest.raises(DicomdirError, match="not a DICOMDIR"):
        read_dicomdir(film)
    assert not is_dicomdir(tmp_path / "missing") and not is_dicomdir(dfac.write(dfac.make_dataset(), tmp_path / "f.dcm"))
    dicomdir, _ = make_media(tmp_path / "cd")
    data = dicomdir.read_bytes()
    dicomdir.write_bytes(data[: len(data) // 2])
    with pytest.raises(DicomdirError) as err:
        read_dicomdir(dicomdir)
    assert "DICOMDIR" in str(err.value) and "Traceback" not in str(err.value)


def test_file_ids_are_matched_case_insensitively(tmp_path):
    """Media written on case-insensitive systems may store IM000001 as im000001."""
    dicomdir, _ = make_media(tmp_path / "cd", with_report=False)
    first = Path(read_dicomdir(dicomdir).paths()[0])
    lowered = first.with_name(first.name.lower())
    first.rename(lowered)
    dd = read_dicomdir(dicomdir)
    assert len(dd.entries) == 4 and not dd.missing
    assert str(lowered) in dd.paths()
