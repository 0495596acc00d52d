"""Routing by M: a table of rules (data from the config), first match wins."""

from __future__ import annotations

from dataclasses import dataclass

from opregistry.registry import RoutingRule

_ROUTE_MEMO_MAX = 4096


@dataclass(frozen=True)
class Route:
    """What a call with M rows runs: the rule, its tiles, and the rows launched."""

    rule: RoutingRule
    use_dot: bool
    m_run: int          # M, or M padded with zero rows up to a multiple of block_m


class Router:
    """First matching rule wins. Decisions are memoised per M (bounded)."""

    def __init__(self, rules: tuple[RoutingRule, ...], padding: bool):
        if not rules:
            raise ValueError("a routing table needs at least one rule")
        self.rules = rules
        self.padding = padding
        self._memo: dict[int, Route] = {}

    def route(self, m: int) -> Route:
        route = self._memo.get(m)
        if route is None:
            rule = next(r for r in self.rules if r.matches(m))  # coverage checked at config load
            bm = rule.block_m
            m_run = -(-m // bm) * bm if (self.padding and rule.pad_m) else m
            route = Route(rule, rule.kernel == "dot", m_run)
            if len(self._memo) >= _ROUTE_MEMO_MAX:
                self._memo.clear()
            self._memo[m] = route
        return route
