"""App fixtures: tiny StyleGAN2/3 networks on disk, isolated QSettings, and a loaded MainWindow."""
from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

import engine
from engine.networks import stylegan2, stylegan3
from reference_data import perturbed


@pytest.fixture(scope="session")
def sg2_path(tmp_path_factory) -> Path:
    """A 32 px StyleGAN2 (ws 0-7: coarse 4-8 px, middle 16-32 px), saved as a native checkpoint."""
    torch.manual_seed(0)
    G = perturbed(stylegan2.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=32, img_channels=3,
                                      channel_base=128, channel_max=16, num_fp16_res=0,
                                      mapping_kwargs=dict(num_layers=2)), 1)
    return engine.save_checkpoint(tmp_path_factory.mktemp("nets") / "tiny_sg2.safetensors", {"G_ema": G})


@pytest.fixture(scope="session")
def sg3_path(tmp_path_factory) -> Path:
    """A 16 px StyleGAN3-T with 4 layers, saved as a native checkpoint."""
    torch.manual_seed(0)
    G = perturbed(stylegan3.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                                      channel_base=256, channel_max=16, num_layers=4, num_critical=1,
                                      magnitude_ema_beta=0.999, mapping_kwargs=dict(num_layers=2)), 3)
    return engine.save_checkpoint(tmp_path_factory.mktemp("nets3") / "tiny_sg3.safetensors", {"G_ema": G})


@pytest.fixture(scope="package", autouse=True)
def garbage_collected_on_the_gui_thread(qapp):
    """As in the app (app/main_thread_gc.py): no job thread may collect a window's Qt objects."""
    from app.main_thread_gc import install
    collector = install()
    yield collector
    collector.stop()
    collector.deleteLater()


@pytest.fixture(autouse=True)
def collect_between_tests():
    """An ended test's windows go now, on this thread, before the next test's jobs start."""
    yield
    gc.collect()


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path_factory):
    """Recent files and other QSettings go to a temporary folder, never the user's."""
    from PySide6.QtCore import QSettings
    folder = str(tmp_path_factory.mktemp("settings"))
    for fmt in (QSettings.NativeFormat, QSettings.IniFormat):
        QSettings.setPath(fmt, QSettings.UserScope, folder)
    yield


@pytest.fixture
def open_window(qtbot):
    """Factory: a MainWindow on `path`, shown, with its first image on screen; closed afterwards."""
    from app.main_window import MainWindow
    from app_helpers import SHOW_TIMEOUT_MS
    windows = []

    def make(path: Path):
        window = MainWindow(device="cpu")
        qtbot.addWidget(window)
        window.show()
        windows.append(window)
        with qtbot.waitSignal(window.render_controller.shown, timeout=SHOW_TIMEOUT_MS):
            window.open_network(str(path))
        return window

    yield make
    for window in windows:
        window.close()


@pytest.fixture
def main_window(open_window, sg2_path):
    """The window on the tiny StyleGAN2, first image shown."""
    return open_window(sg2_path)
