"""The benchmark's results: rows, where the CPU went, memory, and other measurements.

A :class:`Report` renders as markdown (printed, and saved as ``bench/results/<UTC>.md``) and
as JSON (``bench/results/<UTC>.json``, everything measured, for comparing runs).

Rows come in two kinds that share one table: load rows (a wrk run: rate, latency, statuses)
and throughput rows with no latency (e.g. extraction, rows/s). Each row may name the row
it is compared with (``baseline``): the API rows compare with the hello-world, an extraction
row would compare with a raw ``COPY``. A row with any non-2xx answer or socket error is
marked invalid: such a figure measures the errors, not the service.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Cores of "other" CPU during a run above which the report says the machine was not quiet.
BUSY_OTHER = 0.3


@dataclass
class Row:
    """One line of the main table."""

    key: str  # unique in the report, e.g. "get_user" or "get_user@cache-off"
    title: str  # e.g. "GET user" or "GET user (cache off)"
    rate: float
    unit: str = "req/s"
    p50_ms: float | None = None
    p99_ms: float | None = None
    non_2xx: int = 0
    socket_errors: int = 0
    requests: int | None = None
    seconds: float | None = None
    baseline: str | None = None  # key of the row this one is a ratio of
    target: float | None = None  # DESIGN.md target for that ratio
    p99_target_ms: float | None = None
    statuses: dict[int, int] = field(default_factory=dict)
    latency_us: dict[str, Any] = field(default_factory=dict)
    cpu_cores: dict[str, float] = field(default_factory=dict)
    # Anything a probe or step measured during this row (e.g. cache hit ratio, outbox lag).
    extra: dict[str, Any] = field(default_factory=dict)
    ratio: float | None = None

    @property
    def valid(self) -> bool:
        return self.non_2xx == 0 and self.socket_errors == 0


@dataclass
class Measurement:
    """A figure that is not a row: seed rate, audit ingest rate, outbox lag, ..."""

    name: str
    value: float
    unit: str
    note: str = ""


@dataclass
class Report:
    """Everything one ``make bench`` run measured."""

    started_at: dt.datetime
    meta: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    memory: dict[str, dict[str, float]] = field(default_factory=dict)
    measurements: list[Measurement] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Further tables: title -> (markdown lines, what the JSON keeps of them).
    tables: dict[str, tuple[list[str], Any]] = field(default_factory=dict)

    def add(self, row: Row) -> Row:
        if any(r.key == row.key for r in self.rows):
            raise ValueError(f"duplicate row {row.key}")
        self.rows.append(row)
        return row

    def compute_ratios(self) -> None:
        """Fill each row's ``ratio`` from its baseline row's rate."""
        by_key = {r.key: r for r in self.rows}
        for row in self.rows:
            base = by_key.get(row.baseline) if row.baseline else None
            row.ratio = row.rate / base.rate if base and base.rate else None

    @property
    def stamp(self) -> str:
        return self.started_at.strftime("%Y%m%dT%H%M%SZ")

    # -- rendering ---------------------------------------------------------------------------

    def markdown(self) -> str:
        self.compute_ratios()
        out = [f"# make bench — {self.started_at.isoformat(timespec='seconds')}", ""]
        if self.meta:
            out += [_meta_line(self.meta), ""]
        if self.rows:
            out += self._main_table() + [""]
        for title, (lines, _) in self.tables.items():
            out += [f"## {title}", ""] + lines + [""]
        invalid = [r.title for r in self.rows if not r.valid]
        if invalid:
            out += [
                f"**Not valid figures** (non-2xx answers or socket errors): {', '.join(invalid)}.",
                "",
            ]
        out += self._status_lines()
        cpu = self._cpu_table()
        if cpu:
            out += [
                "## Where the CPU went (cores busy during each run)", "",
                "CPU seconds per wall second of each component's process tree; kernel = "
                "interrupt work (loopback networking), other = the rest of the machine.", "",
            ] + cpu + [""]  # fmt: skip
            out += [
                "## CPU per request (µs)", "",
                "The same divided by the request rate: what one request costs each component.",
                "",
            ] + self._cpu_table(per_request=True) + [""]  # fmt: skip
        if self.memory:
            out += ["## Peak RSS per Python process kind", "", "| kind | processes | max RSS MB |",
                    "|---|---:|---:|"]  # fmt: skip
            for kind, m in sorted(self.memory.items()):
                out.append(f"| {kind} | {int(m['processes'])} | {m['max_mb']:.1f} |")
            out.append("")
        extras = self._extra_table()
        if extras:
            out += ["## Measured during each run", ""] + extras + [""]
        if self.measurements:
            out += ["## Other measurements", ""]
            out += [f"- {m.name}: {_num(m.value)} {m.unit}" + (f" — {m.note}" if m.note else "")
                    for m in self.measurements] + [""]  # fmt: skip
        notes = self.notes + self._busy_notes()
        if notes:
            out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
        return "\n".join(out)

    def _main_table(self) -> list[str]:
        lines = [
            "| path | rate | p50 ms | p99 ms | non-2xx | errors | ratio | target |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in self.rows:
            ratio = f"{r.ratio:.3f} × {r.baseline}" if r.ratio is not None else ""
            target = []
            if r.target is not None:
                target.append(
                    f"≥ {r.target:g}"
                    + ("" if r.ratio is None else (" ✓" if r.ratio >= r.target else " ✗"))
                )
            if r.p99_target_ms is not None and r.p99_ms is not None:
                target.append(
                    f"p99 ≤ {r.p99_target_ms:g} ms"
                    + (" ✓" if r.p99_ms <= r.p99_target_ms else " ✗")
                )
            title = r.title if r.valid else f"{r.title} **(invalid)**"
            lines.append(
                f"| {title} | {_num(r.rate)} {r.unit} | {_ms(r.p50_ms)} | {_ms(r.p99_ms)} "
                f"| {r.non_2xx} | {r.socket_errors} | {ratio} | {'; '.join(target)} |"
            )
        return lines

    def _status_lines(self) -> list[str]:
        lines = []
        for r in self.rows:
            odd = {s: n for s, n in r.statuses.items() if not 200 <= s < 300}
            if odd:
                lines.append(f"- {r.title}: statuses {dict(sorted(r.statuses.items()))}")
        return lines + ([""] if lines else [])

    def _cpu_table(self, per_request: bool = False) -> list[str]:
        """Cores busy per component kind; or, ``per_request``, CPU µs each request cost."""
        rows = [r for r in self.rows if r.cpu_cores and r.rate]
        if not rows:
            return []
        tail = ["kernel", "other", "idle"]
        # Kinds that did nothing in any run (an idle anonymizer, this driver) only add noise.
        busy = {k for r in rows for k, v in r.cpu_cores.items() if v >= 0.01}
        kinds = sorted(busy - set(tail)) + [t for t in tail if t in busy or t == "idle"]
        if per_request:
            kinds = [k for k in kinds if k not in ("other", "idle")] + ["total"]
        lines = ["| run | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
        for r in rows:
            if per_request:
                us = {k: v * 1e6 / r.rate for k, v in r.cpu_cores.items()}
                us["total"] = sum(v for k, v in us.items() if k not in ("other", "idle"))
                cells = [f"{us[k]:.0f}" if k in us else "" for k in kinds]
            else:
                cells = [f"{r.cpu_cores[k]:.2f}" if k in r.cpu_cores else "" for k in kinds]
            lines.append(f"| {r.title} | " + " | ".join(cells) + " |")
        return lines

    def _extra_table(self) -> list[str]:
        rows = [r for r in self.rows if r.extra]
        names = list(dict.fromkeys(k for r in rows for k in r.extra))
        if not names:
            return []
        lines = ["| run | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for r in rows:
            cells = [_cell(r.extra[n]) if n in r.extra else "" for n in names]
            lines.append(f"| {r.title} | " + " | ".join(cells) + " |")
        return lines

    def _busy_notes(self) -> list[str]:
        busy = [f"{r.title} ({r.cpu_cores['other']:.2f})" for r in self.rows
                if r.cpu_cores.get("other", 0.0) > BUSY_OTHER]  # fmt: skip
        if not busy:
            return []
        return [
            "Cores busy outside the processes measured (another program on the machine?) "
            f"during: {', '.join(busy)}; those figures are lower than on a quiet machine."
        ]

    def as_json(self) -> dict[str, Any]:
        self.compute_ratios()
        return {
            "startedAt": self.started_at.isoformat(),
            "meta": self.meta,
            "rows": [asdict(r) | {"valid": r.valid} for r in self.rows],
            "memory": self.memory,
            "measurements": [asdict(m) for m in self.measurements],
            "notes": self.notes,
            "tables": {title: data for title, (_, data) in self.tables.items()},
        }

    def save(self, folder: Path = RESULTS_DIR) -> tuple[Path, Path]:
        """Write ``<folder>/<UTC stamp>.md`` and ``.json``; return both paths."""
        folder.mkdir(parents=True, exist_ok=True)
        md, js = folder / f"{self.stamp}.md", folder / f"{self.stamp}.json"
        md.write_text(self.markdown() + "\n")
        js.write_text(json.dumps(self.as_json(), indent=2, default=str) + "\n")
        return md, js


def _cell(v: object) -> str:
    return _num(v) if isinstance(v, float) else str(v)


def _num(v: float) -> str:
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"


def _ms(v: float | None) -> str:
    return "" if v is None else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def _meta_line(meta: dict[str, Any]) -> str:
    keys = ("commit", "machine", "load", "stack", "data")
    return "  \n".join(f"{k}: {meta[k]}" for k in keys if k in meta)
