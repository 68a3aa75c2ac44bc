"""The run's clock and stop requests, agreed by every process.

Each process measures its own training seconds, and SIGINT/SIGTERM set a flag in each process. At agreement
points (every step in a single process, every log_every steps under torchrun, and every step once a time budget
may run out before the next one) the processes take the largest elapsed time and any stop request of any of
them, in one small collective. The learning rate and every stop decision read only the agreed values, so
replicas never take different steps or leave the loop apart.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator

from pixeldiffusion.process import Process


class RunClock:
    def __init__(self, process: Process, *, elapsed: float, budget_s: float | None, agree_every: int, step: int = 0):
        self.process = process
        self.budget_s = budget_s  # the time budget (None: none)
        self.agree_every = 1 if process.world_size == 1 else agree_every
        self.elapsed = elapsed  # agreed training seconds
        self.local = elapsed  # this process's own count
        self.stop_signal: int | None = None  # the agreed stop request (a signal number)
        self._requested: int | None = None
        self._agreed_step = step  # the step of the last agreement (the run's step when it starts)
        self.step_s = 0.0  # agreed seconds per step between the last two agreements

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        """Count the seconds of the enclosed work (one training step) as training time."""
        start = time.perf_counter()
        yield
        self.local += time.perf_counter() - start

    def tick(self, step: int) -> None:
        """After a step: at an agreement point, agree."""
        if step % self.agree_every == 0 or self.ending:
            self.agree(step)

    @property
    def ending(self) -> bool:
        """Whether the budget may run out before the next regular agreement point, judged from agreed values
        only, so that every process judges alike: then each step agrees, and the run stops within a step of it."""
        return self.budget_s is not None and self.elapsed + self.agree_every * self.step_s >= self.budget_s

    def agree(self, step: int | None = None) -> None:
        """Adopt the largest elapsed time and any stop request of all processes (every process must call)."""
        before = self.elapsed
        elapsed, requested = self.process.all_max([self.local, float(self._requested or 0)])
        self.elapsed = self.local = elapsed
        if requested:
            self.stop_signal = int(requested)
        if step is not None and step > self._agreed_step:
            self.step_s = (elapsed - before) / (step - self._agreed_step)
            self._agreed_step = step

    @property
    def out_of_time(self) -> bool:
        return self.budget_s is not None and self.elapsed >= self.budget_s

    def request_stop(self, signum: int, frame=None) -> None:
        self._requested = signum

    @contextlib.contextmanager
    def catching_signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM request a stop instead of killing the process (in the main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self.request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
