import json
import math
import os
import signal
from dataclasses import replace

import pytest
import torch

from pixeldiffusion.checkpoint import latest_checkpoint, load_checkpoint
from pixeldiffusion.config import with_fields
from pixeldiffusion.data import to_model_range
from pixeldiffusion.errors import PixelDiffusionError
from pixeldiffusion.objectives import draw_times
from pixeldiffusion.seeding import generator, stream_seed
from pixeldiffusion.training import (
    Interrupted,
    NonFiniteLoss,
    Trainer,
    batch_indices,
    ema_decay,
    learning_rate,
    total_steps,
    train,
)
from pixeldiffusion.training.rundir import read_metrics


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
    for name in ("config.json", "metrics.jsonl", "checkpoints/step-00000006.safetensors"):
        assert (straight.run_dir / name).stat().st_size > 0

    def terminate_after_2(run):  # seen after the next step, at the clock's agreement
        if run.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted, match="stopped by SIGTERM at step 3; checkpoint saved, resume with") as stop:
        train(cfg, tmp_path / "resumed", callbacks=(terminate_after_2,))
    assert stop.value.signal_number == signal.SIGTERM
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
    trainer = Trainer(replace(tiny(), length=replace(tiny().length, max_steps=4)), tmp_path / "run", resume=True)
    assert trainer.step == 2
    trainer.run()
    assert weights(tmp_path / "run")[1]["step"] == 4


def poison_step(trainer, k):
    """A callback that puts a NaN into one weight after step k, so that step k + 1 has a NaN loss."""

    def callback(run):
        if run.step == k:
            with torch.no_grad():
                next(trainer.model.parameters()).view(-1)[0] = float("nan")

    return callback


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, tiny):
    cfg = tiny(max_steps=8, checkpoint_every=2, log_every=3)
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.callbacks = (poison_step(trainer, 4),)
    with pytest.raises(NonFiniteLoss, match="at step 5; the last good checkpoint is in"):
        trainer.run()
    tensors, meta = weights(tmp_path / "run")
    assert meta["step"] == 4 and all(torch.isfinite(v).all() for v in tensors.values())


def test_a_non_finite_step_is_skipped_on_request(tmp_path, tiny):
    run = tmp_path / "run"
    trainer = Trainer(tiny(max_steps=6, log_every=2, nonfinite="skip"), run)
    draw = trainer.train_step.draw

    def nan_batch_at_step_3(step):
        batch = draw(step)
        return replace(batch, x0=batch.x0 * float("nan")) if step == 3 else batch

    trainer.train_step.draw = nan_batch_at_step_3
    trainer.run()
    assert trainer.step == 6 and int(trainer.state.skipped) == 1
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())
    assert all(torch.isfinite(v).all() for v in trainer.state.ema.state_dict().values())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("skipped_steps", 0) for r in records] == [0, 1, 1] and all(math.isfinite(r["loss"]) for r in records)


def test_learning_rate_warms_up_then_decays_to_zero():
    lrs = [learning_rate(k, lr=1.0, warmup_steps=10, decay="cosine", total_steps=100) for k in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(math.cos(math.pi * 0.09) / 2 + 0.5)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False)) and lrs[-1] < 1e-3
    halfway_in_time = learning_rate(
        10, lr=1.0, warmup_steps=0, decay="linear", total_steps=None, elapsed=30, budget_s=60
    )
    assert halfway_in_time == pytest.approx(0.5)


def test_linear_decay_follows_its_formula_at_warm_up_middle_and_end():
    """lr(k) = peak * min(1, (k + 1) / warmup) * (1 - k / total)."""

    def lr(k: int) -> float:
        return learning_rate(k, lr=2e-3, warmup_steps=10, decay="linear", total_steps=100)

    assert lr(4) == pytest.approx(2e-3 * 0.5 * 0.96)  # half warmed up, 4% decayed
    assert lr(50) == pytest.approx(1e-3) and lr(99) == pytest.approx(2e-5) and lr(100) == 0.0


def drawn(trainer, steps: int = 4):
    """(the drawn batches, the images and conditions they were drawn from) for the first steps of a run."""
    step, config = trainer.train_step, trainer.config
    batches = [step.draw(k) for k in range(steps)]
    idx = torch.cat([batch_indices(config.seed, k, len(step.images), config.optim.batch_size) for k in range(steps)])
    return batches, step.images[idx], step.cond[idx]


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_condition_dropout_nulls_about_a_fraction_p_of_the_conditions(tmp_path, tiny, p):
    batches, _, labels = drawn(Trainer(tiny(batch_size=512, cond_dropout=p), tmp_path / "run"))
    cond = torch.cat([batch.cond for batch in batches])
    dropped = cond == -1  # the null class
    assert abs(dropped.float().mean().item() - p) < 0.05, dropped.float().mean()
    assert torch.equal(cond[~dropped], labels[~dropped]), "the others keep their labels"


@pytest.mark.parametrize("hflip", [False, True])
def test_horizontal_flips_mirror_about_half_the_images_and_none_when_off(tmp_path, tiny, hflip):
    config = with_fields(tiny(batch_size=512), {"data.hflip": hflip})
    batches, images, _ = drawn(Trainer(config, tmp_path / "run"))
    x0, original = torch.cat([batch.x0 for batch in batches]), to_model_range(images)
    asymmetric = (original != original.flip(-1)).flatten(1).any(1)
    kept = (x0 == original).flatten(1).all(1)
    mirrored = (x0 == original.flip(-1)).flatten(1).all(1) & asymmetric
    assert torch.all(kept | mirrored), "an image is drawn as it is or mirrored"
    share = mirrored.sum().item() / asymmetric.sum().item()
    assert abs(share - 0.5) < 0.05 if hflip else share == 0, share


def test_batches_walk_epoch_permutations_and_may_straddle_them():
    n, B = 10, 4
    drawn = torch.cat([batch_indices(0, k, n, B) for k in range(5)])  # two epochs in 5 steps of 4
    assert sorted(drawn[:10].tolist()) == list(range(10)) and sorted(drawn[10:].tolist()) == list(range(10))
    assert not torch.equal(drawn[:10], drawn[10:]), "each epoch has its own order"
    big = batch_indices(0, 3, 3, 8)  # a dataset smaller than the batch: every image about B / N times
    assert len(big) == 8 and set(big.tolist()) == {0, 1, 2}
    assert (
        total_steps(None, 2.0, 10, 4) == 5
        and total_steps(3, 2.0, 10, 4) == 3
        and total_steps(None, None, 10, 4) is None
    )


def test_lognormal_times_and_adam_beta2_reach_the_step(tmp_path, tiny):
    """--t-sampling lognormal draws each step's t from the "t" stream as draw_times does; --adam-beta2 is AdamW's."""
    config = with_fields(tiny(batch_size=64, adam_beta2=0.99), {"diffusion.t_sampling": "lognormal"})
    trainer = Trainer(config, tmp_path / "run")
    step = trainer.train_step
    for k in range(3):
        expected = draw_times(step.schedule, 64, generator(config.seed, "t", k), sampling="lognormal")
        assert torch.equal(step.draw(k).t, expected)
    assert trainer.state.optimizer.param_groups[0]["betas"] == (0.9, 0.99)


def test_random_streams_are_named_by_purpose():
    seeds = {stream_seed(0, purpose, 5) for purpose in ("t", "noise", "flip", "cond-dropout", "data-order")}
    seeds |= {stream_seed(0, "dropout", 5, rank) for rank in (0, 1)} | {
        stream_seed(0, "noise", 6),
        stream_seed(1, "noise", 5),
    }
    assert len(seeds) == 9, "no two purposes, steps, ranks or seeds share a stream"


def test_a_dataset_smaller_than_the_batch_trains_and_says_so(tmp_path, tiny, capsys):
    trainer = Trainer(tiny(batch_size=4096, max_steps=2), tmp_path / "run")
    trainer.run()
    assert trainer.step == 2 and "fewer than a batch of 4096" in capsys.readouterr().out


def test_a_run_directory_is_locked_while_it_trains(tmp_path, tiny):
    def second_run(run):
        if run.step == 1:
            with pytest.raises(PixelDiffusionError, match="in use by another training process"):
                train(tiny(), tmp_path / "run")

    train(tiny(max_steps=2), tmp_path / "run", callbacks=(second_run,))
    train(tiny(max_steps=3), tmp_path / "run", resume=True)  # free again once the first has ended


def test_resume_tolerates_a_metrics_line_cut_short_by_a_crash(tmp_path, tiny):
    train(tiny(max_steps=2), tmp_path / "run")
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 3, "lo')
    train(tiny(max_steps=4), tmp_path / "run", resume=True)
    assert [r["step"] for r in read_metrics(metrics)] == [1, 2, 3, 4]


def test_sample_every_writes_grids_during_training(tmp_path, tiny):
    train(tiny(max_steps=4, sample_every=2), tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == [
        "step-00000002.png",
        "step-00000004.png",
    ]
