"""When a ``dot`` rule may be re-routed to the dot-free kernel: only when the
compiler rejected ``tl.dot`` for its tile sizes, and only for decode tiles.

Triton-CPU checks ``tl.dot`` operand shapes against its backend's
``min_dot_size`` in the front end (``semantic.dot``): an ``AssertionError``
"Input shapes should have M >= 4, N >= 4 and K >= 4" (upstream ``legacy``;
(1, 4, 4) or (1, 1, 1) in newer builds), which the code generator wraps in a
``CompilationError`` whose first line is only the source position ("at 72:18:").
Any other failure (a type error, a crash in code generation) is the kernel's or
the compiler's bug and must surface, not be hidden behind a slower variant that
may itself compile for many minutes (a 64-row gemv took 8.5 minutes on Triton
3.0 once).
"""

from __future__ import annotations

import re

# Tiles with more rows than this are never re-routed: every Triton-CPU build
# measured or reported accepts tl.dot from 4 rows (docs/ARM.md).
MAX_FALLBACK_ROWS = 4
_MIN_DOT = re.compile(r"Input shapes should have M >= (\d+), N >= (\d+) and K >= (\d+)")


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def min_dot_size_rejection(exc: BaseException, block_m: int, block_n: int, block_k: int) -> str | None:
    """The compiler's own words when ``exc`` is its rejection of ``tl.dot`` with
    these tiles (searching the exception and its causes), else ``None``.
    ``None`` too for tiles of more than :data:`MAX_FALLBACK_ROWS` rows."""
    if block_m > MAX_FALLBACK_ROWS:
        return None
    for err in _chain(exc):
        match = _MIN_DOT.search(str(err))
        if match:
            m, n, k = (int(g) for g in match.groups())
            if block_m < m or block_n < n or block_k < k:
                return match.group(0)
    return None


def cause_of(exc: BaseException) -> str:
    """A one-line description of ``exc`` naming its root cause (not "at 72:18:")."""
    root = list(_chain(exc))[-1]
    lines = [line.strip() for line in str(root).splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    return f"{type(root).__name__}: {text}" if text else type(root).__name__
