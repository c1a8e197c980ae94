"""The Flower App for deployments: `server_app` and `client_app` run by Flower's own SuperLink,
SuperNodes and `flwr run`, with mpcft aggregator parties (`mpcft party ... -m
mpcft.federated.aggregator`) on their own hosts.

`mpcft flower-app --out DIR ...` (flower_app.write_flower_app) writes DIR/pyproject.toml naming
these components, with the run configuration (aggregator addresses, certificates, rounds, clipping, DP, local training);
every key can be overridden with `flwr run DIR --run-config 'key=value'`. Each SuperNode gets
its own data and certificates in its node config:
  flower-supernode --superlink HOST:8000 --node-config 'client="client-0" train="a.csv" certs="certs"'
"""
import json
import pathlib

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from mpcft.data.files import read_labelled

from .client import MODES, LocalModel, LocalSettings, train_reply
from .flower_app import DEFAULTS
from .strategy import Aggregators, SecureFedAvg

def _settings(run_config) -> LocalSettings:
    mode = str(run_config["mode"])
    if mode not in MODES:
        raise ValueError(f"run config mode must be one of {MODES}, got {mode!r}")
    return LocalSettings(labels=len(str(run_config["labels"]).split(",")), mode=mode,
                         seq_len=int(run_config["seq-len"]), local_epochs=int(run_config["local-epochs"]),
                         batch_size=int(run_config["batch-size"]), lr=float(run_config["lr"]),
                         seed=int(run_config["seed"]), noise_multiplier=float(run_config["local-noise-multiplier"]),
                         max_grad_norm=float(run_config["local-max-grad-norm"]), delta=float(run_config["delta"]))


def _endpoints(text: str) -> list:
    out = []
    for entry in text.split(","):
        host, _, port = entry.strip().rpartition(":")
        out.append((host, int(port)))
    return out


client_app = ClientApp()


@client_app.train()
def _train(msg, context):
    node, run = context.node_config, context.run_config
    texts, labels, _ = read_labelled(str(node["train"]), str(run["text-column"]), str(run["label-column"]),
                                     str(run["labels"]).split(","))
    print(f"{node['client']}: round {msg.content['config']['server-round']}: training on {len(texts)} rows",
          flush=True)
    settings = _settings(run)
    return train_reply(msg, settings, texts, labels, str(node["client"]), str(node["certs"]),
                       secure=True, send_loss=not (float(run["noise-multiplier"]) or settings.noise_multiplier),
                       state=context.state)


server_app = ServerApp()


@server_app.main()
def _main(grid, context):
    run = dict(DEFAULTS, **context.run_config)
    settings = _settings(run)
    names = str(run["labels"]).split(",")
    model = LocalModel(settings)
    accuracies = []
    evaluate_fn = None
    if run["test"]:
        test_texts, test_labels, _ = read_labelled(str(run["test"]), str(run["text-column"]),
                                                   str(run["label-column"]), names)

        def evaluate(server_round, arrays):
            accuracies.append(model.accuracy({n: arrays[n].numpy() for n in arrays}, test_texts, test_labels))
            print(f"round {server_round}: test accuracy {accuracies[-1]:.3f}", flush=True)
            return MetricRecord({"accuracy": accuracies[-1]})
        evaluate_fn = evaluate

    def link():              # the aggregators; again after one failed (their supervisor restarts them)
        return Aggregators.connect(_endpoints(str(run["aggregators"])), str(run["certs"]),
                                   timeout=float(run["timeout"]), connect_timeout=float(run["timeout"]))

    strategy = SecureFedAvg(link(), weighting=str(run["weighting"]), secret_counts=bool(run["secret-counts"]),
                            clipping_norm=float(run["clipping-norm"]) or None,
                            noise_multiplier=float(run["noise-multiplier"]), noise_source=str(run["dp-noise"]),
                            weight_cap=int(run["weight-cap"]) or None,
                            expected_weight=float(run["expected-weight"]) or None,
                            min_clients=int(run["min-clients"]), fraction_train=float(run["fraction-train"]),
                            fraction_evaluate=0.0, min_train_nodes=int(run["min-clients"]),
                            min_available_nodes=int(run["min-available-clients"]), restart_aggregators=link,
                            on_round=lambda info: print(f"round {info['round']}: {info.get('used', 0)} clients "
                                                        f"aggregated, {info['failed']} failed"
                                                        + (f" ({info['skipped']})" if "skipped" in info else ""),
                                                        flush=True))
    try:
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.trainable_state()),
                                num_rounds=int(run["num-server-rounds"]), timeout=float(run["timeout"]),
                                train_config=ConfigRecord({}), evaluate_fn=evaluate_fn)
    finally:
        if not strategy.aggregators_failed:
            strategy.aggregators.close()
    out = pathlib.Path(str(run["out"]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"accuracy": accuracies, "rounds_detail": strategy.history,
                                                  "run_config": run}, indent=2, default=str), "utf-8")
    import safetensors.torch
    import torch
    safetensors.torch.save_file({n: torch.from_numpy(result.arrays[n].numpy()).contiguous() for n in result.arrays},
                                str(out / "global.safetensors"))
    print(f"wrote {out / 'summary.json'} and {out / 'global.safetensors'}", flush=True)
