"""Opacus's accuracy over public seeds at each epsilon, and where mpcft's DP runs fall in it.

    python -m benchmarks.dp_seed_spread --epsilons 1 3 8 --seeds 0 1 2 3 4 5 \\
        --train F --mode lora --layers 1 --epochs 1 --batch-size 32 --seq-len 48 --max-train 0 \\
        --lr 0.1 --parties 3 [--mpcft-runs RUN ...]

A DP run's accuracy after one epoch depends on its noise draw and, through --seed, on its
train/test split, Poisson schedule and initialisation: single runs differ by several points
(RESULTS.md). So the baseline is a distribution: for every (epsilon, seed), Opacus's DP-SGD
(mpcft.finetune.plaintext.train_plaintext: DPOptimizer at the sigma the run's accountant
calibrates for its steps and rate, the same clipping and Poisson rate) on the split the
parties would hold. The table gives its mean, standard deviation and range per epsilon; each
`mpcft finetune --dp` run folder given (its summary.json) is placed beside it: its accuracy,
Opacus's at the same seed, and the mean of the MPC runs against the Opacus mean.
"""
import argparse
import dataclasses
import json
import pathlib
import statistics

from benchmarks.timing import markdown_table, one_compute_thread
from mpcft.data import DataError, check_data, load_data
from mpcft.finetune.config import ConfigError, FinetuneConfig, add_arguments
from mpcft.finetune.plaintext import train_plaintext
from mpcft.finetune.private import dp_plan


def opacus_accuracy(base: FinetuneConfig, parties: int, epsilon: float, seed: int) -> tuple[float, float]:
    """(test accuracy, sigma) of Opacus's DP-SGD on the configuration at (epsilon, seed)."""
    config = dataclasses.replace(base, dp=True, target_epsilon=epsilon, noise_multiplier=None, seed=seed)
    counts = check_data(config, parties)
    _, test, names = load_data(config, 0, parties)
    sigma = dp_plan(config, sum(counts))[2]
    return train_plaintext(config, names, counts, test, sigma)[0], sigma


def mpcft_runs(folders, epsilons) -> dict:
    """{epsilon: [(seed, mpcft accuracy, Opacus accuracy at that seed or None)]} from run folders,
    each filed under the listed epsilon nearest its spent epsilon."""
    runs = {e: [] for e in epsilons}
    for folder in folders:
        path = pathlib.Path(folder) / "summary.json"
        if not path.is_file():
            raise SystemExit(f"dp_seed_spread: {path} not found: give the folders of `mpcft finetune --dp` runs")
        summary = json.loads(path.read_text())
        if "epsilon" not in summary or "accuracy" not in summary:
            raise SystemExit(f"dp_seed_spread: {folder}/summary.json is not a --dp run's with an accuracy")
        nearest = min(epsilons, key=lambda e: abs(e - summary["epsilon"]))
        runs[nearest].append((summary.get("seed"), summary["accuracy"], summary.get("opacus_accuracy")))
    return runs


def checked_runs(parser, args, check=None) -> FinetuneConfig:
    """The base configuration of a benchmark's DP runs at each of args.epsilons, every run's
    options and data checked (and `check(base)`) before the first trains; parser.error's one
    line otherwise."""
    try:
        base = FinetuneConfig.from_args(args)
        if check:
            check(base)
        for epsilon in args.epsilons:
            config = dataclasses.replace(base, dp=True, target_epsilon=epsilon, noise_multiplier=None)
            config.check(args.parties)
            check_data(config, args.parties)
    except (ConfigError, DataError, ValueError) as exc:
        parser.error(str(exc))
    return base


def percent(value) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(6)))
    parser.add_argument("--parties", type=int, default=3, help="compute parties (how the data are split)")
    parser.add_argument("--mpcft-runs", nargs="*", default=[], metavar="RUN",
                        help="folders of `mpcft finetune --dp` runs to place beside the spread")
    add_arguments(parser)
    args = parser.parse_args()
    one_compute_thread()
    base = checked_runs(parser, args)
    runs = mpcft_runs(args.mpcft_runs, args.epsilons)
    rows, detail = [], []
    for epsilon in args.epsilons:
        accuracies = []
        for seed in args.seeds:
            acc, sigma = opacus_accuracy(base, args.parties, epsilon, seed)
            accuracies.append(acc)
            detail.append([f"{epsilon:g}", seed, f"{sigma:.3f}", percent(acc)])
            print(f"epsilon {epsilon:g} seed {seed}: Opacus {100 * acc:.2f} %", flush=True)
        mean, spread = statistics.mean(accuracies), statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        mpc = runs[epsilon]
        mpc_mean = statistics.mean(a for _, a, _ in mpc) if mpc else None
        rows.append([f"{epsilon:g}", len(accuracies), percent(mean), percent(spread),
                     f"{percent(min(accuracies))} – {percent(max(accuracies))}",
                     "; ".join(f"{percent(a)} (seed {s}, Opacus {percent(o)})" for s, a, o in mpc),
                     percent(mpc_mean), "" if mpc_mean is None else f"{100 * (mpc_mean - mean):+.2f}"])
    print("\nOpacus per seed\n")
    print(markdown_table(["epsilon", "seed", "sigma", "Opacus accuracy %"], detail))
    print("\nSpread over seeds, and mpcft's runs beside it\n")
    print(markdown_table(["epsilon", "seeds", "Opacus mean %", "Opacus std", "Opacus range",
                          "mpcft runs %", "mpcft mean %", "mpcft mean − Opacus mean"], rows))


if __name__ == "__main__":
    main()
