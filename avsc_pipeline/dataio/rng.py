"""Per-module random generators for batch augmentation, on the batch's device.

Every augmentation module draws its per-sample randomness from a `torch.Generator` it owns (one
per device, seeded from the module's seed) or from one passed to its constructor. The generator
states travel in the module's `state_dict` (as extra state), so a checkpoint resumes the exact
random stream.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch
from torch import nn


class SeededModule(nn.Module):
    """Base class of modules that draw per-sample randomness on the batch's device.

    Args:
        seed: seed of the module-owned generators; None draws one from torch's global generator
            (so `torch.manual_seed` still makes a run repeatable).
        generator: a generator to use instead; batches must then be on its device.
    """

    def __init__(self, seed: Optional[int] = None, generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"expected a torch.Generator or None, got {type(generator).__name__}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise TypeError(f"expected an int seed or None, got {type(seed).__name__}")
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        self.seed = seed
        self._passed = generator
        self._generators: Dict[str, torch.Generator] = {}
        self._pending: Dict[str, torch.Tensor] = {}

    def generator_for(self, device: torch.device) -> torch.Generator:
        """The generator that draws for batches on `device` (created on first use)."""
        if self._passed is not None:
            if torch.device(self._passed.device).type != torch.device(device).type:
                raise ValueError(
                    f"expected a batch on the generator's device {self._passed.device}, got {device}"
                )
            return self._passed
        # Keyed by device type: a process draws on one GPU, and a resumed process may be given
        # another index (fewer GPUs, another rank layout) yet continues the same stream.
        key = torch.device(device).type
        if key not in self._generators:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            if key in self._pending:
                gen.set_state(self._pending.pop(key))
            self._generators[key] = gen
        return self._generators[key]

    def get_extra_state(self) -> Dict[str, Any]:
        """Seed and generator states, stored in `state_dict()`."""
        states = {key: gen.get_state() for key, gen in self._generators.items()}
        states.update({k: v for k, v in self._pending.items() if k not in states})
        return {"seed": self.seed, "states": states}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`get_extra_state` saved (applied when a device is first used)."""
        if not isinstance(state, dict) or "seed" not in state:
            raise ValueError(f"expected a dict with 'seed' and 'states', got {type(state).__name__}")
        self.seed = int(state["seed"])
        self._generators = {}
        self._pending = {torch.device(key).type: value for key, value in state.get("states", {}).items()}


def randint_inclusive(high: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Int64 draws uniform over `0..high` (inclusive) per element of the int64 tensor `high`."""
    u = torch.rand(high.shape, generator=generator, device=high.device, dtype=torch.float64)
    return torch.minimum((u * (high + 1).to(torch.float64)).floor().to(torch.int64), high)


def beta_sample(alpha: float, n: int, generator: torch.Generator, device: torch.device,
                tries: int = 16) -> torch.Tensor:
    """`n` float32 draws from Beta(alpha, alpha) using only `generator` (on `device`).

    Beta(a, a) is `X / (X + Y)` with `X, Y ~ Gamma(a)`; the gammas use Marsaglia and Tsang's
    method with `tries` vectorized candidates each (accepted with probability above 0.95 each,
    so all of them fail with probability below 1e-20; the last candidate is then kept), plus
    the `U ** (1 / a)` boost for `a < 1`. No host synchronization is needed.
    """
    if not alpha > 0:
        raise ValueError(f"expected alpha > 0, got {alpha!r}")
    x = _gamma(alpha, 2 * n, generator, device, tries).view(2, n)
    return (x[0] / (x[0] + x[1]).clamp_min(1e-30)).to(torch.float32)


def _gamma(alpha: float, n: int, generator: torch.Generator, device: torch.device, tries: int) -> torch.Tensor:
    shape = alpha if alpha >= 1.0 else alpha + 1.0
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    z = torch.randn((n, tries), generator=generator, device=device, dtype=torch.float64)
    u = torch.rand((n, tries), generator=generator, device=device, dtype=torch.float64)
    v = (1.0 + c * z) ** 3
    ok = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp_min(1e-300)))
    ok[:, -1] = True
    first = ok.to(torch.int8).argmax(dim=1, keepdim=True)
    sample = (d * v.clamp_min(1e-30)).gather(1, first).squeeze(1)
    if alpha < 1.0:
        boost = torch.rand((n,), generator=generator, device=device, dtype=torch.float64)
        sample = sample * boost.pow(1.0 / alpha)
    return sample
