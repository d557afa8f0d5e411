"""ModelPanel and KnownNetworksDialog on real widgets; downloads come from a server on 127.0.0.1."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings

import engine
from app.panels.model import MAX_RECENT, KnownNetworksDialog, ModelPanel
from engine.networks import stylegan2, stylegan3
from network_server import PAYLOAD, NetworkHandler, cache, server  # noqa: F401 (fixtures; cache is autouse)

TIMEOUT_MS = 15_000


@pytest.fixture
def settings(tmp_path):
    """A settings file of the test's own: the user's recent files are never touched."""
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def panel(qtbot, settings):
    widget = ModelPanel(settings=settings)
    qtbot.addWidget(widget)
    return widget


def entry_for(url: str, filename: str = "local-net.pkl") -> engine.KnownNetwork:
    return engine.KnownNetwork(name="Local test network", family="stylegan2", resolution=16, size_mb=0.2,
                               url=url, filename=filename)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/net.pkl"


def make_dialog(qtbot, entries) -> KnownNetworksDialog:
    dialog = KnownNetworksDialog(entries=entries)
    qtbot.addWidget(dialog)
    dialog.show()
    return dialog


# recent files ------------------------------------------------------------------------------------

def test_recent_files_keep_order_dedupe_and_cap(panel, settings, tmp_path, qtbot):
    paths = [str(tmp_path / f"net{i}.pkl") for i in range(12)]
    for p in paths:
        panel.add_recent(p)
    assert panel.recent_files() == paths[::-1][:MAX_RECENT]          # newest first, 10 kept
    with qtbot.waitSignal(panel.recent_changed) as changed:
        panel.add_recent(paths[5])                                     # again: moves to the front, once
    expected = [paths[5]] + [p for p in paths[::-1][:MAX_RECENT] if p != paths[5]]
    assert panel.recent_files() == expected and changed.args == [expected]
    assert len(set(panel.recent_files())) == MAX_RECENT
    # shown in the list, and kept in the settings for the next start
    assert [panel.recent_list.item(i).text() for i in range(panel.recent_list.count())] == \
        [Path(p).name for p in expected]
    again = ModelPanel(settings=QSettings(settings.fileName(), QSettings.Format.IniFormat))
    qtbot.addWidget(again)
    assert again.recent_files() == expected
    panel.clear_recent()
    assert panel.recent_files() == [] and panel.recent_list.count() == 0


def test_one_recent_file_survives_the_ini_round_trip(panel, settings, tmp_path, qtbot):
    panel.add_recent(tmp_path / "only.pkl")
    again = ModelPanel(settings=QSettings(settings.fileName(), QSettings.Format.IniFormat))
    qtbot.addWidget(again)
    assert again.recent_files() == [str(tmp_path / "only.pkl")]


def test_activating_a_recent_file_requests_it(panel, tmp_path, qtbot):
    target = tmp_path / "a.pkl"
    target.write_bytes(b"x")
    panel.add_recent(tmp_path / "b.pkl")
    panel.add_recent(target)
    with qtbot.waitSignal(panel.open_requested) as opened:
        panel.recent_list.itemActivated.emit(panel.recent_list.item(0))
    assert opened.args == [str(target)]
    assert "not found" in panel.recent_list.item(1).toolTip()         # b.pkl is gone: say so


def test_open_button_asks_for_pkl_or_safetensors(panel, tmp_path, qtbot, monkeypatch):
    from app.panels import model
    asked = {}

    def fake_dialog(parent, caption, folder, filters):   # the native dialog cannot run offscreen
        asked.update(caption=caption, folder=folder, filters=filters)
        return str(tmp_path / "picked.safetensors"), filters.split(";;")[0]

    monkeypatch.setattr(model.QFileDialog, "getOpenFileName", staticmethod(fake_dialog))
    panel.add_recent(tmp_path / "nets" / "last.pkl")
    with qtbot.waitSignal(panel.open_requested) as opened:
        panel.open_button.click()
    assert opened.args == [str(tmp_path / "picked.safetensors")]
    assert "*.pkl *.safetensors" in asked["filters"]
    assert asked["folder"] == str(tmp_path / "nets")                     # starts where the last one was
    monkeypatch.setattr(model.QFileDialog, "getOpenFileName", staticmethod(lambda *a: ("", "")))
    with qtbot.assertNotEmitted(panel.open_requested):
        panel.open_button.click()                                        # cancelled: nothing asked


# model info --------------------------------------------------------------------------------------

def test_info_of_a_stylegan2(panel):
    G = stylegan2.Generator(z_dim=8, c_dim=3, w_dim=8, img_resolution=32, img_channels=3, channel_base=64,
                            channel_max=8, num_fp16_res=0)
    info = dict(engine.network_info(G), device="cpu", precision="float32", path="/nets/tiny.pkl")
    panel.show_error("old error")
    panel.set_info(info)
    shown = {key: label.text() for key, label in panel.info_labels.items()}
    assert shown["kind"] == "StyleGAN2" and shown["resolution"] == "32 x 32 px"
    assert shown["num_ws"] == str(G.num_ws) == "8"
    assert shown["layers"] == "7 convolutions in 4 blocks (4 to 32 px)"
    n = sum(p.numel() for p in G.parameters())
    assert shown["parameters"] == (f"{n / 1e3:.0f} k" if n < 1e6 else f"{n / 1e6:.1f} M")
    assert (shown["device"], shown["precision"], shown["file"]) == ("cpu", "float32", "tiny.pkl")
    assert shown["conditional"] == "yes, 3 classes"
    assert panel.error_label.isHidden()                                # a good load clears the error


def test_info_of_a_stylegan3(panel):
    G = stylegan3.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3, channel_base=256,
                            channel_max=16, num_layers=4, num_critical=1, mapping_kwargs=dict(num_layers=2))
    panel.set_info(dict(engine.network_info(G), device="cuda:0"))
    shown = {key: label.text() for key, label in panel.info_labels.items()}
    assert shown["kind"] == "StyleGAN3-T" and shown["layers"] == "4" and shown["num_ws"] == str(G.num_ws)
    assert shown["conditional"] == "no" and shown["device"] == "cuda:0"
    # no precision given: what the network was built with (NVIDIA's default num_fp16_res=4)
    assert G.synthesis.num_fp16_res == 4
    assert shown["precision"] == "float32, float16 in the top 4 resolutions"


def test_show_error(panel):
    panel.show_error("broken.pkl is truncated.")
    assert not panel.error_label.isHidden() and panel.error_label.text() == "broken.pkl is truncated."


# published networks ------------------------------------------------------------------------------

def test_dialog_lists_the_published_networks_with_a_cached_marker(qtbot, panel, cache):
    first = engine.KNOWN_NETWORKS[0]
    cache.mkdir(parents=True)
    (cache / first.filename).write_bytes(b"\x80\x04cached")
    dialog = panel.show_known_networks()
    qtbot.addWidget(dialog)
    assert dialog.isVisible() and dialog.table.rowCount() == len(engine.KNOWN_NETWORKS)
    for row, entry in enumerate(engine.KNOWN_NETWORKS):
        assert dialog.table.item(row, 0).text() == entry.name
        assert dialog.table.item(row, 2).text() == f"{entry.resolution} px"
        assert dialog.table.item(row, 5).text() == entry.url
    assert dialog.is_cached(0) and not dialog.is_cached(1)
    dialog.select(0)
    assert dialog.download_button.text() == "Open"                     # cached: no download needed
    with qtbot.waitSignal(panel.open_requested) as opened:             # the panel forwards the dialog's
        dialog.download_button.click()
    assert opened.args == [str(cache / first.filename)]


def test_offline_shows_the_engines_message_in_the_dialog(qtbot, cache):
    entry = entry_for(closed_port_url())
    dialog = make_dialog(qtbot, [entry])
    dialog.select(0)
    with qtbot.waitSignal(dialog.runner.failed, timeout=TIMEOUT_MS):
        dialog.download_button.click()
    dialog.runner.wait()
    text = dialog.message_label.text()
    assert "Could not download Local test network" in text and "offline, or the server is unreachable" in text
    assert entry.url in text                                           # how to get it by hand
    assert dialog.progress_bar.isHidden() and dialog.download_button.isEnabled()
    assert not dialog.is_cached(0) and not any(cache.iterdir())


def test_download_emits_open_requested_with_the_cached_path(qtbot, server, cache):
    entry = entry_for(f"{server}/net.pkl")
    dialog = make_dialog(qtbot, [entry])
    dialog.select(0)
    assert dialog.download_button.text() == "Download and open"
    with qtbot.waitSignal(dialog.open_requested, timeout=TIMEOUT_MS) as opened:
        dialog.download_button.click()
        assert dialog.progress_bar.isVisible() and dialog.cancel_button.isEnabled()
    dialog.runner.wait()
    assert opened.args == [str(cache / "local-net.pkl")]
    assert (cache / "local-net.pkl").read_bytes() == PAYLOAD
    assert dialog.is_cached(0) and dialog.result() == KnownNetworksDialog.DialogCode.Accepted


def test_cancel_stops_the_download_and_leaves_no_file(qtbot, server, cache):
    dialog = make_dialog(qtbot, [entry_for(f"{server}/slow.pkl")])
    dialog.select(0)
    with qtbot.waitSignal(dialog.runner.progressed, timeout=TIMEOUT_MS):
        dialog.download_button.click()         # the server now holds back the rest of the file
    assert dialog.progress_bar.isVisible() and dialog.progress_bar.maximum() == 1000   # the size is known
    with qtbot.waitSignal(dialog.runner.cancelled, timeout=TIMEOUT_MS):
        dialog.cancel_button.click()
        NetworkHandler.release.set()                 # let the server send the next chunk, so the job sees Cancel
    dialog.runner.wait()
    assert "Cancelled the download" in dialog.message_label.text()
    assert not any(cache.iterdir()) and not dialog.is_cached(0)
