"""The privacy-utility curve: `mpcft dp-sweep --epsilons 1 3 8 [fine-tuning options]`.

Trains the same configuration once without DP and once per target epsilon (each a full
`mpcft finetune --dp --target-epsilon E` run with local parties and a dealer, in OUT/eps-E),
then writes OUT/sweep.md (a table), OUT/sweep.json and OUT/sweep.png (accuracy against
epsilon, with the non-private accuracy as a line; Opacus's beside it with
--plaintext-baseline), so that one can evaluate the trade-off and then choose epsilon.
"""
import dataclasses
import json
import pathlib

from mpcft.data import check_data

from .config import ConfigError, FinetuneConfig, HelpFormatter, add_arguments

COLUMNS = ["target epsilon", "epsilon", "noise multiplier", "accuracy", "Opacus accuracy",
           "epsilon for the parties", "steps", "seconds", "MB sent/party"]


def add_sweep_arguments(parser) -> None:
    parser.formatter_class = HelpFormatter
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0], metavar="E",
                        help="target epsilons, one DP run each (beside one non-private run)")
    parser.add_argument("--parties", type=int, default=2, help="compute parties")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per protocol step")
    add_arguments(parser)
    parser.set_defaults(out="runs/dp-sweep")


def sweep_configs(base: FinetuneConfig, epsilons: list[float]) -> list[tuple[float | None, FinetuneConfig]]:
    """(target epsilon or None, config) of every run: non-private first."""
    if base.dp or base.target_epsilon is not None or base.noise_multiplier is not None:
        raise ConfigError("dp-sweep sets --dp and --target-epsilon for each run itself: "
                          "give --epsilons instead")
    if not epsilons or any(not 0 < e < float("inf") for e in epsilons):
        raise ConfigError(f"--epsilons must be numbers > 0, got {epsilons}")
    out = pathlib.Path(base.out)
    runs = [(None, dataclasses.replace(base, out=str(out / "non-private")))]
    runs += [(e, dataclasses.replace(base, dp=True, target_epsilon=e, out=str(out / f"eps-{e:g}")))
             for e in sorted(set(epsilons))]
    return runs


def run_sweep(args, launch_finetune) -> int:
    """Every run of the sweep through `launch_finetune(config, parties, timeout) -> status`;
    stops at the first failed run (its own message says why)."""
    base = FinetuneConfig.from_args(args)
    runs = sweep_configs(base, args.epsilons)
    for _, config in runs:
        config.check(args.parties)
    check_data(base, args.parties)
    rows = []
    for target, config in runs:
        label = "without DP" if target is None else f"at target epsilon {target:g}"
        print(f"mpcft dp-sweep: training {label} -> {config.out}", flush=True)
        status = launch_finetune(config, args.parties, args.timeout)
        if status:
            return status
        summary = json.loads((pathlib.Path(config.out) / "summary.json").read_text())
        rows.append(_row(target, summary))
    out = pathlib.Path(base.out)
    write_sweep(out, rows, base, args.parties)
    print((out / "sweep.md").read_text())
    print(f"mpcft dp-sweep: wrote {out / 'sweep.md'}, {out / 'sweep.json'} and {out / 'sweep.png'}")
    return 0


def _row(target, summary) -> dict:
    return {"target epsilon": target, "epsilon": summary.get("epsilon"),
            "noise multiplier": summary.get("noise_multiplier"),
            "accuracy": summary.get("accuracy", summary.get("mpc_accuracy")),
            "Opacus accuracy": summary.get("opacus_accuracy", summary.get("plaintext_accuracy")),
            "epsilon for the parties": summary.get("epsilon_for_the_parties"), "steps": summary["steps"],
            "seconds": summary["seconds"], "MB sent/party": summary["MB_sent_per_party"]}


def write_sweep(out: pathlib.Path, rows: list[dict], base: FinetuneConfig, parties: int) -> None:
    """sweep.json, sweep.md and sweep.png of the runs' rows (the non-private one first)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(rows, indent=2))
    cell = lambda v: "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
    lines = [f"mode {base.mode}, {parties} parties, {rows[0]['steps']} steps without DP, delta {base.delta:g}, "
             f"max_grad_norm {base.max_grad_norm:g}, accountant {base.accountant}", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r[c]) if r["target epsilon"] is not None or c != "target epsilon"
                                else "none (non-private)" for c in COLUMNS) + " |" for r in rows]
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    private = [r for r in rows if r["target epsilon"] is not None]
    eps = [r["epsilon"] for r in private]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(eps, [r["accuracy"] for r in private], "o-", label="mpcft DP-SGD under MPC")
    if all(r["Opacus accuracy"] is not None for r in private):
        ax.plot(eps, [r["Opacus accuracy"] for r in private], "s--", label="Opacus (plaintext)")
    ax.axhline(rows[0]["accuracy"], color="gray", linestyle=":", label="mpcft without DP")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(eps, [f"{e:.2g}" for e in eps])
    ax.set_xlabel(f"epsilon (delta = {base.delta:g})")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"privacy-utility trade-off ({base.mode}, {parties} parties)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=120)
    plt.close(fig)
