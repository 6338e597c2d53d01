"""Progress output: a tqdm bar on a terminal, a few plain lines in a log.

A tqdm bar redraws itself with carriage returns many times a second; redirected to a
file it leaves every redraw behind (hundreds of kilobytes for one study). So when the
stream is not a terminal, :func:`progress_bar` writes one plain line each time the
count crosses another tenth of the total or a minute has passed, and one at the end.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

LINE_EVERY_S = 60.0
LINE_EVERY_FRACTION = 0.1


class LineProgress:
    """tqdm's ``update`` / ``set_postfix`` / ``set_postfix_str`` / ``close`` as plain
    lines: ``<desc>: <n>/<total> <unit>s (<pct> %), <elapsed> s, <postfix>``."""

    def __init__(self, total: int | None, *, initial: int = 0, desc: str = "",
                 unit: str = "step", file: IO[str] | None = None,
                 every_s: float = LINE_EVERY_S, every_fraction: float = LINE_EVERY_FRACTION,
                 disable: bool = False):
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.file, self.disable = file, disable
        self.every_s, self.every_fraction = every_s, every_fraction
        self.postfix = ""
        self._t0 = self._last_time = time.monotonic()
        self._last_n = initial
        self._closed = False

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _fraction(self, n: int) -> int:
        return int(n / (self.total * self.every_fraction)) if self.total else 0

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if (self._fraction(self.n) > self._fraction(self._last_n)
                or now - self._last_time >= self.every_s):
            self._write(now)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def _write(self, now: float) -> None:
        self._last_time, self._last_n = now, self.n
        if self.disable:
            return
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        tail = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {count} {self.unit}s{pct}, {now - self._t0:.0f} s{tail}",
              file=self.file or sys.stderr, flush=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.n != self._last_n:
                self._write(time.monotonic())


def _is_terminal(file: IO[str] | None) -> bool:
    stream = file or sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_bar(total: int | None, *, initial: int = 0, desc: str = "", unit: str = "step",
                 disable: bool = False, file: IO[str] | None = None) -> Any:
    """A tqdm bar when ``file`` (default stderr) is a terminal, else a
    :class:`LineProgress`; both take ``update``, ``set_postfix``, ``set_postfix_str``
    and ``close``, and work as context managers."""
    if _is_terminal(file):
        from tqdm.auto import tqdm
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=disable,
                    dynamic_ncols=True, file=file)
    return LineProgress(total, initial=initial, desc=desc, unit=unit, disable=disable,
                        file=file)
