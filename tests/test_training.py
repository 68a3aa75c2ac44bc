import json
import math
from dataclasses import replace

import pytest
import torch

from pixeldiffusion.checkpoint import latest_checkpoint, load_checkpoint
from pixeldiffusion.errors import ConfigError
from pixeldiffusion.training import Interrupted, NonFiniteLoss, Trainer, ema_decay, train


def weights(run_dir):
    tensors, meta = load_checkpoint(latest_checkpoint(run_dir))
    return tensors, meta


def test_ema_halflife_and_rampup():
    assert ema_decay(0, 500, 0.1) == 0.0, "the first step copies the weights"
    assert ema_decay(100, 500, 0.1) == pytest.approx(0.5 ** (1 / 10))
    assert ema_decay(100_000, 500, 0.1) == pytest.approx(0.5 ** (1 / 500))
    assert ema_decay(10**6, 500, 0.1) ** 500 == pytest.approx(0.5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_run_writes_its_files_and_a_resumed_run_continues_exactly(tmp_path, tiny, channels_last):
    cfg = tiny(max_steps=6, checkpoint_every=2, channels_last=channels_last)
    straight = train(cfg, tmp_path / "straight")
    for name in ("config.json", "metrics.jsonl", "samples.png", "denoising.gif"):
        assert (straight.run_dir / name).stat().st_size > 0

    def stop_at_3(trainer):
        if trainer.step == 3:
            trainer._stop_signal = "test"

    with pytest.raises(Interrupted, match="resume with"):
        train(cfg, tmp_path / "resumed", callbacks=(stop_at_3,))
    assert load_checkpoint(latest_checkpoint(tmp_path / "resumed"))[1]["step"] == 3
    train(cfg, tmp_path / "resumed", resume=True)

    a, meta_a = weights(tmp_path / "straight")
    b, meta_b = weights(tmp_path / "resumed")
    assert meta_a["step"] == meta_b["step"] == 6
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "model, EMA and optimizer state identical bit for bit"
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_same_seed_same_run_other_seed_other_run(tmp_path, tiny):
    runs = [train(tiny(seed=s), tmp_path / f"r{i}") for i, s in enumerate((1, 1, 2))]
    w = [weights(r.run_dir)[0]["model/head.2.weight"] for r in runs]
    assert torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])


def test_gradient_accumulation_gives_the_same_step(tmp_path, tiny):
    one = train(tiny(max_steps=2), tmp_path / "one")
    two = train(tiny(max_steps=2, grad_accum=4), tmp_path / "accum")
    a, b = weights(one.run_dir)[0], weights(two.run_dir)[0]
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a if k.startswith("model/"))


def test_extending_a_finished_run(tmp_path, tiny):
    train(tiny(max_steps=2), tmp_path / "run")
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["data"]["condition"] == "class" and cfg["model"]["num_classes"] == 10, "resolved config"
    trainer = Trainer(replace(tiny(), train=replace(tiny().train, max_steps=4)), tmp_path / "run", resume=True)
    assert trainer.step == 2
    trainer.run()
    assert weights(tmp_path / "run")[1]["step"] == 4


def poison_step(k):
    """A callback that puts a NaN into one weight after step k, so that step k + 1 has a NaN loss."""

    def callback(trainer):
        if trainer.step == k:
            with torch.no_grad():
                next(trainer.model.parameters()).view(-1)[0] = float("nan")

    return callback


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, tiny):
    cfg = tiny(max_steps=8, checkpoint_every=2, log_every=3)
    trainer = Trainer(cfg, tmp_path / "run", callbacks=(poison_step(4),))
    with pytest.raises(NonFiniteLoss, match="at step 5; the last good checkpoint is in"):
        trainer.run()
    tensors, meta = weights(tmp_path / "run")
    assert meta["step"] == 4 and all(torch.isfinite(v).all() for v in tensors.values())


def test_a_non_finite_step_is_skipped_on_request(tmp_path, tiny):
    run = tmp_path / "run"
    trainer = Trainer(tiny(max_steps=6, log_every=2, nonfinite="skip"), run)
    draw = trainer.draw

    def nan_batch_at_step_3(step):
        x0, t, eps, cond = draw(step)
        return (x0 * float("nan") if step == 3 else x0), t, eps, cond

    trainer.draw = nan_batch_at_step_3
    trainer.run()
    assert trainer.step == 6 and int(trainer.skipped) == 1
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())
    assert all(torch.isfinite(v).all() for v in trainer.ema.state_dict().values())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("skipped_steps", 0) for r in records] == [0, 1, 1] and all(math.isfinite(r["loss"]) for r in records)


def test_learning_rate_warms_up_then_decays_to_zero(tmp_path, tiny):
    trainer = Trainer(tiny(max_steps=100, warmup_steps=10, lr=1.0), tmp_path / "run")
    lrs = []
    for step in range(100):
        trainer.step = step
        lrs.append(trainer.learning_rate())
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(math.cos(math.pi * 0.09) / 2 + 0.5)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False)) and lrs[-1] < 1e-3


def test_impossible_batch_is_refused(tmp_path, tiny):
    with pytest.raises(ConfigError, match="larger than the dataset"):
        Trainer(tiny(batch_size=4096), tmp_path / "run")
