"""Fine-tuning: the dataset, losses and augmentation, the training loop and its worker process.

    from engine.training import TrainOptions, train, start_finetune
    result = train(TrainOptions(outdir="runs/faces", data="~/faces", resume="ffhq.pkl", kimg=100))

The loop is `train` (engine.training.loop); `start_finetune` runs it in a child process for the
app; the dataset, augmentation and loss modules are its parts, importable for tests and scripts.
"""
from engine.training.augment import AdaController, AugmentPipe, augment_preset
from engine.training.dataset import DatasetError, DatasetOptions, DatasetReport, ImageDataset
from engine.training.loop import DATASET_MESSAGE, TrainOptions, TrainResult, ema_beta, state_hash, train, update_ema
from engine.training.loss import StyleGANLoss
from engine.training.process import (Failed, FinetuneProcess, Finished, Progressed, SnapshotWritten, Started,
                                     Stopped, start_finetune)
from engine.training.snapshot import Snapshot, find_snapshots, latest_snapshot

__all__ = [
    # data
    "DatasetError", "DatasetOptions", "DatasetReport", "ImageDataset",
    # augmentation and loss
    "AdaController", "AugmentPipe", "StyleGANLoss", "augment_preset",
    # the loop and its snapshots
    "DATASET_MESSAGE", "Snapshot", "TrainOptions", "TrainResult", "ema_beta", "find_snapshots", "latest_snapshot", "state_hash",
    "train", "update_ema",
    # the worker process
    "Failed", "FinetuneProcess", "Finished", "Progressed", "SnapshotWritten", "Started", "Stopped",
    "start_finetune",
]
