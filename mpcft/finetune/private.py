"""The differentially private parts of a fine-tuning run (`--dp`): plan, noise, accounting.

PrivateTraining draws the Poisson schedule from a joint seed (mpcft.privacy.sampling), takes
the noise multiplier given or calibrates it for --target-epsilon over the run's steps and
rate (mpcft.privacy.accountant), wraps the run's optimizer in DP-SGD on shares
(mpcft.privacy.DPOptimizer) and counts the privacy spent step by step. Every party computes
the same plan and sigma from public options and the joint seed.
"""
from mpcft.privacy.accountant import PrivacyAccountant, calibrate_noise_multiplier, epsilon
from mpcft.kernels.fixed_point import DEFAULT_FRACTIONAL_BITS
from mpcft.privacy.dp_sgd import DPOptimizer, noise_calibration
from mpcft.privacy.sampling import joint_seed, most_inclusions, poisson_plan, poisson_schedule

from .config import ConfigError, FinetuneConfig


def dp_plan(config: FinetuneConfig, total: int) -> tuple[float, int, float]:
    """(sample rate q, steps, noise multiplier sigma) of a --dp run over `total` examples."""
    sample_rate, steps = poisson_plan(total, config.batch_size, config.epochs)
    sigma = (config.noise_multiplier if config.noise_multiplier is not None else
             calibrate_noise_multiplier(config.target_epsilon, config.delta, sample_rate, steps, config.accountant))
    return sample_rate, steps, sigma


def check_noise_range(config: FinetuneConfig, total: int) -> None:
    """ConfigError, before any party starts, where the noise of a --dp run over `total` examples
    is beyond the exact sampler's range for any model (the parties' check with N trained
    parameters, at N = 0, the least variance; the trainer hands DP-SGD gradients at scale 1)."""
    sample_rate, _, sigma = dp_plan(config, total)
    try:
        noise_calibration(sigma, config.max_grad_norm, sample_rate * total, 0, DEFAULT_FRACTIONAL_BITS, 1)
    except ValueError:
        raise _beyond_range(config, sigma, sample_rate * total) from None


def _beyond_range(config: FinetuneConfig, sigma: float, expected_batch_size: float) -> ConfigError:
    return ConfigError(f"--dp: noise std {sigma:.3g} x --max-grad-norm {config.max_grad_norm:g} over an "
                       f"expected batch of {expected_batch_size:.1f} is beyond the exact noise sampler's range "
                       f"in fixed point: lower --noise-multiplier or --max-grad-norm, or raise --batch-size")


class PrivateTraining:
    def __init__(self, ctx, config: FinetuneConfig, counts: list[int], optimizer, loss_scale: int,
                 seed: bytes | None = None):
        """seed: the joint seed of the schedule (a resumed run's, from its checkpoint); by
        default the parties draw a fresh one."""
        total = sum(counts)
        self.config = config
        self.sample_rate, steps, self.noise_multiplier = dp_plan(config, total)
        self.expected_batch_size = self.sample_rate * total
        try:
            self.optimizer = DPOptimizer(optimizer, noise_multiplier=self.noise_multiplier,
                                         max_grad_norm=config.max_grad_norm,
                                         expected_batch_size=self.expected_batch_size, loss_scale=loss_scale,
                                         noise_source=config.dp_noise, colluders=config.dp_colluders,
                                         ghost_clipping=config.dp_ghost_clipping)
        except ValueError:      # the exact sampler's range, in ring units
            raise _beyond_range(config, self.noise_multiplier, self.expected_batch_size) from None
        self.seed = seed if seed is not None else joint_seed(ctx)
        self.batches = poisson_schedule(counts, self.sample_rate, steps, self.seed)
        self.accountant = PrivacyAccountant(self.noise_multiplier, self.sample_rate, config.delta,
                                            config.accountant)

    def summary(self) -> dict:
        """The guarantee for whoever receives the model, and for a party, which knows the schedule
        (no amplification by sampling: each inclusion is a Gaussian mechanism of std sigma C)."""
        config = self.config
        known = most_inclusions(self.batches)
        batch = self.batches and max(len(b) for b in self.batches)
        return {"epsilon": round(self.accountant.epsilon, 4), "delta": config.delta,
                "noise_multiplier": round(self.noise_multiplier, 6), "max_grad_norm": config.max_grad_norm,
                "sampling_rate": round(self.sample_rate, 6), "accountant": config.accountant,
                "dp_noise": config.dp_noise if config.dp_noise == "dealer" else
                f"parties (withstands {config.dp_colluders or 'n-1'} colluders and the dealer)",
                "expected_batch_size": round(self.expected_batch_size, 2),
                "epsilon_for_the_parties": round(epsilon(self.noise_multiplier, 1.0, known, config.delta,
                                                         config.accountant), 4) if known else 0.0,
                "clip_norm_range": f"norms up to {self.optimizer.norm_range(max(batch, 1)):.0f} x max_grad_norm"}
