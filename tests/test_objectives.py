import torch

from pixeldiffusion.models import UNet, preset
from pixeldiffusion.objectives import denoising_loss, min_snr_weight
from pixeldiffusion.schedule import NoiseSchedule


def test_min_snr_weights_agree_across_targets():
    """Min-SNR-gamma weights the same x0-error for every target: w_eps * SNR = w_x0 = w_v * (SNR + 1)."""
    snr = torch.tensor([0.01, 1.0, 5.0, 100.0])
    w_x0 = min_snr_weight(snr, "x0")
    assert torch.allclose(min_snr_weight(snr, "eps") * snr, w_x0)
    assert torch.allclose(min_snr_weight(snr, "v") * (snr + 1), w_x0)


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
