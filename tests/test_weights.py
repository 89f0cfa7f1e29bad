"""Weights resolution order, with fake folders and a tarball served on 127.0.0.1."""

from __future__ import annotations

import http.server
import io
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from functools import partial
from pathlib import Path

import pytest

from reranker import Reranker, Settings
from reranker.config import HUB_MODEL_ID, HUB_REVISION
from reranker.loading.weights import COMPLETE_MARKER, WeightsError, resolve_weights

ROOT = Path(__file__).resolve().parent.parent


def fake_model(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


class TarballServer:
    """Serves files from a folder on 127.0.0.1 and counts the requests."""

    def __init__(self, folder: Path):
        self.hits = 0
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                server.hits += 1
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), partial(Handler, directory=str(folder))
        )
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self):
        self.httpd.shutdown()


@pytest.fixture(scope="module")
def served(tmp_path_factory, model_dir):
    folder = tmp_path_factory.mktemp("served")
    with tarfile.open(folder / "nested.tar", "w") as tar:
        tar.add(model_dir, arcname="qwen3-reranker")  # one top-level folder
    with tarfile.open(folder / "flat.tar.gz", "w:gz", compresslevel=1) as tar:
        for f in model_dir.iterdir():
            tar.add(f, arcname=f.name)
    with tarfile.open(folder / "empty.tar", "w") as tar:
        info = tarfile.TarInfo("README")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    server = TarballServer(folder)
    yield server
    server.close()


@pytest.fixture
def tarballs(served):
    served.hits = 0
    return served


# A stand-in for the pget the image installs (replicate/pget v0.11.0; this contract is unchanged
# since v0.10.2), keeping the parts of it that download_tarball depends on, with its messages:
# - `pget [flags] <url> <dest>`, exactly two arguments (cmd/root/root.go, validateArgs);
# - an existing <dest> is refused unless -f/--force: "destination <dest> already exists"
#   (pkg/cli/common.go, EnsureDestinationNotExist), printed by cobra as "Error: ...", exit 1;
# - -x/--extract untars the stream (gzip detected) into <dest>, creating it
#   (pkg/extract/tar.go, TarFile: os.MkdirAll);
# - an HTTP status outside 2xx fails: "unexpected http status <url>: 404 Not Found"
#   (pkg/download/buffer.go, DoRequest).
PGET_STANDIN = """#!{python}
import os, sys, tarfile, urllib.error, urllib.request
from pathlib import Path

with open(Path(__file__).with_suffix(".calls"), "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
def fail(message):
    sys.stderr.write("2026-01-01T00:00:00Z | INFO  | [ Initiating ]\\nError: " + message + "\\n")
    sys.exit(1)
extract = force = False
args = []
for a in sys.argv[1:]:
    if a in ("-x", "--extract"):
        extract = True
    elif a in ("-f", "--force"):
        force = True
    elif a.startswith("-"):
        fail("unknown flag: " + a)
    else:
        args.append(a)
if len(args) != 2:
    fail("accepts 2 arg(s), received %d" % len(args))
url, dest = args
if os.path.lexists(dest) and not force:
    fail("destination %s already exists" % dest)
try:
    response = urllib.request.urlopen(url, timeout=30)
except urllib.error.HTTPError as exc:
    fail("unexpected http status %s: %d %s" % (url, exc.code, exc.reason))
except (urllib.error.URLError, ValueError) as exc:
    fail("error executing request for %s: %s" % (url, exc))
with response:
    if extract:
        with tarfile.open(fileobj=response, mode="r|*") as archive:
            os.makedirs(dest, exist_ok=True)
            archive.extractall(dest, filter="data")
    else:
        Path(dest).write_bytes(response.read())
"""


def install_pget_standin(tmp_path: Path, monkeypatch) -> Path:
    """The stand-in first on PATH (any real pget dropped); returns its log of calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    pget = bin_dir / "pget"
    pget.write_text(PGET_STANDIN.replace("{python}", sys.executable))
    pget.chmod(0o755)
    monkeypatch.setenv("PATH", os.pathsep.join([str(bin_dir), *path_without_pget()]))
    return pget.with_suffix(".calls")


def path_without_pget() -> list[str]:
    path = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    return [d for d in path if not (Path(d) / "pget").exists()]


@pytest.fixture(params=["python", "pget"])
def fetcher(request, tmp_path, monkeypatch):
    """How the tarball is fetched: the Python fallback (no pget on PATH) or the pget stand-in
    (first on PATH). Returns the file the stand-in records its calls in (None: Python)."""
    if request.param == "python":
        monkeypatch.setenv("PATH", os.pathsep.join(path_without_pget()))
        return None
    return install_pget_standin(tmp_path, monkeypatch)


def pget_calls(calls: Path | None) -> list[str]:
    return calls.read_text().splitlines() if calls is not None and calls.exists() else []


def test_reranker_model_local_dir_wins(tmp_path, tarballs):
    model = fake_model(tmp_path / "mine")
    fake_model(tmp_path / "weights")
    settings = Settings(model=str(model), weights_url=tarballs.url("nested.tar"))
    got = resolve_weights(settings, workdir=tmp_path)
    assert got.path == str(model) and got.source.startswith("RERANKER_MODEL")
    assert tarballs.hits == 0


@pytest.mark.parametrize("name", ["/does/not/exist", "./relative/missing"])
def test_reranker_model_missing_path_is_an_error(tmp_path, name):
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_weights(Settings(model=name), workdir=tmp_path)


def test_reranker_model_dir_without_config_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match=r"has no config\.json"):
        resolve_weights(Settings(model=str(tmp_path / "empty")), workdir=tmp_path)


def test_baked_weights_folder_comes_before_the_url(tmp_path, tarballs):
    baked = fake_model(tmp_path / "weights")
    got = resolve_weights(Settings(weights_url=tarballs.url("nested.tar")), workdir=tmp_path)
    assert got.path == str(baked) and "baked" in got.source
    assert tarballs.hits == 0


@pytest.mark.parametrize("name", ["nested.tar", "flat.tar.gz"])
def test_url_tarball_is_fetched_once_and_loads(tmp_path, tarballs, reranker, fetcher, name):
    settings = Settings(weights_url=tarballs.url(name), cache_dir=str(tmp_path / "cache"))
    first = resolve_weights(settings, workdir=tmp_path)
    assert first.source.startswith("RERANKER_WEIGHTS_URL") and tarballs.hits == 1
    assert len(pget_calls(fetcher)) == (0 if fetcher is None else 1)
    assert (Path(first.path) / "config.json").is_file()
    again = resolve_weights(settings, workdir=tmp_path)  # a restart that kept its disk
    assert again.path == first.path and tarballs.hits == 1
    loaded = Reranker.load(first.path, device="cpu", settings=Settings())
    assert loaded.score("q", ["a", "b"]) == reranker.score("q", ["a", "b"])


def test_an_interrupted_download_is_redone(tmp_path, tarballs, fetcher):
    settings = Settings(weights_url=tarballs.url("nested.tar"), cache_dir=str(tmp_path / "c"))
    first = Path(resolve_weights(settings, workdir=tmp_path).path)
    top = next(p for p in first.parents if p.name.startswith("url-"))
    (top / COMPLETE_MARKER).unlink()  # as if the process died before finishing
    partial = top.with_name(top.name + ".partial")
    (partial / "half-written").mkdir(parents=True)  # and an earlier attempt left this
    second = resolve_weights(settings, workdir=tmp_path)
    assert tarballs.hits == 2 and (top / COMPLETE_MARKER).is_file()
    assert (Path(second.path) / "config.json").is_file() and not partial.exists()
    assert len(pget_calls(fetcher)) == (0 if fetcher is None else 2)


@pytest.mark.parametrize(
    "name,message",
    [
        ("missing.tar", {"python": "HTTP Error 404", "pget": "unexpected http status .* 404"}),
        ("empty.tar", {"python": "no config.json", "pget": "no config.json"}),
    ],
)
def test_bad_tarballs_are_clear_errors(tmp_path, tarballs, fetcher, name, message):
    settings = Settings(weights_url=tarballs.url(name), cache_dir=str(tmp_path / "c"))
    with pytest.raises(WeightsError, match=message["python" if fetcher is None else "pget"]):
        resolve_weights(settings, workdir=tmp_path)
    leftovers = list((tmp_path / "c").glob("*")) if (tmp_path / "c").exists() else []
    assert not [p for p in leftovers if (p / COMPLETE_MARKER).exists()]


def test_pget_failure_carries_its_stderr(tmp_path, monkeypatch):
    """What pget said reaches the setup log's one line (here: a refused host)."""
    calls = install_pget_standin(tmp_path, monkeypatch)
    url = "http://127.0.0.1:9/weights.tar"  # discard port: connection refused
    settings = Settings(weights_url=url, cache_dir=str(tmp_path / "c"))
    with pytest.raises(WeightsError) as info:
        resolve_weights(settings, workdir=tmp_path)
    message = str(info.value)
    assert message.startswith(f"could not fetch RERANKER_WEIGHTS_URL={url}: pget exited with")
    assert "Error: error executing request for http://127.0.0.1:9/weights.tar" in message
    (call,) = pget_calls(calls)
    assert call.startswith(f"-x {url} {tmp_path / 'c'}") and call.endswith(".partial")
    assert not list((tmp_path / "c").glob("*"))  # nothing half-written is left behind


def test_hub_is_last_at_the_pinned_revision_and_cached(tmp_path, monkeypatch, model_dir):
    """Offline, the hub resolves from its cache: a restart finds the earlier download."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_XET_HIGH_PERFORMANCE", raising=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "cache"
    settings = Settings(cache_dir=str(cache))
    with pytest.raises(WeightsError, match=f"{HUB_MODEL_ID}@{HUB_REVISION}"):
        resolve_weights(settings, workdir=tmp_path)
    assert os.environ["HF_XET_HIGH_PERFORMANCE"] == "1"  # fast transfers, set from Python
    repo = cache / "hub" / ("models--" + HUB_MODEL_ID.replace("/", "--"))
    shutil.copytree(model_dir, repo / "snapshots" / HUB_REVISION)
    got = resolve_weights(settings, workdir=tmp_path)
    assert got.path == str(repo / "snapshots" / HUB_REVISION)
    assert got.source.startswith(f"hub {HUB_MODEL_ID}@")


@pytest.mark.subprocess
def test_download_weights_script_fails_clearly_offline(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "script" / "download-weights"), "--dest", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"download-weights: could not download {HUB_MODEL_ID}@")


@pytest.mark.parametrize("model", [HUB_MODEL_ID, "someone/other-reranker"])
def test_hub_id_model_uses_the_pinned_revision_only_for_the_default(
    tmp_path, monkeypatch, model_dir, model
):
    """RERANKER_MODEL=Qwen/Qwen3-Reranker-8B is the pinned release, not whatever main is now;
    another hub id follows its main branch. Offline: the hub cache holds both commits."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "cache"
    repo = cache / "hub" / ("models--" + model.replace("/", "--"))
    newer = "0" * 40  # a later commit on main
    for commit in (HUB_REVISION, newer):
        shutil.copytree(model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(newer)
    got = resolve_weights(Settings(model=model, cache_dir=str(cache)), workdir=tmp_path)
    want = HUB_REVISION if model == HUB_MODEL_ID else newer
    assert got.path == str(repo / "snapshots" / want)
    assert got.source == f"RERANKER_MODEL (hub id {model})"
