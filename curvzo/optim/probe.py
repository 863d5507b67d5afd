"""The exact probe: the loss at perturbed weights, computed without ever writing the stored weights.

Each module that owns a perturbed tensor (or, in a stack of repeated layers, each layer) gets, for
the length of one closure call, a forward pre-hook that materialises its perturbed weights (θ_b + εz_b
computed in float32, rounded once into a scratch tensor of the weight dtype) and points the parameters
at them, and a forward hook that points them back and drops the scratch. The stored θ is never
touched, so it is bit-identical after any number of probes, in any dtype (optimizers.md §1.3); the
extra memory is one module's (one layer's) weights. Tied weights, owned by several modules, keep their
scratch from the first of them to the end of the forward pass.

Which module owns which tensor comes from ``bind(model)``. A tensor no module of the bound model owns
(a plain tensor, or no model bound) is materialised for the whole closure. A parameter that the
forward reads outside its owner's own forward would silently escape the perturbation: the first
probes that perturb it watch every torch call and raise one clear line if that happens.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Sequence

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from curvzo.errors import ConfigError
from curvzo.optim.blocks import Block

PROBES = ("exact", "inplace")

#: ``write([(block, out), ...])`` fills each flat ``out`` (the weight dtype) with the perturbed θ_b.
WriteFn = Callable[[list[tuple[Block, torch.Tensor]]], None]


class ExactProbe:
    """Evaluates closures at perturbed weights; see the module docstring."""

    def __init__(self) -> None:
        self._modules: list[tuple[torch.nn.Module, list[Block]]] = []
        self._owned: set[int] = set()
        self._tied: set[int] = set()  # blocks owned by several units (an embedding tied to the LM head)
        self._unchecked: set[int] = set()  # owned blocks no probe has watched yet
        self._arena = _Arena()

    def bind(self, model: torch.nn.Module, blocks: Sequence[Block]) -> None:
        """Record which unit of ``model`` owns which blocks (tied weights: several units).

        A unit is the module that owns a tensor, or, inside a stack of repeated modules (an
        ``nn.ModuleList``, e.g. a transformer's decoder layers), the whole repeated module: a layer's
        tensors are materialised together before the layer runs, which costs one layer's weights and
        hands the drawing threads a few large batches of work instead of many small ones.
        """
        by_param = {id(b.param): b for b in blocks}
        names = dict(model.named_modules())
        stacked = {f"{name}.{child}" if name else child for name, module in names.items()
                   if isinstance(module, torch.nn.ModuleList) for child, _ in module.named_children()}
        units: dict[str, list[Block]] = {}
        for name, module in names.items():
            owned = [by_param[id(p)] for p in module._parameters.values() if p is not None and id(p) in by_param]
            if owned:
                unit = next((prefix for prefix in _prefixes(name) if prefix in stacked), name)
                units.setdefault(unit, []).extend(b for b in owned if b not in units.get(unit, []))
        self._modules = [(names[unit], owned) for unit, owned in units.items()]
        owners = Counter(b.index for _, owned in self._modules for b in owned)
        self._owned, self._tied = set(owners), {i for i, count in owners.items() if count > 1}
        self._unchecked = set(self._owned)

    def unit_bytes(self) -> int:
        """What a probe adds to inference memory: the largest unit's untied weights plus every tied tensor."""
        def size(blocks):
            return sum(b.param.numel() * b.param.element_size() for b in blocks)
        tied = {b.index: b for _, owned in self._modules for b in owned if b.index in self._tied}
        return max((size([b for b in owned if b.index not in self._tied]) for _, owned in self._modules),
                   default=0) + size(tied.values())

    def loss(self, closure: Callable[[], torch.Tensor], blocks: Sequence[Block], write: WriteFn) -> torch.Tensor:
        """``closure()`` with every block in ``blocks`` perturbed as ``write`` says; θ is left as it was."""
        session = _Session(write, self._arena, self._tied)
        perturbed = {b.index for b in blocks}
        handles = []
        try:
            unowned = [block for block in blocks if block.index not in self._owned]
            if unowned:
                session.enter(unowned)  # no owning module: perturbed for the whole closure
            for module, owned in self._modules:
                mine = [b for b in owned if b.index in perturbed]
                if mine:
                    handles.append(module.register_forward_pre_hook(session.pre_hook(mine)))
                    handles.append(module.register_forward_hook(session.post_hook(mine), always_call=True))
            watched = [b for b in blocks if b.index in self._unchecked]
            if not watched:
                return closure()
            with _EscapeWatch(watched, session) as watch:
                loss = closure()
            watch.raise_if_escaped()
            self._unchecked -= session.entered  # watched through a real forward pass (a replay runs none)
            return loss
        finally:
            for handle in handles:
                handle.remove()
            session.close()


class _Arena:
    """Scratch memory reused across units and probes: one flat buffer per (dtype, device), which grows to
    the largest unit's weights, and one buffer per tied tensor."""

    def __init__(self) -> None:
        self.free: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
        self.tied: dict[int, torch.Tensor] = {}

    def take(self, dtype: torch.dtype, device: torch.device, numel: int) -> torch.Tensor:
        buf = self.free.pop((dtype, device), None)
        if buf is None or buf.numel() < numel:
            del buf  # replaced, not kept beside the bigger one
            with torch.inference_mode(False):  # usable both inside and outside inference mode
                buf = torch.empty(numel, dtype=dtype, device=device)
        return buf

    def give(self, buf: torch.Tensor) -> None:
        key = (buf.dtype, buf.device)
        kept = self.free.get(key)
        if kept is None or kept.numel() < buf.numel():
            self.free[key] = buf

    def tied_buffer(self, block: Block) -> torch.Tensor:
        """The scratch of a tied block: the same buffer every probe (no fresh pages each time)."""
        buf = self.tied.get(block.index)
        if buf is None:
            with torch.inference_mode(False):
                buf = self.tied[block.index] = torch.empty(block.param.numel(), dtype=block.param.dtype,
                                                           device=block.param.device)
        return buf


class _Session:
    """One closure call: which blocks currently point at their scratch, and the scratch itself.

    A tied block keeps its perturbed weights from its first unit to the end of the closure, so a forward
    pass draws its z once (SmolLM2's embedding is 21 % of the model), for the memory of one tensor."""

    def __init__(self, write: WriteFn, arena: _Arena, tied: set[int]) -> None:
        self.write, self.arena, self.tied = write, arena, tied
        self.stored: dict[int, tuple[Block, torch.Tensor]] = {}
        self.written: set[int] = set()  # tied blocks whose scratch holds this probe's weights
        self.depth: Counter = Counter()
        self.units: list[list[torch.Tensor]] = []  # the arena buffers of the units now running, innermost last
        self.entered: set[int] = set()  # blocks whose module ran
        self.materializing = False  # read by the escape watch: our own reads of θ are not escapes

    def enter(self, blocks: list[Block]) -> None:
        """Point ``blocks`` at their perturbed weights, materialised into one arena buffer per dtype."""
        self.materializing = True
        try:
            fresh = [b for b in blocks if self.depth[b.index] == 0]  # a block already pointing at scratch stays
            for block in blocks:
                self.depth[block.index] += 1
                self.entered.add(block.index)
            taken: list[torch.Tensor] = []
            pairs: list[tuple[Block, torch.Tensor]] = []  # to write now
            outs: list[tuple[Block, torch.Tensor]] = []  # to point at
            for (dtype, device), group in _by_kind([b for b in fresh if b.index not in self.tied]).items():
                buf = self.arena.take(dtype, device, sum(b.param.numel() for b in group))
                taken.append(buf)
                offset = 0
                for block in group:
                    pairs.append((block, buf[offset:offset + block.param.numel()]))
                    offset += block.param.numel()
            outs += pairs
            for block in (b for b in fresh if b.index in self.tied):
                out = self.arena.tied_buffer(block)
                if block.index not in self.written:
                    pairs.append((block, out))
                    self.written.add(block.index)
                outs.append((block, out))
            self.write(pairs)  # the whole unit in one hand-over to the drawing threads
            for block, out in outs:
                self.stored[block.index] = (block, block.param.data)
                block.param.data = out.view_as(block.param)
            self.units.append(taken)
        finally:
            self.materializing = False

    def exit(self, blocks: list[Block]) -> None:
        self.materializing = True
        try:
            for block in blocks:
                self.depth[block.index] -= 1
                if self.depth[block.index] == 0:
                    stored_block, data = self.stored.pop(block.index)
                    stored_block.param.data = data
            for buf in self.units.pop():
                self.arena.give(buf)
        finally:
            self.materializing = False

    def pre_hook(self, blocks: list[Block]):
        def hook(module, args):
            self.enter(blocks)
        return hook

    def post_hook(self, blocks: list[Block]):
        def hook(module, args, output):
            self.exit(blocks)
        return hook

    def close(self) -> None:
        for block, data in self.stored.values():
            block.param.data = data
        self.stored.clear()
        for taken in self.units:
            for buf in taken:
                self.arena.give(buf)
        self.units.clear()
        self.depth.clear()


def _by_kind(blocks: list[Block]) -> dict[tuple[torch.dtype, torch.device], list[Block]]:
    groups: dict[tuple[torch.dtype, torch.device], list[Block]] = {}
    for block in blocks:
        groups.setdefault((block.param.dtype, block.param.device), []).append(block)
    return groups


# Tensor methods that read metadata, not values: a module may ask any parameter for these.
_METADATA = {"size", "dim", "numel", "nelement", "ndimension", "stride", "storage_offset", "data_ptr",
             "element_size", "is_contiguous", "is_floating_point", "is_complex", "get_device", "untyped_storage",
             "__len__", "__hash__", "__eq__", "__bool__", "requires_grad_", "__repr__", "__format__"}


class _EscapeWatch(TorchFunctionMode):
    """Records every torch function that reads the stored values of a perturbed block while a probe runs.

    A function mode (not a dispatch mode, under which kernels take other paths: a SmolLM2 forward's
    peak memory rose by 370 MB) sees each call with the tensors as passed; inside the owner's forward
    the parameter points at its scratch, so a call that still touches the stored storage is an escape.
    """

    def __init__(self, blocks: list[Block], session: _Session) -> None:
        super().__init__()
        self.session = session
        self.ranges = sorted(((_byte_range(b.param.data), b) for b in blocks if b.param.numel() > 0),
                             key=lambda item: item[0])
        self.starts = [start for (start, _), _ in self.ranges]
        self.escaped: tuple[Block, str] | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if self.escaped is None and not self.session.materializing and name != "__get__" and name not in _METADATA:
            for arg in tree_leaves((args, kwargs)):
                block = self._stored_block(arg) if isinstance(arg, torch.Tensor) else None
                if block is not None:
                    self.escaped = (block, name)
                    break
        return func(*args, **(kwargs or {}))

    def _stored_block(self, tensor: torch.Tensor) -> Block | None:
        """The block whose stored weights ``tensor`` overlaps in memory, if any."""
        try:
            lo, hi = _byte_range(tensor)
        except (RuntimeError, NotImplementedError):  # no storage (sparse, meta): not weights
            return None
        i = bisect.bisect_left(self.starts, hi) - 1  # the last block starting below hi (blocks do not overlap)
        if i >= 0 and lo < self.ranges[i][0][1]:
            return self.ranges[i][1]
        return None

    def raise_if_escaped(self) -> None:
        if self.escaped is not None:
            block, op = self.escaped
            raise ConfigError(
                f"optimizer.probe=exact cannot perturb {block.name}: the forward reads it outside its own module's "
                f"forward ({op}), so the probe would see unperturbed weights; use optimizer.probe=inplace")


def _prefixes(name: str) -> list[str]:
    """'a.b.c' -> ['a', 'a.b', 'a.b.c']: the outermost first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)] if name else []


def _byte_range(tensor: torch.Tensor) -> tuple[int, int]:
    """[first, last) byte addresses a strided tensor can touch."""
    if tensor.numel() == 0:
        return 0, 0
    start = tensor.data_ptr()
    extent = 1 + sum((size - 1) * abs(stride) for size, stride in zip(tensor.shape, tensor.stride()))
    return start, start + extent * tensor.element_size()
