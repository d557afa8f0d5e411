"""Procedural datasets: training images StyleDeck can make itself, so its starter models need no download.

    from engine.datasets.toyfaces import make_dataset
    make_dataset("data/toyfaces-128", count=10_000, resolution=128, seed=0)

`toyfaces` draws parametric cartoon faces with OpenCV, with variation at every scale (coarse:
head, pose, hair style, position; middle: eyes, brows, nose, mouth, glasses; fine: colours,
background texture, lighting), so that a network trained on it shows what style mixing does.
The CLI runs it as `python main.py make-dataset toyfaces --out DIR --count N --resolution R`.
"""

DATASET_KINDS = ("toyfaces",)

__all__ = ["DATASET_KINDS"]
