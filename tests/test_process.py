"""Who a process is, the device it picks, and the clock all processes agree on."""

import signal

import pytest
import torch

from pixeldiffusion.errors import ConfigError
from pixeldiffusion.process import Process, resolve_device
from pixeldiffusion.runtime import use_bf16, use_channels_last, use_compile
from pixeldiffusion.training.clock import RunClock


def test_shares_partition_the_items_in_order():
    for n, world in ((7, 2), (12, 3), (2, 4)):
        shares = [Process(rank=r, world_size=world).share(n) for r in range(world)]
        assert [i for s in shares for i in s] == list(range(n))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_auto_picks_cuda_then_apple_mps_then_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    mps = torch.device("mps")
    assert not use_bf16("auto", mps) and not use_compile(None, mps, 60) and not use_channels_last(None, mps, False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no MPS device"):
        resolve_device("mps")
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        resolve_device("gpu")


class TwoProcesses(Process):
    """Rank 0 of a simulated pair whose other process reports `other` in every agreement."""

    other: list[float] = [0.0, 0.0]

    def all_max(self, values):
        return [max(a, b) for a, b in zip(values, self.other, strict=True)]


def test_the_clock_agrees_on_time_and_stop_requests_only_at_agreement_points():
    process = TwoProcesses(rank=0, world_size=2)
    clock = RunClock(process, elapsed=0.0, budget_s=10.0, agree_every=5)
    process.other = [12.0, float(signal.SIGTERM)]  # the other process is slower and was sent SIGTERM
    clock.tick(4)
    assert clock.elapsed == 0.0 and clock.stop_signal is None and not clock.out_of_time, "between agreement points"
    clock.tick(5)
    assert clock.elapsed == 12.0 and clock.out_of_time and clock.stop_signal == signal.SIGTERM


def test_under_torchrun_the_clock_agrees_every_step_when_the_budget_may_end_before_the_next_point():
    """Agreement points every 50 steps, one second a step, a budget of 120 s: the processes agree at steps 50 and
    100, then, since 50 more steps would pass the budget, at every step; they stop at 120 s, not at step 150."""
    process = TwoProcesses(rank=0, world_size=2)
    process.other = [0.0, 0.0]
    clock = RunClock(process, elapsed=0.0, budget_s=120.0, agree_every=50)
    agreed, step = [], 0
    while not clock.out_of_time:
        step += 1
        clock.local += 1.0
        before = clock.elapsed
        clock.tick(step)
        if clock.elapsed != before:
            agreed.append(step)
    assert agreed[:2] == [50, 100] and agreed[2:] == list(range(101, 121)) and step == 120
    assert clock.step_s == pytest.approx(1.0)
