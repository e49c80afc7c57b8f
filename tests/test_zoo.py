"""Tests for the weights zoo; all offline, downloads are served from 127.0.0.1 only."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import shutil
import threading
import urllib.parse
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from fdq.host import zoo


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Private cache, no extra search folders, no proxies, and no URL off 127.0.0.1."""
    home = tmp_path / "fdq_home"
    monkeypatch.setenv("FDQ_HOME", str(home))
    monkeypatch.delenv("FDQ_WEIGHTS_PATH", raising=False)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")

    real_urlopen = urllib.request.urlopen

    def local_only(url, *args, **kwargs):
        host = urllib.parse.urlsplit(url if isinstance(url, str) else url.full_url).hostname
        assert host == "127.0.0.1", f"test tried to reach {url}"
        return real_urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", local_only)
    return home


@pytest.fixture
def weights_dir(shared_dir: Path) -> Path:
    path = shared_dir / "weights"
    if not all((path / e.filename).is_file() for e in zoo.ZOO.values()):
        pytest.skip(f"real weights not found in {path}")
    return path


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """(folder, base URL) of an HTTP server on 127.0.0.1 serving that folder."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _point_slim_at(monkeypatch: pytest.MonkeyPatch, base_url: str) -> zoo.WeightsEntry:
    entry = dataclasses.replace(zoo.ZOO["slim"], url=base_url + zoo.ZOO["slim"].filename)
    monkeypatch.setitem(zoo.ZOO, "slim", entry)
    return entry


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_cache_dir_and_search_path(isolated_env: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    assert zoo.cache_dir() == isolated_env / "weights"
    assert zoo.search_path() == [isolated_env / "weights"]
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("FDQ_WEIGHTS_PATH", os.pathsep.join([str(a), "", str(b)]))
    assert zoo.search_path() == [a, b, isolated_env / "weights"]


def test_sha256_file(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # spans several chunks
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert zoo.sha256_file(path) == _sha(data)


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_fetch_finds_real_weights(name: str, weights_dir: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("FDQ_WEIGHTS_PATH", os.pathsep.join([str(empty), str(weights_dir)]))
    path = zoo.fetch(name)
    assert path == weights_dir / zoo.ZOO[name].filename
    assert path.stat().st_size == zoo.ZOO[name].size
    st = zoo.status(name)
    assert st["path"] == path and st["verified"] is True
    assert st["license"] == "MIT (c) 2019 biubug6"


def test_tampered_copy_rejected(weights_dir: Path, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "tampered"
    folder.mkdir()
    bad = folder / "slim_Final.pth"
    shutil.copyfile(weights_dir / "slim_Final.pth", bad)
    data = bytearray(bad.read_bytes())
    data[1000] ^= 0xFF
    bad.write_bytes(bytes(data))
    # The tampered folder comes first, so it shadows the genuine file.
    monkeypatch.setenv("FDQ_WEIGHTS_PATH", os.pathsep.join([str(folder), str(weights_dir)]))
    with pytest.raises(zoo.ZooError) as info:
        zoo.fetch("slim")
    msg = str(info.value)
    assert zoo.ZOO["slim"].sha256 in msg and _sha(bytes(data)) in msg and str(bad) in msg
    st = zoo.status("slim")
    assert st["path"] == bad and st["verified"] is False


def test_status_not_found() -> None:
    st = zoo.status("rfb")
    assert st["path"] is None and st["verified"] is False
    assert st["filename"] == "RBF_Final.pth" and st["size"] == 1504452


def test_download_good_file(weights_dir: Path, served: tuple[Path, str], isolated_env: Path,
                            monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    root, base = served
    shutil.copyfile(weights_dir / "slim_Final.pth", root / "slim_Final.pth")
    _point_slim_at(monkeypatch, base)
    path = zoo.fetch("slim")
    cache = isolated_env / "weights"
    assert path == cache / "slim_Final.pth"
    assert sorted(os.listdir(cache)) == ["slim_Final.pth"]
    assert zoo.sha256_file(path) == zoo.ZOO["slim"].sha256
    assert capsys.readouterr().err == ""  # no terminal: no progress line
    # A second fetch uses the cached copy; the server no longer has the file.
    (root / "slim_Final.pth").unlink()
    assert zoo.fetch("slim") == path


def test_download_corrupt_file_leaves_nothing(weights_dir: Path, served: tuple[Path, str],
                                              isolated_env: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    root, base = served
    data = bytearray((weights_dir / "slim_Final.pth").read_bytes())
    data[-1] ^= 0x01
    (root / "slim_Final.pth").write_bytes(bytes(data))
    _point_slim_at(monkeypatch, base)
    with pytest.raises(zoo.ZooError) as info:
        zoo.fetch("slim")
    msg = str(info.value)
    assert zoo.ZOO["slim"].sha256 in msg and _sha(bytes(data)) in msg
    assert os.listdir(isolated_env / "weights") == []


def test_download_404_names_url(served: tuple[Path, str], isolated_env: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    _, base = served
    entry = _point_slim_at(monkeypatch, base)
    with pytest.raises(zoo.ZooError) as info:
        zoo.fetch("slim")
    msg = str(info.value)
    assert entry.url in msg and "FDQ_WEIGHTS_PATH" in msg
    assert os.listdir(isolated_env / "weights") == []


def test_unknown_name() -> None:
    with pytest.raises(zoo.ZooError) as info:
        zoo.fetch("nope")
    assert all(name in str(info.value) for name in zoo.ZOO)


def test_resolve_weights(weights_dir: Path, tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FDQ_WEIGHTS_PATH", str(weights_dir))
    own = tmp_path / "my_finetune.pth"
    own.write_bytes(b"not verified: the user's own file")
    assert zoo.resolve_weights("slim", str(own)) == own
    assert zoo.resolve_weights("slim", "rfb") == weights_dir / "RBF_Final.pth"
    assert zoo.resolve_weights("mnet025", None) == weights_dir / "mobilenet0.25_Final.pth"
    with pytest.raises(zoo.ZooError, match="no such weights file or zoo name"):
        zoo.resolve_weights("slim", str(tmp_path / "missing.pth"))
