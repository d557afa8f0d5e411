"""`python main.py make-dataset` as a user runs it, in a subprocess: the folder or zip it writes is the
engine's dataset to the byte, the training dataset reads it, and bad requests exit with a message."""
from __future__ import annotations

import zipfile

import imageio.v3 as iio
import numpy as np

from engine.datasets.toyfaces import face_rng, image_name, make_dataset, render_face, sample_params
from engine.training.dataset import DatasetOptions, ImageDataset
from run_main import ok, run


def test_make_dataset_writes_the_engines_dataset(tmp_path):
    out = ok(run("make-dataset", "toyfaces", "--out", "faces", "--count", "5", "--resolution", "32",
                 "--seed", "3", "--variant", "rotated", cwd=tmp_path))
    assert "wrote 5 toyfaces images of 32 px (rotated, seed 3)" in out
    folder = tmp_path / "faces"
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png")) == [image_name(i) for i in range(5)]
    reference = make_dataset(tmp_path / "reference", 5, 32, seed=3, variant="rotated")
    for i in range(5):
        assert (folder / image_name(i)).read_bytes() == (reference / image_name(i)).read_bytes()
    image = iio.imread(folder / image_name(4))
    assert np.array_equal(image, render_face(sample_params(face_rng(3, 4), "rotated"), 32))
    ds = ImageDataset(DatasetOptions(str(folder), 32, cache=False))
    assert len(ds) == 5 and ds[4][0].shape == (3, 32, 32)


def test_make_dataset_to_a_zip_with_the_default_seed_and_variant(tmp_path):
    ok(run("make-dataset", "toyfaces", "--out", "faces.zip", "--count", "3", "--resolution", "16", cwd=tmp_path))
    with zipfile.ZipFile(tmp_path / "faces.zip") as zf:
        assert sorted(zf.namelist()) == ["00000/img00000000.png", "00000/img00000001.png", "00000/img00000002.png",
                                         "dataset.json"]
        png = zf.read("00000/img00000002.png")
    assert np.array_equal(iio.imread(png), render_face(sample_params(face_rng(0, 2), "upright"), 16))


def test_bad_requests_exit_with_a_reason_and_write_nothing(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "photo.png").write_bytes(b"mine")
    result = run("make-dataset", "toyfaces", "--out", "taken", "--count", "2", "--resolution", "16", cwd=tmp_path)
    assert result.returncode == 1 and "error: " in result.stderr and "not an empty folder" in result.stderr
    assert (tmp_path / "taken" / "photo.png").read_bytes() == b"mine"
    usage = [["--variant", "sideways"], ["--count", "-1"], ["--resolution", "big"]]
    for extra in usage:
        args = {"--out": "new", "--count": "2", "--resolution": "16"}
        args.update(dict(zip(extra[::2], extra[1::2])))
        result = run("make-dataset", "toyfaces", *[x for kv in args.items() for x in kv], cwd=tmp_path)
        assert result.returncode == 2, extra                           # argparse: bad usage
    result = run("make-dataset", "cats", "--out", "new", "--count", "2", "--resolution", "16", cwd=tmp_path)
    assert result.returncode == 2 and "toyfaces" in result.stderr
    result = run("make-dataset", "toyfaces", "--out", "new", "--count", "0", "--resolution", "16", cwd=tmp_path)
    assert result.returncode == 1 and "count" in result.stderr
    assert not (tmp_path / "new").exists()
