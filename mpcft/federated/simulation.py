"""`mpcft federated`: K Flower clients and m aggregator parties on one machine, all real processes.

The clients run in Flower's simulation engine (Ray actors, one process per concurrent
client), the ServerApp in this process, and the aggregators as `mpcft launch` parties (TLS
mesh and dealer) that the ServerApp reaches through the hand-off. Writes OUT/summary.json,
OUT/accuracy.png (test accuracy per round), the certificates in OUT/certs and the clients'
partitions in OUT/clients (each client reads only its own).
"""
import argparse
import json
import math
import pathlib
import subprocess
import sys
import time

import numpy as np

from mpcft.data.files import DataError, builtin_dataset, read_labelled, split
from mpcft.runtime import tls
from mpcft.runtime.local import free_ports

from . import aggregation, handoff
from .client import MODES, LocalSettings
from .local_dp import check_local_dp
from .updates import FRAC_BITS, MAX_COUNT

PARTITIONS = ("iid", "dirichlet")
AGGREGATIONS = ("mpc", "plain")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--clients", type=int, default=10, help="number of Flower clients (K)")
    add("--rounds", type=int, default=5, help="federated rounds")
    add("--train", help="labelled CSV/TSV to split among the clients (default: the built-in set)")
    add("--text-column", default="sentence", help="column of the texts")
    add("--label-column", default="label", help="column of the labels")
    add("--test-fraction", type=float, default=0.2, help="rows held out for the server's evaluation")
    add("--partition", choices=PARTITIONS, default="iid", help="how rows are split among clients")
    add("--alpha", type=float, default=0.5, help="Dirichlet concentration of the label skew")
    add("--aggregators", type=int, default=2, help="mpcft aggregator parties (m)")
    add("--aggregation", choices=AGGREGATIONS, default="mpc",
        help="mpc: SecureFedAvg through the aggregators; plain: Flower's own FedAvg (for comparison)")
    add("--weighting", choices=aggregation.WEIGHTINGS, default=None,
        help="FedAvg weights n_k/n (examples), 1/K (uniform) or min(n_k, cap)/(cap D) (capped, McMahan et al. "
             "2018; D the expected capped weight of a round); default examples, uniform under --dp")
    add("--weight-cap", type=int, default=None, help="the cap of --weighting capped (examples)")
    add("--secret-counts", action="store_true",
        help="keep each n_k secret (examples: one reciprocal in MPC; capped: clamped in MPC, D = the sampled clients)")
    add("--clipping-norm", type=float, default=None, help="clip each update to this L2 norm in MPC")
    add("--fraction-train", type=float, default=1.0, help="fraction of clients sampled each round (q)")
    add("--min-clients", type=int, default=2, help="fewest usable updates for a round to count")
    add("--dp", action="store_true", help="client-level DP (DP-FedAvg): clip, uniform weights, noise")
    add("--noise-multiplier", type=float, default=None, help="sigma under --dp")
    add("--target-epsilon", type=float, default=None, help="calibrate sigma to this epsilon under --dp")
    add("--delta", type=float, default=1e-5, help="delta under --dp")
    add("--dp-noise", choices=("dealer", "parties"), default="dealer", help="who samples the noise shares")
    add("--local-noise-multiplier", type=float, default=None,
        help="local DP-SGD in every client (Opacus): noise multiplier sigma (example-level epsilon at --delta)")
    add("--local-max-grad-norm", type=float, default=None, help="local DP-SGD: per-example gradient clip C")
    add("--mode", choices=MODES, default="lora", help="what the clients train: the head, or LoRA and the head")
    add("--local-epochs", type=int, default=1, help="local epochs per round")
    add("--batch-size", type=int, default=16, help="local batch size")
    add("--lr", type=float, default=1e-3, help="local AdamW learning rate")
    add("--seq-len", type=int, default=64, help="tokens per text")
    add("--seed", type=int, default=0, help="seed of the partition and the initial model (public)")
    add("--timeout", type=float, default=600.0, help="seconds a round may take before it fails")
    add("--out", default="runs/federated", help="output folder")
    add("--fail-clients", default="", help=argparse.SUPPRESS)      # fault tests: partition ids that fail


def check_options(args) -> None:
    """ValueError (one line) for options that cannot work, before anything starts."""
    if args.clients < 2:
        raise ValueError("--clients must be at least 2")
    if args.rounds < 1:
        raise ValueError("--rounds must be at least 1")
    if not 2 <= args.aggregators <= 8:
        raise ValueError("--aggregators must be between 2 and 8")
    if not 0 < args.fraction_train <= 1:
        raise ValueError("--fraction-train must be in (0, 1]")
    if not 1 <= args.min_clients <= args.clients:
        raise ValueError("--min-clients must be between 1 and --clients")
    if math.ceil(args.clients * args.fraction_train) < args.min_clients:
        raise ValueError("--fraction-train samples fewer clients than --min-clients")
    if not args.alpha > 0:
        raise ValueError("--alpha must be > 0")
    if not 0 < args.test_fraction < 1:
        raise ValueError("--test-fraction must be in (0, 1)")
    for name in ("local_epochs", "batch_size", "seq_len"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if not args.lr > 0:
        raise ValueError("--lr must be > 0")
    if args.clipping_norm is not None and not args.clipping_norm > 0:
        raise ValueError("--clipping-norm must be > 0")
    if (args.weighting == "capped") != (args.weight_cap is not None):
        raise ValueError("--weighting capped and --weight-cap go together")
    if args.weighting == "capped":
        if not 1 <= args.weight_cap <= MAX_COUNT:
            raise ValueError(f"--weight-cap must be between 1 and {MAX_COUNT}")
        if args.aggregation != "mpc":
            raise ValueError("--weighting capped needs --aggregation mpc")
        if not (args.dp or args.clipping_norm):
            raise ValueError("--weighting capped needs --clipping-norm (or --dp)")
        aggregation.check_capped(args.weight_cap, args.clipping_norm or 1.0, args.clients, FRAC_BITS)
    if args.dp:
        if args.aggregation != "mpc":
            raise ValueError("--dp needs --aggregation mpc (the noise is added by the aggregators)")
        if (args.noise_multiplier is None) == (args.target_epsilon is None):
            raise ValueError("--dp needs exactly one of --noise-multiplier and --target-epsilon")
        if args.noise_multiplier is not None and not args.noise_multiplier > 0:
            raise ValueError("--noise-multiplier must be > 0")
        if args.target_epsilon is not None and not args.target_epsilon > 0:
            raise ValueError("--target-epsilon must be > 0")
        if not 0 < args.delta < 1:
            raise ValueError("--delta must be in (0, 1)")
        if args.weighting == "examples":
            raise ValueError("--dp needs --weighting uniform or capped (with n_k/n one client moves the average "
                             "by up to max n_k/n C, not C/K)")
        if args.secret_counts and args.weighting != "capped":
            raise ValueError("--secret-counts under --dp needs --weighting capped (uniform weights use no n_k)")
    elif args.noise_multiplier is not None or args.target_epsilon is not None:
        raise ValueError("--noise-multiplier and --target-epsilon need --dp")
    if (args.local_noise_multiplier is None) != (args.local_max_grad_norm is None):
        raise ValueError("--local-noise-multiplier and --local-max-grad-norm go together")
    if args.local_noise_multiplier is not None:
        check_local_dp(args.local_noise_multiplier, args.local_max_grad_norm)
        if not 0 < args.delta < 1:
            raise ValueError("--delta must be in (0, 1)")


def weighting(args) -> str:
    """The weighting the run uses: as given, else uniform under --dp and examples otherwise."""
    return args.weighting or ("uniform" if args.dp else "examples")


def expected_weight(args, rows: list, sampled: int) -> float | None:
    """D of the capped weighting, q W = (sampled / K) sum_k min(n_k / cap, 1) from the public
    partition sizes; with secret counts the sampled clients (each taken at the cap)."""
    if weighting(args) != "capped":
        return None
    if args.secret_counts:
        return float(sampled)
    return sampled / len(rows) * sum(min(n / args.weight_cap, 1.0) for n in rows)


def partition(labels: list, clients: int, scheme: str, alpha: float, seed: int) -> list:
    """Row indices per client: a shuffled even split (iid), or per label a Dirichlet(alpha)
    share of its rows to each client (label skew, as in Hsu et al. 2019). Public choices."""
    rng = np.random.Generator(np.random.PCG64(seed))      # public data split, not a secret
    if scheme == "iid":
        order = rng.permutation(len(labels))
        return [sorted(order[k::clients].tolist()) for k in range(clients)]
    parts = [[] for _ in range(clients)]
    for label in sorted(set(labels)):
        rows = rng.permutation([i for i, y in enumerate(labels) if y == label])
        cuts = (np.cumsum(rng.dirichlet([alpha] * clients)) * len(rows)).astype(int)[:-1]
        for k, chunk in enumerate(np.split(rows, cuts)):
            parts[k] += chunk.tolist()
    for k in range(clients):           # every client holds at least one row: take from the largest
        if not parts[k]:
            largest = max(range(clients), key=lambda j: len(parts[j]))
            parts[k].append(parts[largest].pop())
    return [sorted(p) for p in parts]


def _load(args):
    if args.train:
        texts, labels, names = read_labelled(args.train, args.text_column, args.label_column)
    else:
        texts, labels, names = builtin_dataset(seed=args.seed)
    train_idx, test_idx = split(len(texts), args.test_fraction, args.seed)
    if len(train_idx) < args.clients:
        raise DataError(f"{args.train or 'the built-in set'}: {len(train_idx)} training rows for "
                        f"{args.clients} clients")
    if len({labels[i] for i in train_idx}) < 2 or not test_idx:
        raise DataError(f"{args.train or 'the built-in set'}: nothing to learn or to test on")
    return texts, labels, names, train_idx, test_idx


def _privacy(args, sample_rate: float):
    from mpcft.privacy.accountant import calibrate_noise_multiplier, epsilon
    if not args.dp:
        return None
    sigma = args.noise_multiplier or calibrate_noise_multiplier(args.target_epsilon, args.delta, sample_rate,
                                                                args.rounds)
    return {"noise_multiplier": sigma, "clipping_norm": args.clipping_norm or 1.0, "delta": args.delta,
            "sampling_rate": sample_rate, "rounds": args.rounds, "accountant": "rdp",
            "epsilon": epsilon(sigma, sample_rate, args.rounds, args.delta),
            "epsilon_without_amplification": epsilon(sigma, 1.0, args.rounds, args.delta)}


def _local_privacy(args, rounds: list) -> dict:
    """The clients' local DP-SGD settings and each one's last reported epsilon (example level;
    reported with --aggregation mpc and public counts, see client.train_reply)."""
    latest = {}
    for info in rounds:
        latest.update(info.get("local_epsilon", {}))
    return {"noise_multiplier": args.local_noise_multiplier, "max_grad_norm": args.local_max_grad_norm,
            "delta": args.delta, "accountant": "rdp", "epsilon": dict(sorted(latest.items()))}


def _plot(path, rounds, accuracies, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(rounds, accuracies, marker="o")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _stop(aggregators, timeout: float) -> int:
    """The aggregators' exit status once they have finished (or been stopped)."""
    try:
        return aggregators.wait(timeout)
    except subprocess.TimeoutExpired:
        aggregators.terminate()            # `mpcft launch` stops every party and the dealer
        return aggregators.wait(30) or 1


def run(args, out=sys.stdout) -> int:
    """The whole simulation; returns the exit status (errors as one line on stderr)."""
    import logging

    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation
    from tqdm import tqdm

    from .client import LocalModel, client_app
    from .strategy import Aggregators, SecureFedAvg

    texts, labels, names, train_idx, test_idx = _load(args)
    parts = partition([labels[i] for i in train_idx], args.clients, args.partition, args.alpha, args.seed)
    outdir = pathlib.Path(args.out)
    (outdir / "clients").mkdir(parents=True, exist_ok=True)
    paths = []
    for k, rows in enumerate(parts):
        path = outdir / "clients" / f"client-{k}.json"
        path.write_text(json.dumps({"texts": [texts[train_idx[i]] for i in rows],
                                    "labels": [labels[train_idx[i]] for i in rows]}), "utf-8")
        paths.append(str(path.absolute()))
    sampled = max(math.ceil(args.clients * args.fraction_train), args.min_clients)
    privacy = _privacy(args, sampled / args.clients)
    denominator = expected_weight(args, [len(p) for p in parts], sampled)
    local_dp = args.local_noise_multiplier is not None
    settings = LocalSettings(labels=len(names), mode=args.mode, seq_len=args.seq_len, local_epochs=args.local_epochs,
                             batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                             noise_multiplier=args.local_noise_multiplier or 0.0,
                             max_grad_norm=args.local_max_grad_norm or 1.0, delta=args.delta)
    certs = outdir / "certs"
    secure = args.aggregation == "mpc"
    if secure:
        tls.make_certs(certs, args.aggregators, dealer=True, owners=[f"client-{k}" for k in range(args.clients)])
        tls.make_cert(tls.load_ca(tls.default_ca_dir(certs)), handoff.SERVER_IDENTITY, certs)
    fail = frozenset(int(p) for p in args.fail_clients.split(",") if p)
    clients = client_app(settings, paths, str(certs.absolute()), secure=secure, send_loss=not (args.dp or local_dp),
                         fail=fail)
    test_texts, test_labels = [texts[i] for i in test_idx], np.array([labels[i] for i in test_idx])
    evaluator = LocalModel(settings)
    initial = ArrayRecord({n: v for n, v in evaluator.trainable_state().items()})
    if privacy:           # one client's reach into the aggregate, to which the noise is calibrated
        privacy.update(weighting=weighting(args), weight_cap=args.weight_cap, expected_weight=denominator,
                       sensitivity=aggregation.aggregate_sensitivity(
                           privacy["clipping_norm"], sum(a.numel() for a in evaluator.trainable_state().values()),
                           FRAC_BITS, denominator or sampled, args.weight_cap))
    state = {"error": None, "accuracy": [], "rounds": []}
    bar = tqdm(total=args.rounds, desc="federated rounds", unit="round", file=out, dynamic_ncols=True)

    def evaluate(server_round, arrays):
        accuracy = evaluator.accuracy({n: arrays[n].numpy() for n in arrays}, test_texts, test_labels)
        state["accuracy"].append(accuracy)
        if server_round:
            bar.update(1)
            postfix = {"accuracy": f"{accuracy:.3f}"}
            if privacy:
                from mpcft.privacy.accountant import epsilon
                postfix["epsilon"] = f"{epsilon(privacy['noise_multiplier'], privacy['sampling_rate'], server_round, args.delta):.2f}"
            bar.set_postfix(postfix)
        return MetricRecord({"accuracy": accuracy})

    launches = []             # each `mpcft launch` of the aggregators (a new one after a failure), with its ports

    def launch():
        ports = free_ports(args.aggregators)
        listen = ",".join(f"127.0.0.1:{p}" for p in ports)
        logs = open(outdir / "aggregators.log", "a", encoding="utf-8")     # appends, whichever launch writes
        launches.append((subprocess.Popen(
            [sys.executable, "-m", "mpcft.cli", "launch", "-n", str(args.aggregators), "--dealer",
             "--certs", str(certs), "--timeout", str(args.timeout), "-m", "mpcft.federated.aggregator",
             "--listen", listen, "--server-timeout", str(args.timeout)],
            stdout=logs, stderr=subprocess.STDOUT, start_new_session=True), ports))

    def link():
        return Aggregators.connect([("127.0.0.1", p) for p in launches[-1][1]], certs, timeout=args.timeout,
                                   connect_timeout=args.timeout)

    def relaunch():
        """A fresh aggregator session after one failed: the broken one stopped, a new one linked."""
        _stop(launches[-1][0], 0)
        launch()
        return link()

    if secure:
        (outdir / "aggregators.log").write_text("", "utf-8")
        launch()

    server = ServerApp()

    @server.main()
    def main(grid, context):
        strategy = None
        try:
            common = dict(fraction_train=args.fraction_train, fraction_evaluate=0.0, min_train_nodes=sampled,
                          min_available_nodes=args.clients)
            if secure:
                strategy = SecureFedAvg(link(), weighting=weighting(args), secret_counts=args.secret_counts,
                                        restart_aggregators=relaunch,
                                        weight_cap=args.weight_cap, expected_weight=denominator,
                                        clipping_norm=privacy["clipping_norm"] if privacy else args.clipping_norm,
                                        noise_multiplier=privacy["noise_multiplier"] if privacy else 0.0,
                                        noise_source=args.dp_noise, min_clients=args.min_clients,
                                        on_round=state["rounds"].append, **common)
            else:
                strategy = FedAvg(**common)
            strategy.start(grid=grid, initial_arrays=initial, num_rounds=args.rounds, timeout=args.timeout,
                           train_config=ConfigRecord({"lr": args.lr}), evaluate_fn=evaluate)
        except Exception as exc:     # noqa: BLE001 - reported as one line after the simulation
            state["error"] = exc
        finally:
            if isinstance(strategy, SecureFedAvg) and not strategy.aggregators_failed:
                strategy.aggregators.close()

    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.ERROR)
    started = time.perf_counter()
    run_simulation(server_app=server, client_app=clients, num_supernodes=args.clients,
                   backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"logging_level": "error",
                                                                                     "log_to_driver": False}})
    bar.close()
    elapsed = time.perf_counter() - started
    status = _stop(launches[-1][0], args.timeout if state["error"] is None else 0) if secure else 0
    if state["error"] is not None:
        print(f"mpcft federated: error: {state['error']}", file=sys.stderr)
        return 1
    if status != 0:
        print(f"mpcft federated: error: the aggregators failed (see {outdir / 'aggregators.log'})", file=sys.stderr)
        return 1
    summary = {"clients": args.clients, "rounds": args.rounds, "partition": args.partition,
               "alpha": args.alpha if args.partition == "dirichlet" else None, "aggregation": args.aggregation,
               "aggregators": args.aggregators if secure else 0, "weighting": weighting(args),
               "secret_counts": args.secret_counts, "mode": args.mode, "accuracy": state["accuracy"],
               "final_accuracy": state["accuracy"][-1], "seconds": elapsed, "rounds_detail": state["rounds"],
               "client_rows": [len(p) for p in parts], "aggregator_sessions": len(launches), "privacy": privacy,
               "local_privacy": _local_privacy(args, state["rounds"]) if local_dp else None}
    (outdir / "summary.json").write_text(json.dumps(summary, indent=2, default=str), "utf-8")
    _plot(outdir / "accuracy.png", list(range(len(state["accuracy"]))), state["accuracy"],
          f"{args.aggregation} FedAvg, {args.clients} clients, {args.partition}")
    print(f"accuracy per round: {' '.join(f'{a:.3f}' for a in state['accuracy'])}", file=out)
    if privacy:
        print(f"epsilon {privacy['epsilon']:.3f} at delta {args.delta:g} (client level, sigma "
              f"{privacy['noise_multiplier']:.3f}, q {privacy['sampling_rate']:.2f}, {args.rounds} rounds; "
              f"{privacy['epsilon_without_amplification']:.3f} without amplification by sampling)", file=out)
    if local_dp and summary["local_privacy"]["epsilon"]:
        print(f"local DP-SGD: epsilon up to {max(summary['local_privacy']['epsilon'].values()):.3f} at delta "
              f"{args.delta:g} (example level, sigma {args.local_noise_multiplier:g}, per client in the summary)",
              file=out)
    print(f"wrote {outdir / 'summary.json'} and {outdir / 'accuracy.png'} in {elapsed:.0f} s", file=out)
    return 0
