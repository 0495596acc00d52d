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
    __slots__ = ("packed", "ref", "prepared", "nbytes", "view", "view_key")

    def __init__(self, packed: Any, ref: weakref.ref | None, prepared: Any):
        self.packed = packed          # dispatcher entry: strong reference, pins the address the key is made of
        self.ref = ref                # module-owned entry: weak reference, the entry dies with the object
        self.prepared = prepared
        self.nbytes = prepared.nbytes
        self.view = None              # the owned() dict that also holds it, and its key there
        self.view_key = 0


class WeightCache:
    """Prepared weights (anything with ``nbytes``), at most ``max_bytes`` of them, LRU.

    Keyed on ``hash(W_prepack)``: the address of the C++ packed-params object,
    stable across the new Python wrapper the dispatcher makes on every call. An
    entry must keep that address from being reused by another weight while it
    lives, so that a hit is never stale; it does so in one of two ways:

    * **Dispatcher calls** (``owner=None``): the entry holds a strong reference
      to the object.
    * **Module-owned** (``owner`` given, ``packed`` being the module's own
      packed-params object, the one its ``LinearPackedParams`` holds, or any
      object that lives as long as the weight it names): the entry holds it
      weakly and is dropped the moment it dies, so a weight replaced through
      ``set_weight_bias`` / ``load_state_dict`` frees its prepared copy at once,
      and a collected module frees its own. (An object that cannot be weakly
      referenced is held strongly until ``owner`` is collected.)

    The module fast path reads module-owned entries through :meth:`owned`: a
    plain ``{id(packed): prepared}`` dict per ``spec``, read with no hash of
    the packed weight, no lock and no LRU bookkeeping; its misses go through
    :meth:`get`, and its hits do not refresh the LRU order (over budget, a
    module-owned entry goes in the order it was made; its module re-prepares it
    on its next call). A weight larger than ``max_bytes`` is prepared for the
    call and not kept.
    """

    def __init__(self, max_bytes: int, prepare: Callable[[Any, tuple, str], Any]):
        self.max_bytes = max_bytes
        self._prepare = prepare
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._views: dict[tuple, dict[int, Any]] = {}    # spec -> id(packed) -> prepared (module-owned)
        # Re-entrant: a weakref callback may run (garbage collection) while this thread holds it.
        self._lock = threading.RLock()
        self._watched: weakref.WeakSet = weakref.WeakSet()   # owners with a finalizer
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def owned(self, spec: tuple) -> dict[int, Any]:
        """``{id(packed): prepared}`` of the module-owned entries under ``spec``,
        for the module fast path to read without a lock (only this cache writes
        it). A hit is current: the entry leaves the dict when its packed object
        dies, so no other object can have that id while it is there."""
        with self._lock:
            view = self._views.get(spec)
            if view is None:
                view = self._views[spec] = {}
                for (_, entry_spec), entry in self._entries.items():
                    if entry_spec == spec and entry.ref is not None and entry.ref() is not None:
                        self._show(entry, view, entry.ref())
            return view

    def get(self, packed: Any, spec: tuple, op: str, owner: Any = None) -> Any:
        """The prepared weight for ``packed`` under ``spec`` (a hashable tuple the
        ``prepare`` callable understands, e.g. the tile layout).

        ``owner``: not ``None`` when ``packed`` is an object whose lifetime bounds
        the weight's (a module's own packed params; see the class docs); its
        entry is dropped when ``packed`` (or, if ``packed`` cannot be weakly
        referenced, ``owner``) is collected.
        """
        key = (hash(packed), spec)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                if owner is not None:
                    self._own(key, entry, packed, owner)
                return entry.prepared
            self.misses += 1
        # Prepare outside the lock (slow: unpack + tiling); a concurrent miss on
        # the same weight prepares it twice and keeps one.
        prepared = self._prepare(packed, spec, op)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                if owner is not None:
                    self._own(key, entry, packed, owner)
                return entry.prepared
            if prepared.nbytes <= self.max_bytes:
                entry = self._entries[key] = _Entry(packed, None, prepared)
                self._bytes += prepared.nbytes
                if owner is not None:
                    self._own(key, entry, packed, owner)
                self._evict_over_budget()
        return prepared

    def _own(self, key: tuple, entry: _Entry, packed: Any, owner: Any) -> None:
        """Make ``entry`` owned by ``packed`` (held weakly) and visible in its spec's view."""
        if entry.ref is not None:
            target = entry.ref()
            if target is not None:           # owned already: by this object, or by another wrapper that lives
                if target is packed and entry.view is None:
                    self._show(entry, self._views.get(key[1]), packed)
                return
        try:
            def drop(ref, key=key):
                with self._lock:
                    current = self._entries.get(key)
                    if current is not None and current.ref is ref:
                        self._remove(key)

            entry.ref = weakref.ref(packed, drop)
        except TypeError:                    # cannot be weakly referenced: held until the owner dies
            entry.packed = packed
            if owner not in self._watched:
                self._watched.add(owner)
                weakref.finalize(owner, self._discard, packed)
            return
        entry.packed = None
        self._show(entry, self._views.get(key[1]), packed)

    @staticmethod
    def _show(entry: _Entry, view: dict | None, packed: Any) -> None:
        if view is not None:
            entry.view, entry.view_key = view, id(packed)
            view[id(packed)] = entry.prepared

    def _remove(self, key: tuple) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._bytes -= entry.nbytes
        if entry.view is not None:
            entry.view.pop(entry.view_key, None)
            entry.view = None
        entry.ref = None     # the weakref dies here: its callback cannot fire later

    def _evict_over_budget(self) -> None:
        while self._bytes > self.max_bytes and self._entries:
            self._remove(next(iter(self._entries)))
            self.evictions += 1

    def _discard(self, packed: Any) -> None:
        with self._lock:
            for key in [k for k, e in self._entries.items() if e.packed is packed]:
                self._remove(key)

    def clear(self) -> None:
        with self._lock:
            for key in list(self._entries):
                self._remove(key)
            self._bytes = 0

    def prepared(self) -> list[Any]:
        """Every prepared weight held now."""
        with self._lock:
            return [e.prepared for e in self._entries.values()]

    def stats(self) -> dict[str, int]:
        with self._lock:
            owned = sum(1 for e in self._entries.values() if e.ref is not None)
            return {"entries": len(self._entries), "module_entries": owned, "bytes": self._bytes,
                    "max_bytes": self.max_bytes, "hits": self.hits, "misses": self.misses,
                    "evictions": self.evictions}
