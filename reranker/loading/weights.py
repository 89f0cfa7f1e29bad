"""Where the weights come from, in order:

1. ``RERANKER_MODEL``: a local directory, or a hub id;
2. a ``weights/`` folder baked into the image (``script/download-weights``);
3. ``RERANKER_WEIGHTS_URL``: a tarball, fetched with ``pget`` (parallel ranges, extracted on
   the fly) when it is on PATH, else streamed by Python, into the cache directory;
4. the Hugging Face hub at the pinned revision, with Xet's high-performance transfer on.

Downloads land in ``RERANKER_CACHE_DIR`` (default ``~/.cache/qwen3-reranker``) and are marked
complete only after they finish, so a restart on a platform that keeps its disk reuses them
and an interrupted download is redone rather than half-loaded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import tarfile
import time
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from ..config import HUB_MODEL_ID, HUB_REVISION, Settings

log = logging.getLogger(__name__)

BAKED_WEIGHTS = Path("weights")
COMPLETE_MARKER = ".complete"


class WeightsError(RuntimeError):
    """The weights could not be found or fetched; the message says where it looked."""


@dataclass(frozen=True)
class ResolvedWeights:
    path: str  # local directory (or hub id, resolved by transformers itself)
    source: str  # which rule chose it, for the setup log
    seconds: float  # time spent fetching (0 when already local)


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "qwen3-reranker"


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def resolve_weights(settings: Settings, *, workdir: Path | None = None) -> ResolvedWeights:
    """Apply the resolution order above; logs and returns the chosen source."""
    started = time.perf_counter()
    base = Path.cwd() if workdir is None else workdir
    cache = Path(settings.cache_dir).expanduser() if settings.cache_dir else default_cache_dir()
    if cache.exists() and not cache.is_dir():
        raise WeightsError(f"RERANKER_CACHE_DIR={settings.cache_dir} is not a directory")
    if settings.model:
        local = Path(settings.model).expanduser()
        if local.exists():
            if not is_model_dir(local):
                raise WeightsError(f"RERANKER_MODEL={settings.model} has no config.json")
            return _found(str(local), "RERANKER_MODEL (local directory)", started)
        if settings.model.startswith((".", "/", "~")):
            raise WeightsError(f"RERANKER_MODEL={settings.model} does not exist")
        revision = settings.hub_revision if settings.model == HUB_MODEL_ID else None
        path = download_from_hub(settings.model, revision, cache)
        return _found(path, f"RERANKER_MODEL (hub id {settings.model})", started)
    baked = base / BAKED_WEIGHTS
    if is_model_dir(baked):
        return _found(str(baked), "weights/ baked into the image", started)
    if settings.weights_url:
        path = download_tarball(settings.weights_url, cache)
        return _found(str(path), f"RERANKER_WEIGHTS_URL ({settings.weights_url})", started)
    try:
        path = download_from_hub(HUB_MODEL_ID, settings.hub_revision, cache)
    except WeightsError as exc:
        if settings.hub_revision == HUB_REVISION:
            raise
        raise WeightsError(f"{exc} (RERANKER_HUB_REVISION={settings.hub_revision})") from exc
    return _found(path, f"hub {HUB_MODEL_ID}@{settings.hub_revision[:12]}", started)


def _found(path: str, source: str, started: float) -> ResolvedWeights:
    resolved = ResolvedWeights(path, source, time.perf_counter() - started)
    log.info("weights: %s -> %s (%.1fs)", source, path, resolved.seconds)
    return resolved


# -- tarball ---------------------------------------------------------------------------------


def download_tarball(url: str, cache: Path) -> Path:
    """Fetch and extract ``url`` once into ``cache``; returns the model directory."""
    target = cache / ("url-" + hashlib.sha256(url.encode()).hexdigest()[:16])
    if (target / COMPLETE_MARKER).is_file():
        log.info("weights: reusing the download of %s in %s", url, target)
        return _model_root(target)
    if target.exists():
        shutil.rmtree(target)  # an earlier download did not finish
    partial = target.with_name(target.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    pget = shutil.which("pget")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if pget:
            _pget_extract(pget, url, partial)
        else:
            log.info("weights: pget not found; downloading %s with Python", url)
            partial.mkdir()
            _stream_extract(url, partial)
    except (OSError, tarfile.TarError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise WeightsError(f"could not fetch RERANKER_WEIGHTS_URL={url}: {exc}") from exc
    _model_root(partial)  # refuse a tarball that holds no model before marking it complete
    (partial / COMPLETE_MARKER).write_text(url)
    partial.rename(target)
    return _model_root(target)


PGET_TAIL_LINES = 5  # of pget's stderr, kept for the error message


def _pget_extract(pget: str, url: str, dest: Path) -> None:
    """``pget -x URL DEST``: parallel ranged download, untarred on the fly into ``DEST``.

    ``DEST`` must not exist: pget refuses an existing destination unless ``--force`` is given
    (replicate/pget ``cmd/root/root.go`` ``runRootCMD`` -> ``pkg/cli/common.go``
    ``EnsureDestinationNotExist``), and its tar extractor creates the folder itself
    (``pkg/extract/tar.go`` ``TarFile``, ``os.MkdirAll``). Its log goes to stderr: passed on
    line by line (progress in the setup log) and its last lines kept for the error.
    """
    with subprocess.Popen(
        [pget, "-x", url, str(dest)],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    ) as proc:
        assert proc.stderr is not None
        tail: deque[str] = deque(maxlen=PGET_TAIL_LINES)
        for line in proc.stderr:
            line = line.rstrip()
            if line:
                log.info("pget: %s", line)
                tail.append(line)
        code = proc.wait()
    if code != 0:
        said = " | ".join(tail) if tail else "no output"
        raise OSError(f"pget exited with status {code}: {said}")


def _stream_extract(url: str, dest: Path) -> None:
    with (
        urllib.request.urlopen(url, timeout=60) as response,
        tarfile.open(fileobj=response, mode="r|*") as archive,
    ):
        archive.extractall(dest, filter="data")


def _model_root(path: Path) -> Path:
    """The folder holding config.json: the tarball's top level or its single subfolder."""
    if is_model_dir(path):
        return path
    subdirs = [p for p in path.iterdir() if p.is_dir()]
    if len(subdirs) == 1 and is_model_dir(subdirs[0]):
        return subdirs[0]
    raise WeightsError(f"the weights tarball has no config.json at its top level ({path})")


# -- hub -------------------------------------------------------------------------------------


MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]


def download_from_hub(
    repo_id: str, revision: str | None, cache: Path, *, local_dir: Path | None = None
) -> str:
    """``snapshot_download`` with Xet's high-performance mode (Cog's ``environment:`` cannot
    set the hub's transfer variables, so they are set here, before the hub reads them).

    Into the hub cache under ``cache`` (reused on restart), or into ``local_dir`` (baking).
    """
    os.environ.setdefault("HF_XET_HIGH_PERFORMANCE", "1")
    import huggingface_hub
    from huggingface_hub import constants

    constants.HF_XET_HIGH_PERFORMANCE = os.environ["HF_XET_HIGH_PERFORMANCE"] == "1"
    try:
        return huggingface_hub.snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=str(cache / "hub"),
            local_dir=None if local_dir is None else str(local_dir),
            allow_patterns=MODEL_FILES,
        )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"could not download {repo_id}@{revision or 'main'} from the hub: {first}"
        ) from exc


# Hub ids as huggingface_hub's validate_repo_id (utils/_validators.py) accepts them, but with
# the namespace required: a bare name that is not a directory is far likelier a mistyped path.
HUB_ID = re.compile(r"(?!.*(--|\.\.))\w(?:[\w.-]{0,94}\w)?/\w(?:[\w.-]{0,94}\w)?", re.ASCII)


def model_argument(model: str) -> str:
    """``--model`` as the loader should get it: an existing directory (``~`` expanded) or a hub
    id ``owner/name``; anything else fails here, not with huggingface_hub's repo-id message."""
    local = os.path.expanduser(model)
    if os.path.isdir(local):
        return local
    if os.path.exists(local):
        raise ValueError(f"--model: not a directory: {model}")
    if HUB_ID.fullmatch(model) and not model.endswith(".git"):
        return model
    raise ValueError(
        f"--model: no such directory: {model} (and not a hub id of the form owner/name)"
    )
