"""NVIDIA's published network pickles: the list, the local cache, and an honest download.

The list lives in `models/nvidia_pickles.json` (name, family, config, resolution, size, URL,
file name). A download streams into a temporary file beside its place in the cache and becomes
that file only when every byte arrived (and, where known, the size and SHA-256 agree), so the
cache never holds half a network. Offline, a refused connection or an HTTP error becomes a
`DownloadError` that names the network and says how to fetch it by hand.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import CorruptFileError, StyleDeckError
from engine.jobs import CancelToken, Progress, ProgressCallback, atomic_write

__all__ = ["KNOWN_NETWORKS", "DownloadError", "KnownNetwork", "cache_dir", "cached_path", "download_network",
           "find_known_network", "load_known_networks"]

log = logging.getLogger(__name__)

KNOWN_NETWORKS_FILE = Path(__file__).resolve().parents[1] / "models" / "nvidia_pickles.json"
DEFAULT_TIMEOUT_S = 30.0          # per socket operation (connect, each read), not for the whole file
CHUNK_BYTES = 1 << 20             # 1 MiB: cancel and progress are checked this often
_USER_AGENT = "StyleDeck/0.1 (+network download)"


class DownloadError(StyleDeckError):
    """A network could not be downloaded (offline, unreachable, HTTP error, truncated, wrong checksum)."""


@dataclass(frozen=True, slots=True)
class KnownNetwork:
    """One published network: what the Published networks dialog lists and `download_network` fetches."""
    name: str                     # what people see, e.g. "StyleGAN3-T FFHQ 1024"
    family: str                   # "stylegan2" | "stylegan3", the engine's family names
    resolution: int               # output side in pixels
    size_mb: float | None         # approximate download size; None where not measured
    url: str                      # as NVIDIA published it
    filename: str                 # name in the cache (unique over the list)
    config: str = ""              # T / R (StyleGAN3), F / ADA (StyleGAN2)
    sha256: str | None = None     # hex digest where known; checked after download


def _entry_from_json(item: Any, source: str, index: int) -> KnownNetwork:
    where = f"{source}, networks[{index}]"
    if not isinstance(item, dict):
        raise CorruptFileError(f"{where} is not an object")
    try:
        entry = KnownNetwork(name=str(item["name"]), family=str(item["family"]),
                             resolution=int(item["resolution"]),
                             size_mb=None if item.get("size_mb") is None else float(item["size_mb"]),
                             url=str(item["url"]), filename=str(item["filename"]),
                             config=str(item.get("config", "")), sha256=item.get("sha256"))
    except KeyError as exc:
        raise CorruptFileError(f"{where} has no field {exc.args[0]!r}") from exc
    except (TypeError, ValueError) as exc:
        raise CorruptFileError(f"{where} has a field of the wrong type: {exc}") from exc
    # the file name becomes a path in the cache: a slash or '..' would escape it
    if not entry.filename or Path(entry.filename).name != entry.filename or entry.filename.startswith("."):
        raise CorruptFileError(f"{where} has an unusable filename {entry.filename!r}")
    if urllib.parse.urlsplit(entry.url).scheme not in ("http", "https"):
        raise CorruptFileError(f"{where} has a URL that is not http(s): {entry.url!r}")
    return entry


def load_known_networks(path: str | os.PathLike | None = None) -> tuple[KnownNetwork, ...]:
    """The entries of a known-networks JSON file (default: the bundled list); CorruptFileError if malformed."""
    path = Path(path) if path is not None else KNOWN_NETWORKS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CorruptFileError(f"Cannot read the list of published networks {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise CorruptFileError(f"{path.name} is not valid JSON (line {exc.lineno}): {exc.msg}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("networks"), list):
        raise CorruptFileError(f"{path.name} has no 'networks' list")
    entries = tuple(_entry_from_json(item, path.name, i) for i, item in enumerate(data["networks"]))
    names = [e.filename for e in entries]
    if len(set(names)) != len(names):
        raise CorruptFileError(f"{path.name} lists the same filename twice")
    return entries


def _bundled() -> tuple[KnownNetwork, ...]:
    # a missing list (e.g. an installed wheel without models/) leaves the dialog empty, not the engine broken
    if not KNOWN_NETWORKS_FILE.is_file():
        log.warning("no list of published networks at %s", KNOWN_NETWORKS_FILE)
        return ()
    return load_known_networks(KNOWN_NETWORKS_FILE)


KNOWN_NETWORKS: tuple[KnownNetwork, ...] = _bundled()


def find_known_network(name: str) -> KnownNetwork:
    """The entry whose name or filename is `name` (case-insensitive); StyleDeckError listing a few otherwise."""
    key = name.strip().lower()
    for entry in KNOWN_NETWORKS:
        if key in (entry.name.lower(), entry.filename.lower(), Path(entry.filename).stem.lower()):
            return entry
    some = ", ".join(e.filename for e in KNOWN_NETWORKS[:4])
    raise StyleDeckError(f"No published network is called {name!r}; known ones include {some}, ...")


def cache_dir() -> Path:
    """Where downloaded networks live: $STYLEDECK_CACHE, else ~/.cache/styledeck/networks."""
    env = os.environ.get("STYLEDECK_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "styledeck" / "networks"


def cached_path(entry: KnownNetwork) -> Path | None:
    """The cached file of `entry`, or None if it has not been downloaded (partial files never count)."""
    path = cache_dir() / entry.filename
    return path if path.is_file() else None


def _by_hand(entry: KnownNetwork) -> str:
    return (f"To get it by hand, download {entry.url} on a machine with internet access, then open the file "
            f"in StyleDeck (File > Open network...) or copy it to {cache_dir() / entry.filename}.")


def _why(exc: BaseException) -> str:
    """A short, human reason for a failed request."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"the server answered HTTP {exc.code} {exc.reason}"
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, socket.gaierror):
        return "the server's name could not be resolved (no internet connection?)"
    if isinstance(reason, ConnectionRefusedError):
        return "the connection was refused"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "the connection timed out"
    return str(reason) or type(reason).__name__


def _unreachable(entry: KnownNetwork, exc: BaseException) -> DownloadError:
    host = urllib.parse.urlsplit(entry.url).netloc
    return DownloadError(f"Could not download {entry.name}: {_why(exc)}. StyleDeck cannot reach {host} "
                         f"(offline, or the server is unreachable). {_by_hand(entry)}")


def _stream(entry: KnownNetwork, response: Any, tmp: Path, total: int, progress: ProgressCallback | None,
            cancel: CancelToken | None, chunk_bytes: int) -> tuple[int, str]:
    """Copy the body into `tmp` chunk by chunk; (bytes written, sha256 hex)."""
    digest, done = hashlib.sha256(), 0
    label = f"downloading {entry.filename}"
    # read1 returns what has arrived (up to chunk_bytes) instead of waiting for a full chunk, so
    # progress moves and Cancel is seen even on a slow line
    read = getattr(response, "read1", response.read)
    with open(tmp, "wb") as f:
        while True:
            if cancel is not None:
                cancel.raise_if_cancelled()      # unwinds atomic_write: the partial file goes
            try:
                block = read(chunk_bytes)
            except http.client.IncompleteRead as exc:   # the server closed before Content-Length
                block = exc.partial
                f.write(block)
                digest.update(block)
                done += len(block)
                break
            if not block:
                break
            f.write(block)
            digest.update(block)
            done += len(block)
            if progress is not None:
                progress(Progress(done, total, label))
    return done, digest.hexdigest()


def _check_payload(entry: KnownNetwork, tmp: Path, done: int, total: int, sha256: str) -> None:
    """Raise DownloadError for a truncated body, a wrong checksum, or a body that is not a network file."""
    if total > 0 and done != total:
        raise DownloadError(f"The download of {entry.name} stopped after {done:,} of {total:,} bytes "
                            f"(the connection dropped); nothing was saved. Try again. {_by_hand(entry)}")
    if done == 0:
        raise DownloadError(f"The server sent an empty file for {entry.name}; nothing was saved. {_by_hand(entry)}")
    if entry.sha256 and sha256 != entry.sha256.lower():
        raise DownloadError(f"The download of {entry.name} does not match its published checksum "
                            f"(got sha256 {sha256[:12]}..., expected {entry.sha256[:12]}...); nothing was saved. "
                            f"Try again. {_by_hand(entry)}")
    if entry.filename.endswith(".pkl"):
        with open(tmp, "rb") as f:
            head = f.read(2)
        # a pickle starts with the PROTO opcode (0x80, protocol 2-5); a captive portal sends HTML
        if not (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
            raise DownloadError(f"The server sent something that is not a network pickle for {entry.name} "
                                f"(a login or error page?); nothing was saved. {_by_hand(entry)}")


def download_network(entry: KnownNetwork, *, progress: ProgressCallback | None = None,
                     cancel: CancelToken | None = None, timeout: float = DEFAULT_TIMEOUT_S, force: bool = False,
                     chunk_bytes: int = CHUNK_BYTES) -> Path:
    """Download `entry` into the cache (or find it there) and return its path.

    Args:
        entry: the network to fetch, usually one of `KNOWN_NETWORKS`.
        progress: receives `Progress(bytes_done, bytes_total, message)`; total is 0 when the server
            does not say.
        cancel: polled between chunks.
        timeout: seconds a connect or a single read may stall before the download fails.
        force: download again even if the cache already has the file.
        chunk_bytes: how much is read between progress reports and cancel checks.

    Returns:
        The cached file, complete: it appears only once every byte arrived.

    Raises:
        DownloadError: offline, unreachable, HTTP error, truncated body, wrong checksum, or not a pickle;
            the message says how to get the file by hand.
        Cancelled: `cancel` was set; no file is left behind.
    """
    if not force and (hit := cached_path(entry)) is not None:
        if progress is not None:
            size = hit.stat().st_size
            progress(Progress(size, size, f"{entry.filename} is already downloaded"))
        return hit
    dest = cache_dir() / entry.filename
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"Cannot create the download folder {dest.parent}: {exc.strerror or exc}. "
                            "Set STYLEDECK_CACHE to a folder you can write to.") from exc
    if cancel is not None:
        cancel.raise_if_cancelled()
    request = urllib.request.Request(entry.url, headers={"User-Agent": _USER_AGENT})
    log.info("downloading %s from %s to %s", entry.name, entry.url, dest)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, atomic_write(dest) as tmp:
            total = int(response.headers.get("Content-Length") or 0)
            if progress is not None:
                progress(Progress(0, total, f"downloading {entry.filename}"))
            done, sha256 = _stream(entry, response, tmp, total, progress, cancel, chunk_bytes)
            _check_payload(entry, tmp, done, total, sha256)
    except StyleDeckError:
        raise                                   # Cancelled, DownloadError: already say what happened
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError, ssl.SSLError) as exc:
        raise _unreachable(entry, exc) from exc
    except OSError as exc:                      # what is left is the disk: full, read-only, ...
        raise DownloadError(f"Could not save {entry.name} to {dest.parent}: {exc.strerror or exc}. "
                            "Free some space or set STYLEDECK_CACHE to another folder.") from exc
    log.info("downloaded %s (%d bytes)", dest, dest.stat().st_size)
    return dest
