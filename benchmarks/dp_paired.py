"""mpcft's DP-SGD against Opacus's on the same random draws: what MPC's arithmetic costs in accuracy.

    python -m benchmarks.dp_paired --epsilons 1 3 8 --seeds 0 1 --parties 3 --json paired.jsonl \\
        --train F --mode lora --layers 1 --epochs 1 --batch-size 32 --seq-len 48 --max-train 0 --lr 0.1

Unpaired, one-epoch DP runs of either tool spread over about 4 points by their noise draws and
Poisson schedules (RESULTS.md), so bounding the difference of the two tools' means by 2 points
takes some 30 runs a side. Paired, with common random numbers: the CLI's MPC training
(mpcft.finetune.trainer.train, every party and the dealer a process over loopback TLS) is
observed step by step (dp_realised_noise.observed_steps): its Poisson schedule and the noise z its optimizer
received at every coordinate. Opacus's DPOptimizer then trains the plaintext model
(mpcft.finetune.plaintext.train_plaintext) on that schedule with that z in place of its own
draw, so the two runs differ only in MPC's arithmetic (fixed point, the protocols'
approximations) and their accuracy difference is that arithmetic's cost. Opacus with its own
draws runs beside, for the unpaired spread. Each pair is appended to --json as it ends (a run
given the same file later goes on where it stopped). A diagnostic: it opens the noise, which
only a measurement may see.
"""
import argparse
import dataclasses
import json
import os
import statistics
import tempfile

from benchmarks.dp_realised_noise import observed_steps
from benchmarks.dp_seed_spread import checked_runs
from benchmarks.timing import markdown_table, one_compute_thread
from mpcft.data import check_data, load_data
from mpcft.finetune import private, trainer
from mpcft.finetune.config import ConfigError, FinetuneConfig, add_arguments
from mpcft.finetune.plaintext import Replay, train_plaintext
from mpcft.finetune.private import dp_plan
from mpcft.protocols.correlations import CorrelationDealer
from mpcft.runtime import spawn


def _observed_party(session, config: FinetuneConfig):
    """One party of an observed `mpcft finetune --dp` run (its own process): trainer.train with
    its Poisson schedule and, per step, the noise its optimizer received by parameter name
    recorded; (summary, Replay) at rank 0, None elsewhere."""
    one_compute_thread()
    schedules, names, noise = [], [], []
    draw_schedule, make_optimizer = private.poisson_schedule, trainer.make_optimizer

    def recorded_schedule(*args):
        schedules.append(draw_schedule(*args))
        return schedules[-1]

    def named_optimizer(config, model, grad_scale):
        names.extend(name for name, p in model.named_parameters() if p.requires_grad)
        return make_optimizer(config, model, grad_scale)

    def on_step(dp, opened):
        if dp.ctx.rank == 0:
            parts = opened["noise"].split([p.data.numel() for p in dp.params])
            noise.append({name: z.reshape(p.shape) for name, z, p in zip(names, parts, dp.params)})

    private.poisson_schedule, trainer.make_optimizer = recorded_schedule, named_optimizer
    with observed_steps(on_step):
        summary = trainer.train(session, config)
    if session.rank != 0:
        return None
    if len(schedules) != 1 or len(noise) != len(schedules[0]):
        raise RuntimeError("the schedule was not drawn once or a step was not observed")
    return summary, Replay(schedules[0], noise)


def observed_run(config: FinetuneConfig, parties: int) -> tuple[dict, Replay]:
    """(rank 0's summary, the run's Replay) of one `mpcft finetune --dp` run, every party and
    the dealer a process over loopback TLS, as the CLI runs them."""
    return spawn(_observed_party, parties, config, dealer_handler=CorrelationDealer, timeout=4 * 3600)[0]


def paired(base: FinetuneConfig, parties: int, epsilon: float, seed: int) -> dict:
    """One pair at (epsilon, seed): mpcft's accuracy, Opacus's on the same draws and on its own."""
    with tempfile.TemporaryDirectory(prefix="mpcft-paired-") as out:
        config = dataclasses.replace(base, dp=True, target_epsilon=epsilon, noise_multiplier=None, seed=seed,
                                     out=out, plaintext_baseline=False)
        summary, replay = observed_run(config, parties)
    counts = check_data(config, parties)
    _, test, labels = load_data(config, 0, parties)
    sigma = dp_plan(config, sum(counts))[2]
    same = train_plaintext(config, labels, counts, test, sigma, replay)[0]
    own = train_plaintext(config, labels, counts, test, sigma)[0]
    return dict(epsilon=epsilon, seed=seed, sigma=sigma, epsilon_spent=summary["epsilon"], steps=len(replay.schedule),
                mpcft=summary["accuracy"], opacus_same_draws=same, opacus_own_draws=own,
                seconds=summary["seconds"])


def _pairable(base: FinetuneConfig) -> None:
    if base.mode not in ("head", "lora") or base.optimizer != "sgd":
        raise ConfigError("pairs DP-SGD runs in --mode head or lora with --optimizer sgd")


def _earlier_pairs(parser, args) -> list:
    """The pairs of an earlier, interrupted run in --json that this one asks for; parser.error's
    one line where the file is not a JSON-lines file of pairs."""
    if not args.json or not os.path.exists(args.json):
        return []
    try:
        with open(args.json) as f:
            earlier = [json.loads(line) for line in f if line.strip()]
        return [p for p in earlier if p["seed"] in args.seeds and p["epsilon"] in args.epsilons]
    except (OSError, ValueError, TypeError, KeyError) as exc:
        parser.error(f"--json {args.json}: not a JSON-lines file of earlier pairs ({exc})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--parties", type=int, default=3, help="compute parties (processes)")
    parser.add_argument("--json", help="append each pair to this JSON-lines file as it ends; pairs already "
                                       "in it are not run again")
    add_arguments(parser)
    args = parser.parse_args()
    one_compute_thread()
    base = checked_runs(parser, args, _pairable)
    pairs = _earlier_pairs(parser, args)
    for seed in args.seeds:           # every epsilon at a seed before the next seed
        for epsilon in args.epsilons:
            if any(p["seed"] == seed and p["epsilon"] == epsilon for p in pairs):
                continue
            pairs.append(paired(base, args.parties, epsilon, seed))
            print(json.dumps(pairs[-1]), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(pairs[-1]) + "\n")
    print(markdown_table(
        ["ε", "seed", "σ", "steps", "mpcft %", "Opacus, same draws %", "mpcft − Opacus (paired)",
         "Opacus, own draws %"],
        [[f"{p['epsilon']:g}", p["seed"], f"{p['sigma']:.3f}", p["steps"], f"{100 * p['mpcft']:.2f}",
          f"{100 * p['opacus_same_draws']:.2f}", f"{100 * (p['mpcft'] - p['opacus_same_draws']):+.2f}",
          f"{100 * p['opacus_own_draws']:.2f}"] for p in pairs]))
    gaps = [p["mpcft"] - p["opacus_same_draws"] for p in pairs]
    if len(gaps) > 1:
        print(f"\npaired difference over {len(gaps)} pairs: mean {100 * statistics.mean(gaps):+.2f} points, "
              f"std {100 * statistics.stdev(gaps):.2f}, largest |difference| {100 * max(map(abs, gaps)):.2f}")


if __name__ == "__main__":
    main()
