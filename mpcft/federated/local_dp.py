"""A client's optional local DP-SGD with Opacus: example-level privacy before anything leaves it.

Opacus does what make_private sets up: per-example gradients (GradSampleModule, on the head or
on the peft LoRA model), clipping to max_grad_norm C and averaging over the expected batch
(DPOptimizer), and the RDP accountant's record of every step. Two parts are mpcft's: Poisson
batches (privacy.sampling: each example with probability q = 1 / ceil(n / B), from a fresh OS
seed) and the noise, drawn exactly: the clipped sum rounded down onto the grid r = 2^-20 plus
discrete-Gaussian draws of deviation sigma (C / r + sqrt(d)) grid units from a CSPRNG (rounding
moves two sums' difference by under sqrt(d) units, d the trainable values; Canonne et al. 2020).
"""
import math
import warnings

import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

from mpcft.kernels import PRG, fresh_seed
from mpcft.kernels.discrete_noise import discrete_gaussian
from mpcft.privacy.mechanisms import RESOLUTION
from mpcft.privacy.sampling import poisson_plan, poisson_schedule

MAX_NOISE_GRID = 1.5e8        # sigma in grid units within the exact sampler's range (about 1.9e8)


def check_local_dp(noise_multiplier: float, max_grad_norm: float) -> None:
    """ValueError (one line, Opacus's option names) for settings local DP-SGD cannot use."""
    if not 0 < noise_multiplier < math.inf:
        raise ValueError(f"--local-noise-multiplier must be a finite number > 0, got {noise_multiplier}")
    if not 0 < max_grad_norm < math.inf:
        raise ValueError(f"--local-max-grad-norm must be a finite number > 0, got {max_grad_norm}")
    if noise_multiplier * max_grad_norm / RESOLUTION >= MAX_NOISE_GRID:
        raise ValueError(f"--local-noise-multiplier x --local-max-grad-norm must stay below "
                         f"{MAX_NOISE_GRID * RESOLUTION:.0f} (the exact sampler's range on the 2^-20 grid)")


class ExactNoiseDPOptimizer(DPOptimizer):
    """Opacus's DPOptimizer with the noise of the module docstring instead of torch.normal."""

    def add_noise(self):
        numel = sum(p.numel() for p in self.params)
        sigma = self.noise_multiplier * (self.max_grad_norm / RESOLUTION + math.sqrt(numel))   # grid units
        prg = PRG(fresh_seed())
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            grid = torch.floor(p.summed_grad.double() / RESOLUTION)
            draws = torch.from_numpy(discrete_gaussian(prg, sigma * sigma, tuple(p.shape))).double()
            p.grad = ((grid + draws) * RESOLUTION).to(p.dtype).view_as(p)
            _mark_as_processed(p.summed_grad)


def private_fit(module: torch.nn.Module, logits_of, labels: torch.Tensor, *, noise_multiplier: float,
                max_grad_norm: float, batch_size: int, epochs: int, lr: float) -> tuple[float, list]:
    """Local epochs of DP-SGD (AdamW) on the trainable parameters of `module`; logits_of(model,
    idx) gives the logits of examples idx through `model` (the wrapped module). Returns (mean
    loss, the accountant's history [(noise_multiplier, sample_rate, steps)])."""
    sample_rate, steps = poisson_plan(len(labels), batch_size, epochs)
    model = GradSampleModule(module, loss_reduction="sum")
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = ExactNoiseDPOptimizer(torch.optim.AdamW(params, lr=lr), noise_multiplier=noise_multiplier,
                                      max_grad_norm=max_grad_norm,
                                      expected_batch_size=max(1, round(sample_rate * len(labels))))
    accountant = RDPAccountant()
    optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    losses = []
    model.train()
    for batch in poisson_schedule([len(labels)], sample_rate, steps, fresh_seed()):
        optimizer.zero_grad()
        idx = torch.tensor([i for _, i in batch], dtype=torch.int64)
        if len(idx):
            loss = torch.nn.functional.cross_entropy(logits_of(model, idx), labels[idx], reduction="sum")
            with warnings.catch_warnings():        # the head alone: its inputs (features) need no gradient
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
            losses.append(loss.item() / len(idx))
        else:                 # an empty Poisson batch: a step of noise alone, as Opacus takes it
            for p in params:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
        optimizer.step()
    model.to_standard_module()        # Opacus's hooks and per-example gradients removed
    module.eval()
    return (sum(losses) / len(losses) if losses else 0.0), list(accountant.history)
