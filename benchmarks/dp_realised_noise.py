"""The noise a real `mpcft finetune --dp` step hands its optimizer, measured coordinate by coordinate.

    python -m benchmarks.dp_realised_noise --steps 3 --target-epsilon 3 --parties 3 \\
        --train F --mode lora --layers 1 --epochs 1 --batch-size 32 --seq-len 48 --max-train 0 --lr 0.1

Runs the CLI's training (mpcft.finetune.trainer.train, the parties in threads over in-memory
channels with the dealer) for the first --steps steps and, around each DPOptimizer step, opens
what the run keeps shared: the clipped sum c, the SGD velocity before and after, the weights.
Per coordinate the optimizer received g = v_t - mu v_(t-1), so the realised noise is
z = (g - c) B_exp in per-example gradient units; DP-SGD's guarantee needs z ~ N(0, (sigma C')^2)
with C' >= C the sensitivity the run calibrated to (protocols.noise; with --dp-noise parties
each of the n parties adds variance (sigma C')^2 / (n - t), so the sum's is n / (n - t) times
that). The table gives std(z) / (sigma C'), its expected value, the mean, excess kurtosis and
the Kolmogorov-Smirnov p-value against the expected normal, and the residual of the weight
update w_(t-1) - w_t - lr v_t. A diagnostic: it opens values only a measurement should see.
"""
import argparse
import contextlib
import math

import scipy.stats
import torch

from benchmarks.timing import markdown_table, one_compute_thread
from mpcft.data import DataError, check_data
from mpcft.finetune import trainer
from mpcft.finetune.config import ConfigError, FinetuneConfig, add_arguments
from mpcft.privacy.dp_sgd import DPOptimizer
from mpcft.protocols.correlations import CorrelationDealer
from mpcft.runtime import run_threads
from mpcft.tensor import SharedTensor


class _Enough(Exception):
    """Raised at every party after the last measured step: the run stops there."""


@contextlib.contextmanager
def observed_steps(on_step):
    """Within the block, every DPOptimizer.step also opens, at every party, what the run keeps
    shared around it and calls on_step(dp_optimizer, opened); opened: "clipped" (the clipped sum
    c / B_exp), "velocity" and "new_velocity" (the SGD velocity before and after), "before" and
    "after" (the weights), flat in the order of the optimizer's parameters, and "noise", the
    noise the step received, z = (v_t - mu v_(t-1) - c) B_exp. Openings add rounds, not error."""
    step = DPOptimizer.step

    def observed(self):
        ctx, sgd = self.ctx, self.optimizer
        def reveal(share):
            return SharedTensor(ctx, share).reveal()
        def weights():
            return reveal(torch.cat([p.data.reshape(-1) for p in sgd.params]))
        before = weights()
        velocity = reveal(sgd.velocity) if sgd.velocity is not None else torch.zeros_like(before)
        kept = {}
        clipped_sum = self.clipped_sum
        self.clipped_sum = lambda: kept.setdefault("c", clipped_sum())
        try:
            step(self)
        finally:
            del self.clipped_sum
        clipped, after, new_velocity = reveal(kept["c"]), weights(), reveal(sgd.velocity)
        noise = ((new_velocity - sgd.momentum * velocity - clipped) * self.expected_batch_size).double()
        on_step(self, dict(clipped=clipped, velocity=velocity, new_velocity=new_velocity, before=before,
                           after=after, noise=noise))

    DPOptimizer.step = observed
    try:
        yield
    finally:
        DPOptimizer.step = step


def measure(config: FinetuneConfig, parties: int, steps: int) -> list[dict]:
    """Per measured step: {"step", "coordinates", "sigma", "sensitivity", "ratio" (std(z) / (sigma C')),
    "expected" (its expected value), "mean", "kurtosis", "ks_p", "clipped_norm", "residual"}."""
    rows = []

    def on_step(self, opened):
        sgd, ctx = self.optimizer, self.ctx
        if ctx.rank == 0:
            noise = opened["noise"]
            scale = self.noise_multiplier * self.sensitivity
            n = ctx.world_size
            expected = math.sqrt(n / (n - (self.colluders or n - 1))) if self.noise_source == "parties" else 1.0
            residual = (opened["before"] - opened["after"]) / sgd.lr - opened["new_velocity"]
            rows.append(dict(step=sgd.steps, coordinates=noise.numel(), sigma=self.noise_multiplier,
                             sensitivity=self.sensitivity, ratio=float(noise.std()) / scale, expected=expected,
                             mean=float(noise.mean()) / scale, kurtosis=float(scipy.stats.kurtosis(noise.numpy())),
                             ks_p=float(scipy.stats.kstest(noise.numpy() / (scale * expected), "norm").pvalue),
                             clipped_norm=float((opened["clipped"] * self.expected_batch_size).norm()),
                             residual=float(residual.abs().max())))
            print(f"step {sgd.steps}: std(z) / (sigma C') = {rows[-1]['ratio']:.4f} (expected {expected:.4f})",
                  flush=True)
        if sgd.steps >= steps:
            raise _Enough()

    try:
        with observed_steps(on_step):
            run_threads(trainer.train, parties, config, dealer_handler=CorrelationDealer, timeout=3600)
    except _Enough:
        pass
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="training steps to measure")
    parser.add_argument("--parties", type=int, default=3, help="compute parties (threads)")
    add_arguments(parser)
    args = parser.parse_args()
    one_compute_thread()
    try:
        config = FinetuneConfig.from_args(args)
        if not config.dp or config.optimizer != "sgd":
            raise ConfigError("measures DP-SGD runs: give --dp and keep --optimizer sgd")
        config.check(args.parties)
        check_data(config, args.parties)
    except (ConfigError, DataError, ValueError) as exc:
        parser.error(str(exc))
    rows = measure(config, args.parties, args.steps)
    print(f"\n{args.parties} parties, --dp-noise {config.dp_noise}\n")
    print(markdown_table(["step", "coordinates", "sigma", "C'", "std(z) / (sigma C')", "expected",
                          "mean / (sigma C')", "excess kurtosis", "KS p", "|c| B_exp", "update residual"],
                         [[r["step"], r["coordinates"], f"{r['sigma']:.4f}", f"{r['sensitivity']:.4f}",
                           f"{r['ratio']:.4f}", f"{r['expected']:.4f}", f"{r['mean']:+.4f}", f"{r['kurtosis']:+.3f}",
                           f"{r['ks_p']:.3f}", f"{r['clipped_norm']:.2f}", f"{r['residual']:.1e}"] for r in rows]))


if __name__ == "__main__":
    main()
