import pytest
import torch

from pixeldiffusion.models import UNet, preset
from pixeldiffusion.objectives import denoising_loss, draw_times, elementwise_loss, min_snr_weight
from pixeldiffusion.schedule import PREDICTIONS, NoiseSchedule, ScheduleConfig


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_min_snr_weights_the_x0_error_by_min_snr_gamma_for_every_target(prediction):
    """Min-SNR-gamma weights the x0 error min(SNR, gamma): an output error e makes an x0 error c e, c = d x0 / d output
    (taken through the target's own conversion to x0), so w e^2 = min(SNR, gamma) c^2 e^2."""
    schedule = NoiseSchedule.from_config(ScheduleConfig(kind="cosine"))
    t = torch.tensor([1, 50, 300, 600, 999])
    x_t = torch.zeros(len(t), 1, 1, 1, dtype=torch.float64)
    output = torch.zeros_like(x_t, requires_grad=True)
    schedule.x0_eps(x_t, t, output, prediction)[0].sum().backward()
    snr = schedule.snr(t)
    w = min_snr_weight(snr, prediction, gamma=5.0)
    assert torch.allclose(w, snr.clamp(max=5.0) * output.grad.flatten() ** 2, rtol=1e-10)


def test_l2_l1_and_huber_losses_equal_their_closed_forms():
    """Per image, the mean over pixels of d^2, |d| and huber(d) = d^2 / 2 where |d| < 1, else |d| - 1/2."""
    target = torch.full((2, 1, 2, 2), 0.5)
    d = torch.tensor([[0.0, 0.5, 2.0, -3.0], [0.2, -0.2, 1.0, 0.0]]).reshape(2, 1, 2, 2)
    expected = {
        "l2": [(0 + 0.25 + 4 + 9) / 4, (0.04 + 0.04 + 1) / 4],
        "l1": [(0 + 0.5 + 2 + 3) / 4, (0.2 + 0.2 + 1) / 4],
        "huber": [(0 + 0.125 + 1.5 + 2.5) / 4, (0.02 + 0.02 + 0.5) / 4],
    }
    for kind, values in expected.items():
        torch.testing.assert_close(elementwise_loss(target + d, target, kind), torch.tensor(values), msg=kind)


def test_lognormal_times_carry_edm_noise_levels_and_uniform_ones_cover_1_to_T():
    """ln sigma_t of lognormal draws has EDM's mean -1.2 and spread 1.2 (to the grid's rounding); uniform draws
    are every t in 1..T about equally often."""
    schedule = NoiseSchedule.from_config()
    t = draw_times(schedule, 200_000, torch.Generator().manual_seed(0), sampling="lognormal")
    log_sigma = -schedule.half_log_snr(t)
    assert abs(log_sigma.mean().item() + 1.2) < 0.02 and abs(log_sigma.std().item() - 1.2) < 0.02
    assert t.dtype == torch.int64 and t.min() >= 1 and t.max() <= schedule.T
    t = draw_times(schedule, 200_000, torch.Generator().manual_seed(0), sampling="uniform", p_mean=9.0)
    counts = torch.bincount(t, minlength=schedule.T + 1)
    assert counts[0] == 0 and counts[1:].min() > 120 and counts[1:].max() < 290  # 200 expected


def test_a_small_unet_overfits_a_fixed_batch():
    """Loss on one fixed batch, fixed t and eps falls at least 10x in a few hundred steps."""
    torch.manual_seed(0)
    model = UNet(preset("digits", base_channels=16, norm_groups=4, attention_heads=1))
    schedule = NoiseSchedule.from_config()
    x0 = torch.rand(8, 1, 16, 16) * 2 - 1
    t, eps = torch.randint(1, 1001, (8,)), torch.randn(8, 1, 16, 16)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(300):
        loss = denoising_loss(model, schedule, x0, t, eps, None, prediction="eps").mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])
