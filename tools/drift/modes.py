"""The modes: a name -> the dtype to load and extra ``Settings`` fields, and whether a run can
load a mode (its ``Settings`` fields exist, its device is new enough)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from reranker.config import Settings


@dataclass(frozen=True)
class Mode:
    """How to load a mode: ``Reranker.load(dtype=...)`` with ``replace(settings, **settings)``."""

    dtype: str | None  # None: what Reranker.load picks under the settings (as a deployment does)
    settings: Mapping[str, Any] = field(default_factory=dict)
    cuda_capability: tuple[int, int] | None = None  # None: any device; else CUDA, at least this


REFERENCE = "float32"
MODES: dict[str, Mode] = {
    "float32": Mode("float32"),
    "float16": Mode("float16"),
    "bfloat16": Mode("bfloat16"),
    # FP8 tensor cores: Ada (8.9) and Hopper (9.0) on. Skipped until Settings has the field.
    "fp8": Mode(None, {"quantization": "fp8"}, cuda_capability=(8, 9)),
}
DEFAULT_MODES = ("float16", "bfloat16")


def mode_settings(base: Settings, name: str, table: Mapping[str, Mode]) -> Settings | str:
    """The settings mode ``name`` loads under, or why it cannot run with this ``Settings``.

    Every field some mode of ``table`` sets is reset to its default in the modes that do not
    set it, so that e.g. ``RERANKER_QUANTIZATION=fp8`` in the environment does not quantize the
    float32 reference.
    """
    known = {f.name: f for f in fields(Settings)}
    missing = [f for f in table[name].settings if f not in known]
    if missing:
        return f"needs Settings.{missing[0]}, which this version of reranker does not have"
    neutral = {f: known[f].default for m in table.values() for f in m.settings if f in known}
    settings = replace(base, **{**neutral, **table[name].settings})
    settings.validate()
    return settings


def device_problem(mode: Mode, device: str) -> str | None:
    """Why ``device`` cannot run ``mode``, or None."""
    if mode.cuda_capability is None:
        return None
    import torch

    need = ".".join(map(str, mode.cuda_capability))
    if torch.device(device).type != "cuda":
        return f"needs a CUDA GPU of compute capability {need} or newer; this run is on {device}"
    capability = torch.cuda.get_device_capability(torch.device(device))
    if capability < mode.cuda_capability:
        name = torch.cuda.get_device_name(torch.device(device))
        have = ".".join(map(str, capability))
        return f"needs compute capability {need} or newer; {name} has {have}"
    return None


def parse_modes(text: str, table: Mapping[str, Mode] = MODES) -> list[str]:
    """``--modes``: comma-separated names from ``table``, in order, each once."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise ValueError(f"--modes: name at least one of {', '.join(table)}")
    for name in names:
        if name not in table:
            raise ValueError(f"--modes: unknown mode {name!r}; known: {', '.join(table)}")
    return list(dict.fromkeys(names))
