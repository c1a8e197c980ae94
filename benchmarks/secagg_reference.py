"""Flower's own SecAgg+ (SecAggPlusWorkflow + secaggplus_mod), run for real in Flower's simulation
engine, with the bytes of every message and the time of every stage measured at the server.

Used by benchmarks.bench_federated as the reference for mpcft's secure aggregation. The
ClientApp is Flower's legacy NumPyClient behind `secaggplus_mod`; its fit returns a random
d-vector in the given layout (float32, as a model's arrays), so the cost is that of the
protocol, not of training. The ServerApp is Flower's `DefaultWorkflow(fit_workflow=
SecAggPlusWorkflow(...))` with FedAvg (initial parameters given, no evaluation).

Bytes: the ServerApp's Grid is wrapped; every Message it sends and every reply it gets is
serialized with Flower's own protobuf serde (`flwr.common.serde.message_to_proto`, metadata
and content: what the SuperLink<->SuperNode gRPC link carries, before gRPC/HTTP2/TLS framing)
and its `ByteSize()` is added to the destination's (or source's) download (upload), per stage.
Time: the wall time of each of the four stages at the server (the whole round = their sum),
which includes the clients' work (2 concurrent Ray actors on this machine) and the server's
unmasking.
"""
import logging
import os
import pathlib
import statistics
import time

import numpy as np

STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")


class _CountingGrid:
    """A Grid that measures the serialized size of what passes through send_and_receive."""

    def __init__(self, grid, tally):
        self._grid, self._tally = grid, tally
        self.stage = "other"

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *args, **kwargs):
        from flwr.common.serde import message_to_proto
        messages = list(messages)
        replies = list(self._grid.send_and_receive(messages, *args, **kwargs))
        stage = self._tally.setdefault(self.stage, {"down": {}, "up": {}, "messages": 0})
        for msg in messages:
            node = msg.metadata.dst_node_id
            stage["down"][node] = stage["down"].get(node, 0) + message_to_proto(msg).ByteSize()
        for msg in replies:
            node = msg.metadata.src_node_id
            stage["up"][node] = stage["up"].get(node, 0) + message_to_proto(msg).ByteSize()
        stage["messages"] += len(messages) + len(replies)
        return replies


def _workflow_class():
    from flwr.server.workflow import SecAggPlusWorkflow

    class TimedSecAggPlus(SecAggPlusWorkflow):
        """SecAggPlusWorkflow that records each stage's wall time and names the stage for the grid."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.times = []          # per round: {stage: seconds}
            self.config = {}

        def _timed(self, name, method, grid, context, state):
            if isinstance(grid, _CountingGrid):
                grid.stage = f"round{len(self.times) - 1}/{name}"
            start = time.perf_counter()
            ok = method(grid, context, state)
            self.times[-1][name] = time.perf_counter() - start
            if name == "setup":
                self.config = {"num_shares": state.num_shares, "threshold": state.threshold,
                               "clipping_range": state.clipping_range, "quantization_range": state.quantization_range,
                               "mod_range": state.mod_range, "max_weight": state.max_weight}
            return ok

        def setup_stage(self, grid, context, state):
            self.times.append({})
            return self._timed("setup", super().setup_stage, grid, context, state)

        def share_keys_stage(self, grid, context, state):
            return self._timed("share_keys", super().share_keys_stage, grid, context, state)

        def collect_masked_vectors_stage(self, grid, context, state):
            return self._timed("collect_masked_vectors", super().collect_masked_vectors_stage, grid, context, state)

        def unmask_stage(self, grid, context, state):
            return self._timed("unmask", super().unmask_stage, grid, context, state)

    return TimedSecAggPlus


def _client_app(shapes):
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod

    class RandomUpdateClient(NumPyClient):
        def __init__(self, pid):
            self.pid = pid

        def fit(self, parameters, config):
            rng = np.random.default_rng(1000 + self.pid)
            arrays = [(a + rng.normal(0.0, 0.01, a.shape)).astype(np.float32) for a in parameters]
            return arrays, 10 + self.pid, {}

    def client_fn(context):
        return RandomUpdateClient(int(context.node_config["partition-id"])).to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod])


def run_secaggplus(shapes: list, clients: int, rounds: int = 1, num_shares=3, reconstruction_threshold=2,
                   max_weight: float = 1000.0) -> dict:
    """Run `rounds` SecAgg+ FedAvg rounds with `clients` simulated clients on arrays of `shapes`;
    returns per-round bytes (per client and server totals), stage times and the configuration."""
    from flwr.common import ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow
    from flwr.simulation import run_simulation

    rng = np.random.default_rng(0)
    initial = [rng.normal(0.0, 0.02, s).astype(np.float32) for s in shapes]
    tally, result = {}, {}
    workflow = _workflow_class()(num_shares=num_shares, reconstruction_threshold=reconstruction_threshold,
                                 max_weight=max_weight)
    server = ServerApp()

    @server.main()
    def main(grid, context):
        try:
            strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=clients,
                              min_available_clients=clients, initial_parameters=ndarrays_to_parameters(initial))
            legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
            DefaultWorkflow(fit_workflow=workflow)(_CountingGrid(grid, tally), legacy)
            arrays = legacy.state.array_records
            result["final"] = arrays
        except Exception as exc:      # noqa: BLE001 - reported after the simulation
            result["error"] = exc

    # Ray's workers import this module by name: let them find the repository
    root = str(pathlib.Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.ERROR)
    started = time.perf_counter()
    run_simulation(server_app=server, client_app=_client_app(shapes), num_supernodes=clients,
                   backend_config={"client_resources": {"num_cpus": 1},
                                   "init_args": {"logging_level": "error", "log_to_driver": False}})
    elapsed = time.perf_counter() - started
    if "error" in result:
        raise RuntimeError(f"SecAgg+ run failed: {result['error']!r}")
    if len(workflow.times) != rounds or any(len(t) != len(STAGES) for t in workflow.times):
        raise RuntimeError(f"SecAgg+ did not complete its {rounds} rounds (stage times {workflow.times})")
    per_round = []
    for r in range(rounds):
        stages = {s: tally.get(f"round{r}/{s}", {"down": {}, "up": {}, "messages": 0}) for s in STAGES}
        down = {}
        up = {}
        for s in STAGES:
            for node, b in stages[s]["down"].items():
                down[node] = down.get(node, 0) + b
            for node, b in stages[s]["up"].items():
                up[node] = up.get(node, 0) + b
        per_round.append({
            "client_down": statistics.median(down.values()), "client_up": statistics.median(up.values()),
            "client_down_max": max(down.values()), "client_up_max": max(up.values()),
            "server_out": sum(down.values()), "server_in": sum(up.values()),
            "messages": sum(stages[s]["messages"] for s in STAGES),
            "stage_up": {s: statistics.median(stages[s]["up"].values()) for s in STAGES},
            "stage_down": {s: statistics.median(stages[s]["down"].values()) for s in STAGES},
            "seconds": sum(workflow.times[r].values()), "stage_seconds": workflow.times[r]})
    return {"clients": clients, "rounds": per_round, "config": workflow.config, "simulation_s": elapsed,
            "other_bytes": {k: v for k, v in tally.items() if not k.startswith("round")}}


if __name__ == "__main__":       # a quick look: python -m benchmarks.secagg_reference K
    import json
    import sys
    out = run_secaggplus([(384, 8), (8, 384), (3,)], int(sys.argv[1]) if len(sys.argv) > 1 else 5, rounds=2)
    print(json.dumps(out, indent=1, default=str))
