"""What the backends' weight preparation shares: the int32 accumulator bound,
padding helpers, and the bounded cache that owns prepared weights."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Any, Callable

import torch

from .packed import UnpackedWeight

INT32_MAX = 2**31 - 1
SYMMETRIC_ACT_MAX = 127   # |q| of symmetric int8 activations
PYTORCH_ACT_MAX = 255      # |q - zp| of PyTorch's uint8 activations


def round_up(v: int, multiple: int) -> int:
    return -(-v // multiple) * multiple


def check_accumulator_bound(w: UnpackedWeight, act_max: int, op: str) -> torch.Tensor:
    """Raise unless ``K x act_max x max|w - zero_point|`` fits an int32 sum exactly;
    return the centered weight ``w - zero_point`` (int32, [N, K])."""
    n, k = w.w_int8.shape
    centered = w.w_int8.to(torch.int32) - w.zero_point[:, None]
    centered_max = int(centered.abs().max()) if n and k else 0
    if k * act_max * centered_max > INT32_MAX:
        raise ValueError(
            f"{op}: K={k} is too large for an exact int32 accumulator with this weight "
            f"(K x {act_max} x max|w - zero_point| = {k} x {act_max} x {centered_max} > 2**31 - 1); "
            f"the largest K for it is {INT32_MAX // (act_max * max(centered_max, 1))}")
    return centered


def pad_vector(v: torch.Tensor | None, length: int, dtype) -> torch.Tensor | None:
    """``v`` zero-padded to ``length`` (per-channel vectors padded to whole tiles)."""
    if v is None:
        return None
    out = torch.zeros(length, dtype=dtype)
    out[:v.shape[0]] = v
    return out


class _Entry:
    __slots__ = ("packed", "prepared", "nbytes")

    def __init__(self, packed: Any, prepared: Any):
        self.packed = packed          # strong reference: pins the address the key is made of
        self.prepared = prepared
        self.nbytes = prepared.nbytes


class WeightCache:
    """LRU cache of prepared weights (anything with ``nbytes``), bounded by ``max_bytes``.

    Keyed on ``hash(W_prepack)``: the address of the C++ packed-params object,
    stable across the new Python wrapper the dispatcher makes on every call.
    Each entry holds a strong reference to that object, so the address cannot
    be reused by another weight while the entry lives: a hit is never stale.
    Entries made through the module fast path are also dropped when their
    module's packed params are garbage-collected.

    A weight larger than ``max_bytes`` is prepared for the call and not kept.
    """

    def __init__(self, max_bytes: int, prepare: Callable[[Any, tuple, str], Any]):
        self.max_bytes = max_bytes
        self._prepare = prepare
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._watched: weakref.WeakSet = weakref.WeakSet()   # owners with a finalizer
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, packed: Any, spec: tuple, op: str, owner: Any = None) -> Any:
        """The prepared weight for ``packed`` under ``spec`` (a hashable tuple the
        ``prepare`` callable understands, e.g. the tile layout).

        ``owner``: an object whose lifetime bounds the weight's (the module's
        packed params); its collection drops the entry.
        """
        key = (hash(packed), spec)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry.prepared
            self.misses += 1
        # Prepare outside the lock (slow: unpack + tiling); a concurrent miss on
        # the same weight prepares it twice and keeps one.
        prepared = self._prepare(packed, spec, op)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                return entry.prepared
            if prepared.nbytes <= self.max_bytes:
                self._entries[key] = _Entry(packed, prepared)
                self._bytes += prepared.nbytes
                while self._bytes > self.max_bytes:
                    self._evict_oldest()
                if owner is not None and owner not in self._watched:
                    self._watched.add(owner)
                    weakref.finalize(owner, self._discard, packed)
        return prepared

    def _evict_oldest(self) -> None:
        _, entry = self._entries.popitem(last=False)
        self._bytes -= entry.nbytes
        self.evictions += 1

    def _discard(self, packed: Any) -> None:
        with self._lock:
            for key in [k for k, e in self._entries.items() if e.packed is packed]:
                self._bytes -= self._entries.pop(key).nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._entries), "bytes": self._bytes, "max_bytes": self.max_bytes,
                    "hits": self.hits, "misses": self.misses, "evictions": self.evictions}
