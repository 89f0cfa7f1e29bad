"""Fake CUDA on a machine without a GPU driver: CUDA tensors with shapes, dtypes and no memory.

``torch._subclasses.fake_tensor.FakeTensorMode`` runs every ATen op through its meta kernel
(or the op's fake implementation) with the tensor's *fake* device, so an op with no CUDA
path for its dtypes, or an out-of-range shape, fails as it would on a GPU. Three things stand
between it and running production code unchanged on a host with a CUDA build of torch but no
driver, and :class:`FakeCuda` (a ``TorchFunctionMode``) handles exactly those:

* Python indexing (``x[0]``, ``x[..., a:]``, ``x[idx] = y``) enters
  ``THPVariable_getitem``/``setitem`` (torch/csrc/autograd/python_variable_indexing.cpp),
  which opens a ``c10::OptionalDeviceGuard`` on the tensor's device *before* dispatch; the
  CUDA guard asks the driver for the current device and raises "CUDA driver version is
  insufficient". Those functions first hand tensors with a torch-function override to
  ``handle_torch_function_indexing``, so this mode sees ``Tensor.__getitem__`` and
  ``Tensor.__setitem__`` first and re-expresses them with the ATen view ops the C++ front end
  itself applies (``select``, ``slice``, ``unsqueeze``, ``index``, ``copy_``): the same ops,
  without the guard. Indexing forms production does not use raise ``NotImplementedError``.
* Tensors built from real host tensors (``ids.to("cuda")``) or by factories with
  ``device="cuda"`` must become fake instead of touching the driver: any call with a fake
  argument or a CUDA ``device`` runs inside the FakeTensorMode (``allow_non_fake_inputs``:
  real host tensors become fake constants, torch/_subclasses/fake_tensor.py
  ``validate_and_convert_non_fake_tensors``). Calls on real host tensors alone stay real, so
  the host-side bookkeeping (segment offsets, ``int(lengths.max())``) keeps its values.
* ``scaled_dot_product_attention`` chooses its CUDA kernel (flash, memory-efficient, cuDNN)
  from the device's properties, read from the driver (``_fused_sdp_choice``): on fake CUDA it
  runs as plain masked attention (matmul, softmax, matmul), so the output's
  shape and dtype are checked, not which fused kernel a GPU would take.
* A fake tensor has no values: ``.tolist()`` and ``.item()`` of one give zeros of its shape
  (a FakeTensorMode raises ``DataDependentOutputException`` instead). Whatever production
  decides from device values (the attention self-check's error, a logit's finiteness) is
  therefore *not* tested here: every check passes, every logit is 0.0.

Nothing here is imported by ``reranker``; tests use it (tests/test_fake_cuda.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.nn.attention.bias import CausalBias
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves, tree_map_only

_GETITEM = torch.Tensor.__getitem__
_SETITEM = torch.Tensor.__setitem__
_NO_VALUES = {
    torch.Tensor.tolist,
    torch.Tensor.item,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.__bool__,
}


def _is_fake(x: Any) -> bool:
    return isinstance(x, FakeTensor)


def _names_cuda(x: Any) -> bool:
    if isinstance(x, torch.device):
        return x.type == "cuda"
    return isinstance(x, str) and x.startswith("cuda")


def _nested_zero(shape: torch.Size, dtype: torch.dtype) -> Any:
    zero: Any = False if dtype == torch.bool else (0.0 if dtype.is_floating_point else 0)
    for n in reversed(shape):
        zero = [zero] * n if not isinstance(zero, list) else [list(zero) for _ in range(n)]
    return zero


def apply_index(x: torch.Tensor, index: Any) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """``x[index]`` by ATen view ops: the basic-indexed view, one advanced (integer tensor)
    index if any, and the dimension it applies to."""
    items = index if isinstance(index, tuple) else (index,)
    explicit = sum(1 for i in items if i is not None and i is not Ellipsis)
    out, dim, advanced = x, 0, None
    for item in items:
        if item is Ellipsis:
            dim += x.dim() - explicit
        elif item is None:
            out = torch.ops.aten.unsqueeze.default(out, dim)
            dim += 1
        elif isinstance(item, bool):
            raise NotImplementedError("boolean indices")
        elif isinstance(item, int):
            out = torch.ops.aten.select.int(out, dim, item)
        elif isinstance(item, slice):
            step = 1 if item.step is None else item.step
            out = torch.ops.aten.slice.Tensor(out, dim, item.start, item.stop, step)
            dim += 1
        elif isinstance(item, torch.Tensor) and not item.dtype.is_floating_point:
            if advanced is not None or item.dtype == torch.bool:
                raise NotImplementedError("more than one or boolean tensor indices")
            advanced = (item, dim)
            dim += 1
        else:
            raise NotImplementedError(f"index {type(item).__name__}")
    if advanced is None:
        return out, None, 0
    return out, advanced[0], advanced[1]


def _sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """SDPA by its math kernel: which fused CUDA kernel SDPA picks (``_fused_sdp_choice``,
    and ``CausalBias``'s own choice) reads the device's properties from the driver."""
    if isinstance(attn_mask, CausalBias):
        attn_mask = attn_mask._materialize(q.device)
    if is_causal:
        attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device)
        attn_mask = attn_mask.tril()
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        groups = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(groups, -3), v.repeat_interleave(groups, -3)
    scores = (q @ k.transpose(-1, -2)).float() * (q.shape[-1] ** -0.5 if scale is None else scale)
    if attn_mask is not None:
        scores = scores.masked_fill(attn_mask.logical_not(), float("-inf"))
    return (scores.softmax(-1).to(q.dtype) @ v).to(q.dtype)


def _to(func, t: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``Tensor.to``/``Tensor.cuda`` as ``aten._to_copy`` (the op both dispatch to): their
    Python bindings initialize the CUDA driver before dispatch."""
    device, dtype = t.device, t.dtype
    if func is torch.Tensor.cuda:
        device = torch.device("cuda")
    for a in (*args, kwargs.get("device"), kwargs.get("dtype"), kwargs.get("other")):
        if isinstance(a, torch.dtype):
            dtype = a
        elif isinstance(a, (str, torch.device)):
            device = torch.device(a)
        elif isinstance(a, torch.Tensor):
            device, dtype = a.device, a.dtype
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    if (device, dtype) == (t.device, t.dtype) and not kwargs.get("copy", False):
        return t
    return torch.ops.aten._to_copy.default(t, dtype=dtype, device=device)


class FakeCuda(TorchFunctionMode):
    """Route CUDA work through ``fake_mode`` (module docstring); use :func:`fake_cuda`."""

    def __init__(self, fake_mode: FakeTensorMode) -> None:
        super().__init__()
        self.fake_mode = fake_mode

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves = tree_leaves((args, kwargs))
        fake = any(_is_fake(x) for x in leaves)
        if func in _NO_VALUES and fake:
            zero = _nested_zero(args[0].shape, args[0].dtype)
            if func is torch.Tensor.__float__:
                return float(zero)
            return int(zero) if func is torch.Tensor.__int__ else zero
        if not fake and not any(_names_cuda(x) for x in leaves):
            return func(*args, **kwargs)
        # real tensors become fake first: a real one reaching a CUDA op initializes the driver
        args, kwargs = tree_map_only(torch.Tensor, self._fake, (args, kwargs))
        with self.fake_mode:
            if func is _GETITEM:
                view, idx, dim = apply_index(args[0], args[1])
                if idx is None:
                    return view if view is not args[0] else torch.ops.aten.alias(view)
                return torch.ops.aten.index.Tensor(view, [None] * dim + [idx])
            if func is _SETITEM:
                view, idx, dim = apply_index(args[0], args[1])
                value = args[2]
                if idx is not None:
                    torch.ops.aten.index_put_(view, [None] * dim + [idx], value)
                elif isinstance(value, torch.Tensor):
                    torch.ops.aten.copy_(view, value)
                else:
                    torch.ops.aten.fill_(view, value)
                return None
            if func is F.scaled_dot_product_attention:
                return _sdpa(*args, **kwargs)
            if func is torch.Tensor.__invert__:  # its binding opens a device guard too
                return torch.ops.aten.bitwise_not.default(args[0])
            if func in (torch.Tensor.to, torch.Tensor.cuda):
                return _to(func, *args, **kwargs)
            return func(*args, **kwargs)

    def _fake(self, t: torch.Tensor) -> torch.Tensor:
        if _is_fake(t) or isinstance(t, CausalBias):  # a CausalBias is a mask description
            return t
        return self.fake_mode.from_tensor(t)


@contextmanager
def view_indexing() -> Iterator[None]:
    """Within the block, ``Tensor.__getitem__`` is :func:`apply_index` (ATen view ops).

    For tracing with Dynamo on fake CUDA values: Dynamo runs each node on fake tensors of its
    own ``FakeTensorMode``, outside :class:`FakeCuda`, and a ``getitem`` node there enters
    ``THPVariable_getitem``'s device guard (module docstring): "CUDA driver version is
    insufficient" on torch 2.9.1 (later torch skips the guard for fake tensors, pytorch PR
    #163016). ``Tensor.__getitem__`` is a Python-visible slot, so replacing it reaches every
    index expression, traced or not; the traced graph is unchanged (still ``operator.getitem``).
    """

    def getitem(self: torch.Tensor, index: Any) -> torch.Tensor:
        view, idx, dim = apply_index(self, index)
        if idx is None:
            return view if view is not self else torch.ops.aten.alias(view)
        return torch.ops.aten.index.Tensor(view, [None] * dim + [idx])

    torch.Tensor.__getitem__ = getitem
    try:
        yield
    finally:
        torch.Tensor.__getitem__ = _GETITEM


@contextmanager
def fake_cuda() -> Iterator[FakeTensorMode]:
    """Within the block, CUDA tensors are fake (no driver, no memory); yields the fake mode."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with FakeCuda(mode):
        yield mode


@contextmanager
def passes_under_current_modes(engine: Any) -> Iterator[None]:
    """Within the block, ``engine``'s passes run under the torch modes active here.

    Passes run on the scheduler's replica worker threads (reranker/runtime/scheduler.py),
    and torch keeps its mode stacks per thread (``torch.overrides`` function modes and
    ``TorchDispatchMode``s alike): without this, a pass (or a context pass) on a worker would see no
    :class:`FakeCuda` (and try the real driver) and no op-logging mode. The modes active
    where the block is entered are entered again, outermost first, around each pass.
    """
    from contextlib import ExitStack

    from torch.overrides import _get_current_function_mode_stack
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    modes = [*_get_current_function_mode_stack(), *_get_current_dispatch_mode_stack()]

    def under_modes(method: Any) -> Any:
        def call(*args: Any) -> Any:
            with ExitStack() as stack:
                for mode in modes:
                    stack.enter_context(mode)
                return method(*args)

        return call

    for name in _PASS_METHODS:
        setattr(engine, name, under_modes(getattr(engine, name)))
    try:
        yield
    finally:
        for name in _PASS_METHODS:
            delattr(engine, name)


# What a replica worker calls on its engine (reranker/runtime/scheduler.py ``_pass``).
_PASS_METHODS = ("contexts", "run")
