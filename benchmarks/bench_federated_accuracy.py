"""Accuracy of federated fine-tuning: MPC aggregation against Flower's plain FedAvg and centralised training.

    python -m benchmarks.bench_federated_accuracy [--train CSV] [--clients 10] [--rounds 5]
        [--partitions iid dirichlet] [--mode lora] [--out runs/bench-federated]

For each partition, runs `mpcft federated` with --aggregation mpc and with --aggregation plain
(same clients, data, seeds), and trains the same model centrally on the pooled training rows
for rounds x local epochs; prints a markdown table (final and best accuracy, seconds) and
writes OUT/accuracy.png (accuracy per round for every run).
"""
import argparse
import json
import pathlib
import subprocess
import sys
import time

DEFAULT_TRAIN = pathlib.Path(__file__).resolve().parents[2] / "shared/data/financial_phrasebank/sentences_allagree.csv"


def run_federated(args, partition, aggregation, out):
    command = [sys.executable, "-m", "mpcft.cli", "federated", "--clients", str(args.clients), "--rounds",
               str(args.rounds), "--partition", partition, "--alpha", str(args.alpha), "--aggregation", aggregation,
               "--mode", args.mode, "--seq-len", str(args.seq_len), "--out", str(out)]
    if args.train:
        command += ["--train", str(args.train)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    summary["wall_s"] = time.perf_counter() - started
    return summary


def centralised(args):
    """Test accuracy of one model trained on all the clients' rows, rounds x local epochs."""
    import numpy as np

    from mpcft.data.files import builtin_dataset, read_labelled, split
    from mpcft.federated.client import LocalModel, LocalSettings
    if args.train:
        texts, labels, names = read_labelled(args.train, "sentence", "label")
    else:
        texts, labels, names = builtin_dataset(seed=0)
    train_idx, test_idx = split(len(texts), 0.2, 0)
    model = LocalModel(LocalSettings(labels=len(names), mode=args.mode, seq_len=args.seq_len, local_epochs=1))
    test_y = np.array([labels[i] for i in test_idx])
    accuracies, started = [], time.perf_counter()
    for _ in range(args.rounds):
        model.fit([texts[i] for i in train_idx], [labels[i] for i in train_idx])
        accuracies.append(float((model.predict([texts[i] for i in test_idx]).numpy() == test_y).mean()))
    return accuracies, time.perf_counter() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--train", default=str(DEFAULT_TRAIN) if DEFAULT_TRAIN.exists() else None)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--partitions", nargs="+", default=["iid", "dirichlet"])
    parser.add_argument("--mode", default="lora")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--out", default="runs/bench-federated")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    rows, curves = [], {}
    for partition in args.partitions:
        for aggregation in ("mpc", "plain"):
            summary = run_federated(args, partition, aggregation, out / f"{partition}-{aggregation}")
            acc = summary["accuracy"]
            curves[f"{partition}, {aggregation} FedAvg"] = acc
            rows.append((partition, aggregation, acc[-1], max(acc), summary["wall_s"],
                         max(summary["client_rows"]) / sum(summary["client_rows"])))
            print(f"{partition} {aggregation}: {' '.join(f'{a:.3f}' for a in acc)}", flush=True)
    accs, seconds = centralised(args)
    curves["centralised"] = [float("nan")] + accs
    print("| partition | aggregation | final accuracy | best | seconds | largest client share |")
    print("|---|---|---|---|---|---|")
    for partition, aggregation, final, best, wall, largest in rows:
        print(f"| {partition} | {aggregation} | {final:.3f} | {best:.3f} | {wall:.0f} | {largest:.1%} |")
    print(f"| pooled | centralised ({args.rounds} epochs) | {accs[-1]:.3f} | {max(accs):.3f} | {seconds:.0f} | 100% |")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, acc in curves.items():
        ax.plot(range(len(acc)), acc, marker="o", label=name)
    ax.set_xlabel("round (centralised: epoch)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{args.clients} clients, {args.mode}, {pathlib.Path(args.train).name if args.train else 'built-in set'}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)
    print(f"wrote {out / 'accuracy.png'}")


if __name__ == "__main__":
    main()
