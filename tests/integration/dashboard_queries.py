"""The queries of docs/grafana-dashboard.json, with its template variables filled in as
Grafana would, and the check that they hold data in a running cloud.

Grafana is not used here (AGPL, and in none of the registries this project installs from):
tests/e2e/dashboard.py draws these same queries, and the integration test checks them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.integration.prometheus import Prometheus, PromQLError

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
# Grafana's "All" of a multi-value variable is its allValue (`.*`); `.+` is the strict
# choice of a check: a matcher on a label no series has matches nothing.
ANY = ".*"
STRICT_ANY = ".+"
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_GROUPING = re.compile(r"\bby\s*\(([^)]*)\)")
_METRIC = re.compile(r"\bcumulo_\w+")
_LABEL_VALUES = re.compile(r"^label_values\((\w+),\s*(\w+)\)$")


@dataclass(frozen=True)
class Target:
    panel: str
    expr: str  # as written in the dashboard, with its $variables
    legend: str

    def promql(self, rate_interval: str, any_value: str = ANY) -> str:
        """The query Grafana would send with every zone and host chosen."""
        return (self.expr.replace("$__rate_interval", rate_interval)
                .replace("$zone", any_value).replace("$host", any_value))

    def legend_of(self, labels: dict[str, str]) -> str:
        return _LEGEND_LABEL.sub(lambda m: labels.get(m.group(1), ""), self.legend).strip() \
            or self.expr


def load(path: Path = DASHBOARD) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def targets(dashboard: dict[str, Any]) -> list[Target]:
    return [Target(p["title"], t["expr"], t.get("legendFormat", ""))
            for p in dashboard["panels"] for t in p.get("targets", [])]


def _expected_labels(t: Target) -> set[str]:
    """Labels every series of the query must carry: its legend's and its grouping's (`le`
    is consumed by histogram_quantile)."""
    grouped = {name.strip() for g in _GROUPING.findall(t.expr) for name in g.split(",")}
    return (set(_LEGEND_LABEL.findall(t.legend)) | grouped) - {"le", ""}


def _known(metric: str, metadata: dict[str, Any]) -> bool:
    """A series name is exported: itself, or a histogram's _bucket/_count/_sum."""
    base = re.sub(r"_(bucket|count|sum)$", "", metric)
    return metric in metadata or base in metadata


def problems(prom: Prometheus, dashboard: dict[str, Any], rate_interval: str,
             may_be_empty: Iterable[str]) -> list[str]:
    """What is wrong with the dashboard's queries against this Prometheus: a query it
    refuses, a metric nobody exports, a series without a label the panel shows, or no series
    at all (unless the query's legend is in `may_be_empty`). Empty: all is well."""
    empty_ok = set(may_be_empty)
    metadata = prom.metadata()
    found: list[str] = []
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        m = _LABEL_VALUES.match(var["query"])
        if m is None:
            found.append(f"variable {var['name']}: not label_values(metric, label)")
        elif not prom.label_values(m.group(2), m.group(1)):
            found.append(f"variable {var['name']}: no values of {m.group(2)} on {m.group(1)}")
    for t in targets(dashboard):
        where = f"{t.panel!r} {t.legend!r}"
        for metric in _METRIC.findall(t.expr):
            if not _known(metric, metadata):
                found.append(f"{where}: no target exports {metric}")
        try:
            series = prom.query(t.promql(rate_interval, STRICT_ANY))
        except PromQLError as e:
            found.append(f"{where}: {e}")
            continue
        if not series and t.legend not in empty_ok:
            found.append(f"{where}: no series for {t.expr}")
        for s in series:
            missing = _expected_labels(t) - set(s["metric"])
            if missing:
                found.append(f"{where}: a series without {sorted(missing)}: {s['metric']}")
                break
    return found
