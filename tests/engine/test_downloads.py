"""Published-network downloads against a local HTTP server: nothing here reaches the internet."""
from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import engine
from engine import (KNOWN_NETWORKS, CancelToken, Cancelled, CorruptFileError, DownloadError, KnownNetwork,
                    StyleDeckError, cache_dir, cached_path, download_network)
from engine.downloads import load_known_networks
from network_server import PAYLOAD, NetworkHandler, cache, server  # noqa: F401 (fixtures; cache is autouse)


def closed_port_url() -> str:
    """A localhost URL nobody listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/net.pkl"


def entry_for(url: str, filename: str = "test-net.pkl", **kw) -> KnownNetwork:
    return KnownNetwork(name="Test network 16", family="stylegan2", resolution=16, size_mb=None, url=url,
                        filename=filename, **kw)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_cache_dir_follows_the_environment(cache, monkeypatch):
    assert cache_dir() == cache
    monkeypatch.delenv("STYLEDECK_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "styledeck" / "networks"


def test_download_streams_into_the_cache_with_progress(server, cache):
    entry = entry_for(f"{server}/net.pkl")
    assert cached_path(entry) is None
    events = []
    path = download_network(entry, progress=events.append, chunk_bytes=65536)
    assert path == cache / "test-net.pkl" and path.read_bytes() == PAYLOAD
    assert cached_path(entry) == path
    assert leftovers(cache) == ["test-net.pkl"]                     # no temporary file left
    steps = [e.step for e in events]
    assert steps[0] == 0 and steps[-1] == len(PAYLOAD) and steps == sorted(steps)
    assert len(steps) >= 1 + len(PAYLOAD) // 65536                  # one event per chunk
    assert {e.total for e in events} == {len(PAYLOAD)}
    assert events[-1].fraction == 1.0


def test_a_cached_network_is_not_downloaded_again(server, cache):
    entry = entry_for(f"{server}/net.pkl", filename="again.pkl")
    download_network(entry)
    before = len(NetworkHandler.hits)
    events = []
    assert download_network(entry, progress=events.append) == cache / "again.pkl"
    assert len(NetworkHandler.hits) == before                              # served from the cache
    assert events[-1].step == events[-1].total == len(PAYLOAD)
    download_network(entry, force=True)
    assert len(NetworkHandler.hits) == before + 1


def test_unknown_length_downloads_and_reports_bytes(server, cache):
    events = []
    path = download_network(entry_for(f"{server}/nolength.pkl"), progress=events.append, chunk_bytes=65536)
    assert path.read_bytes() == PAYLOAD
    assert {e.total for e in events} == {0} and events[-1].step == len(PAYLOAD)


def test_checksum_is_checked_when_known(server, cache):
    import hashlib
    good = entry_for(f"{server}/net.pkl", filename="good.pkl", sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert download_network(good).read_bytes() == PAYLOAD
    bad = entry_for(f"{server}/net.pkl", filename="bad.pkl", sha256="0" * 64)
    with pytest.raises(DownloadError, match="checksum"):
        download_network(bad)
    assert leftovers(cache) == ["good.pkl"]


def test_truncated_download_is_an_error_and_leaves_no_file(server, cache):
    entry = entry_for(f"{server}/truncated.pkl")
    with pytest.raises(DownloadError) as info:
        download_network(entry, chunk_bytes=8192)
    message = str(info.value)
    assert f"of {len(PAYLOAD):,} bytes" in message and "nothing was saved" in message
    assert entry.url in message                                     # how to get it by hand
    assert leftovers(cache) == [] and cached_path(entry) is None


def test_unreachable_server_says_it_cannot_download_and_how_to_get_it(cache):
    entry = entry_for(closed_port_url())
    with pytest.raises(StyleDeckError) as info:
        download_network(entry, timeout=5)
    message = str(info.value)
    assert isinstance(info.value, DownloadError)
    assert "Could not download Test network 16" in message
    assert "offline, or the server is unreachable" in message
    assert "refused" in message
    assert entry.url in message and "Open network" in message       # the by-hand route
    assert leftovers(cache) == []


def test_dns_failure_is_reported_as_offline():
    # a real lookup would send a DNS query out of the machine, so the error urllib raises offline is
    # built here and turned into the message the user sees
    import urllib.error
    from engine.downloads import _unreachable
    entry = entry_for("https://api.ngc.nvidia.com/v2/models/x/net.pkl")
    exc = urllib.error.URLError(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    message = str(_unreachable(entry, exc))
    assert "could not be resolved (no internet connection?)" in message
    assert "StyleDeck cannot reach api.ngc.nvidia.com (offline" in message and entry.url in message


def test_http_error_names_the_status(server, cache):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_network(entry_for(f"{server}/gone.pkl"))
    assert leftovers(cache) == []


def test_a_stalled_server_times_out(server, cache):
    with pytest.raises(DownloadError, match="timed out"):
        download_network(entry_for(f"{server}/silent.pkl"), timeout=0.5)
    assert leftovers(cache) == []


def test_a_web_page_instead_of_a_pickle_is_refused(server, cache):
    with pytest.raises(DownloadError, match="not a network pickle"):
        download_network(entry_for(f"{server}/page.pkl"))
    assert leftovers(cache) == []


def test_cancel_mid_download_leaves_no_file(server, cache):
    token = CancelToken()
    events = []

    def progress(event):
        events.append(event)
        if event.step > 0:
            token.cancel()                     # the user presses Cancel after the first chunk

    with pytest.raises(Cancelled):
        download_network(entry_for(f"{server}/slow.pkl"), progress=progress, cancel=token, chunk_bytes=4096)
    assert 0 < events[-1].step < len(PAYLOAD)
    assert leftovers(cache) == []


def test_the_bundled_list_is_sane():
    assert len(KNOWN_NETWORKS) >= 20 and engine.KNOWN_NETWORKS is KNOWN_NETWORKS
    filenames = [e.filename for e in KNOWN_NETWORKS]
    assert len(set(filenames)) == len(filenames)
    for e in KNOWN_NETWORKS:
        assert e.family in ("stylegan2", "stylegan3"), e
        assert e.resolution in (32, 256, 512, 1024), e
        assert urlsplit(e.url).scheme == "https", e
        assert urlsplit(e.url).netloc in ("api.ngc.nvidia.com", "nvlabs-fi-cdn.nvidia.com"), e
        assert e.filename.endswith(".pkl") and "/" not in e.filename
        assert e.config in (("T", "R") if e.family == "stylegan3" else ("F", "ADA")), e
        if e.url.startswith("https://api.ngc"):
            assert e.url.endswith("/" + e.filename)                # NGC names are kept as published
    families = {e.family for e in KNOWN_NETWORKS}
    assert families == {"stylegan2", "stylegan3"}
    assert engine.find_known_network("stylegan3-t-ffhqu-256x256").resolution == 256


def test_malformed_lists_are_refused_with_the_field(tmp_path):
    good = dataclasses.asdict(entry_for("https://example.org/a.pkl"))
    path = tmp_path / "list.json"
    path.write_text(json.dumps({"networks": [{k: v for k, v in good.items() if k != "url"}]}))
    with pytest.raises(CorruptFileError, match="networks\\[0\\] has no field 'url'"):
        load_known_networks(path)
    path.write_text(json.dumps({"networks": [dict(good, filename="../../escape.pkl")]}))
    with pytest.raises(CorruptFileError, match="unusable filename"):
        load_known_networks(path)
    path.write_text(json.dumps({"networks": [dict(good, url="file:///etc/passwd")]}))
    with pytest.raises(CorruptFileError, match="not http"):
        load_known_networks(path)
    path.write_text(json.dumps({"networks": [good]}))
    assert load_known_networks(path) == (entry_for("https://example.org/a.pkl"),)
