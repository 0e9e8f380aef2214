"""Progress of a move on the terminal (stderr): phase, rows copied, rows/s, lag, ETA."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


class Progress:
    """One status line, redrawn in place on a terminal, a line a second otherwise."""

    def __init__(self, out: TextIO = sys.stderr, quiet: bool = False) -> None:
        self.out = out
        self.quiet = quiet
        self.tty = out.isatty()
        self._phase = ""
        self._last = 0.0

    def _emit(self, text: str, force: bool = False) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if self.tty:
            self.out.write("\r\033[K" + text)
        elif force or now - self._last >= 1.0:
            self.out.write(text + "\n")
            self._last = now
        else:
            return
        self.out.flush()

    def phase(self, name: str) -> None:
        if self.tty and self._phase and not self.quiet:
            self.out.write("\n")
        self._phase = name
        self._emit(f"[{name}]", force=True)

    def copy(self, copied: int, total: int, rate: float, lag: int | None) -> None:
        pct = 100.0 * copied / total if total else 100.0
        eta = (total - copied) / rate if rate > 0 and total > copied else 0.0
        self._emit(f"[copy] rows {copied}/{total} ({pct:.0f}%)  {rate:.0f} rows/s  "
                   f"lag {_size(lag)}  ETA {eta:.0f} s")  # fmt: skip

    def lag(self, lag: int | None) -> None:
        self._emit(f"[catchup] lag {_size(lag)}")

    def done(self) -> None:
        if self.tty and not self.quiet:
            self.out.write("\n")
            self.out.flush()
