"""Routing tables: rules that choose a kernel by M, first match wins.

The registry knows only the generic part of a rule: its ``name``, the
``kernel`` it names, and the ``when`` conditions on M (``m``,
``m_multiple_of``, ``m_min``, ``m_max``; all must hold). Everything else in a
rule (tiles, warps, padding) belongs to the backend, which subclasses
:class:`RoutingRule` and reads its own keys in the ``parse_rule`` callback of
:func:`parse_routing`. A table must route every M >= 1 and every rule must be
reachable; :func:`check_routing` proves both exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from .errors import ConfigError
from .schema import Section

CONDITION_KEYS = ("m", "m_multiple_of", "m_min", "m_max")
RULE_KEYS = ("name", "when", "kernel")
MAX_ROUTING_PERIOD = 1 << 16  # largest lcm of m_multiple_of values check_routing accepts


@dataclass(frozen=True)
class RoutingRule:
    """One row of a routing table: a condition on M and the kernel to use."""

    name: str
    kernel: str
    m: int | None = None
    m_multiple_of: int | None = None
    m_min: int | None = None
    m_max: int | None = None

    def matches(self, m: int) -> bool:
        return ((self.m is None or m == self.m)
                and (self.m_multiple_of is None or m % self.m_multiple_of == 0)
                and (self.m_min is None or m >= self.m_min)
                and (self.m_max is None or m <= self.m_max))


def parse_routing(section: Section, parse_rule: Callable[[Section, dict], RoutingRule],
                  key: str = "routing") -> tuple[RoutingRule, ...]:
    """Read the list at ``section[key]`` (empty tuple when absent).

    ``parse_rule(rule, common)`` gets each rule as a :class:`Section` and the
    generic fields already read (``name``, ``kernel`` and the conditions); it
    checks the rule's keys (``RULE_KEYS`` plus its own) and returns the rule.
    """
    items = section.get_list(key)
    if items is None:
        return ()
    rules = []
    list_source = section.source(key)    # a layer replaces a routing list whole
    for i, item in enumerate(items):
        rule = Section(item, f"{section.key(key)}[{i}]", lambda _k: list_source)
        if "kernel" not in rule.data:
            raise rule.error("kernel", "missing (every rule names its kernel)")
        common = {"name": rule.get_str("name", f"rule{i}"), "kernel": rule.get_str("kernel")}
        if "when" in rule.data:
            when = rule.sub("when")
            when.check_keys(CONDITION_KEYS)
            for cond in CONDITION_KEYS:
                if cond in when:
                    common[cond] = when.get_int(cond, minimum=1)
        rules.append(parse_rule(rule, common))
    rules = tuple(rules)
    check_routing(rules, section.source(key), section.key(key))
    return rules


def check_routing(rules: tuple[RoutingRule, ...], source: str, path: str) -> None:
    """Every M >= 1 must be routed, and every rule must be reachable.

    Conditions are equalities, bounds and divisibility. The bounds cut
    [1, inf) into segments; inside one segment the same rules are in range and
    matching repeats with period lcm(their multiples), so the first
    min(segment length, period) values of each segment decide both questions
    exactly, however large the bounds are.
    """
    if not rules:
        return
    names = [r.name for r in rules]
    for i, name in enumerate(names):
        if names.index(name) != i:
            raise ConfigError(source, f"{path}[{i}].name", f"duplicate rule name {name!r}")
    spans = []  # (lo, hi) of each rule's bounds; hi None = unbounded
    for i, r in enumerate(rules):
        lows = [v for v in (r.m, r.m_min) if v is not None]
        highs = [v for v in (r.m, r.m_max) if v is not None]
        lo, hi = max(lows, default=1), min(highs, default=None)
        if hi is not None and lo > hi:
            raise ConfigError(source, f"{path}[{i}].when",
                              f"m={r.m}, m_min={r.m_min}, m_max={r.m_max}: the rule can never match")
        spans.append((lo, hi))
    cuts = sorted({1} | {lo for lo, _ in spans} | {hi + 1 for _, hi in spans if hi is not None})
    reached = [False] * len(rules)
    for j, start in enumerate(cuts):
        end = cuts[j + 1] - 1 if j + 1 < len(cuts) else None
        live = [i for i, (lo, hi) in enumerate(spans) if lo <= start and (hi is None or hi >= start)]
        period = math.lcm(*[rules[i].m_multiple_of or 1 for i in live] or [1])
        count = period if end is None else min(end - start + 1, period)
        if count > MAX_ROUTING_PERIOD:
            raise ConfigError(source, path, f"the m_multiple_of values of rules "
                                            f"{', '.join(repr(rules[i].name) for i in live)} have lcm {period}; "
                                            f"at most {MAX_ROUTING_PERIOD} is supported (use powers of two)")
        for m in range(start, start + count):
            for i in live:
                if rules[i].matches(m):
                    reached[i] = True
                    break
            else:
                raise ConfigError(source, path, f"no rule matches M={m}; end the table with a rule "
                                                "that has no 'when' condition")
    for i, ok in enumerate(reached):
        if not ok:
            raise ConfigError(source, f"{path}[{i}]",
                              f"rule {rules[i].name!r} is unreachable: earlier rules match every M it matches")
