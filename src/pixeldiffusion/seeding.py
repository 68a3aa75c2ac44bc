"""Reproducible random streams: every (seed, index) pair names its own generator seed."""


def derive_seed(seed: int, index: int) -> int:
    """A seed for stream `index` of a run seeded with `seed` (a training step, a sampling chunk, an epoch)."""
    return (seed * 0x9E3779B1 + index) % 2**63
