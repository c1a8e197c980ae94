"""The differentially private parts of a fine-tuning run (`--dp`): plan, noise, accounting.

PrivateTraining draws the Poisson schedule from a joint seed (mpcft.privacy.sampling), takes
the noise multiplier given or calibrates it for --target-epsilon over the run's steps and
rate (mpcft.privacy.accountant), wraps the run's optimizer in DP-SGD on shares
(mpcft.privacy.DPOptimizer) and counts the privacy spent step by step. Every party computes
the same plan and sigma from public options and the joint seed.
"""
from mpcft.privacy.accountant import PrivacyAccountant, calibrate_noise_multiplier, epsilon
from mpcft.privacy.dp_sgd import DPOptimizer
from mpcft.privacy.sampling import joint_seed, most_inclusions, poisson_plan, poisson_schedule

from .config import ConfigError, FinetuneConfig


class PrivateTraining:
    def __init__(self, ctx, config: FinetuneConfig, counts: list[int], optimizer, loss_scale: int,
                 seed: bytes | None = None):
        """seed: the joint seed of the schedule (a resumed run's, from its checkpoint); by
        default the parties draw a fresh one."""
        total = sum(counts)
        self.config = config
        self.sample_rate, steps = poisson_plan(total, config.batch_size, config.epochs)
        self.noise_multiplier = (config.noise_multiplier if config.noise_multiplier is not None else
                                 calibrate_noise_multiplier(config.target_epsilon, config.delta,
                                                            self.sample_rate, steps, config.accountant))
        self.expected_batch_size = self.sample_rate * total
        try:
            self.optimizer = DPOptimizer(optimizer, noise_multiplier=self.noise_multiplier,
                                         max_grad_norm=config.max_grad_norm,
                                         expected_batch_size=self.expected_batch_size, loss_scale=loss_scale,
                                         noise_source=config.dp_noise, colluders=config.dp_colluders)
        except ValueError:      # the exact sampler's range, in ring units
            raise ConfigError(f"--dp: noise std {self.noise_multiplier:.3g} x --max-grad-norm "
                              f"{config.max_grad_norm:g} over an expected batch of {self.expected_batch_size:.1f} "
                              f"is beyond the exact noise sampler's range in fixed point: lower "
                              f"--max-grad-norm or raise --batch-size") from None
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
