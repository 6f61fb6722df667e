"""One progress display for a whole run: every phase, with an estimate of the time left.

On a terminal, click's bar (with ETA) runs from the first byte read to the report's last figure: reading and
evaluating count the input's bytes twice (two passes), then writing and drawing the report each take a share
of the bar. Elsewhere (a log file, a scheduler), a plain line is printed at each phase and every ``every``
seconds in between, so a log shows how far the run got.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

import click

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar

TAIL_SHARE = 0.1  # of the input's two passes, what writing and the report each count for on the bar


class RunProgress:
    """``advance(n)`` as input bytes are read and evaluated, ``phase(name)`` as the run moves on."""

    def __init__(
        self,
        input_bytes: int,
        tty: bool,
        stream: TextIO | None = None,  # None: the process's stderr at the time the display starts
        every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tail = max(1, int(2 * input_bytes * TAIL_SHARE))
        self.total = max(1, 2 * input_bytes) + 2 * self.tail
        self.done = 0
        self.label = "Reading and evaluating"
        self.stream, self.every, self.clock = stream or sys.stderr, every, clock
        self.started = self.last = clock()
        self._bar: ProgressBar[int] | None = None
        if tty:
            self._bar = click.progressbar(
                length=self.total, label=self.label, file=self.stream, show_pos=False, show_eta=True
            ).__enter__()
        else:
            self._line()

    def advance(self, n: int) -> None:
        self.done = min(self.total - 2 * self.tail, self.done + n)
        if self._bar is not None:
            self._bar.update(n)
        elif self.clock() - self.last >= self.every:
            self._line()

    def phase(self, name: str) -> None:
        """The next phase: ``write`` (the outputs), then ``report``."""
        target = self.total - (2 if name == "write" else 1) * self.tail
        step, self.done = target - self.done, target
        self.label = {"write": "Writing results", "report": "Drawing the report"}.get(name, name)
        if self._bar is not None:
            self._bar.label = self.label
            self._bar.update(max(0, step))
        else:
            self._line()

    def close(self, finished: bool = True) -> None:
        """End the display: full when the run finished; where it stopped otherwise (an error, Ctrl-C)."""
        if self._bar is not None:
            if finished:
                self._bar.update(self.total)
            self._bar.__exit__(None, None, None)
            self._bar = None
        else:
            if finished:
                self.done = self.total
            self.label = "Done" if finished else "Stopped"
            self._line()

    def _line(self) -> None:
        now = self.clock()
        self.last = now
        share = self.done / self.total
        elapsed = now - self.started
        left = f", about {elapsed / share - elapsed:.0f} s left" if 0.02 < share < 1 else ""
        click.echo(f"{self.label}: {share:.0%} ({elapsed:.0f} s{left})", file=self.stream)
