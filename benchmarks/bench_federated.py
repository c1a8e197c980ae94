"""Cost of one federated round: mpcft's secure FedAvg (SecureFedAvg + aggregator parties) beside
Flower's own SecAgg+ (SecAggPlusWorkflow + secaggplus_mod) on the same K and model size.

    python -m benchmarks.bench_federated [--clients 10 50 100] [--clipping-norm 1.0] [--repeat 3]
                                         [--json /tmp/bench_federated.json]

Model size: the update mpcft's client trains in mode "lora" on MiniLM (LoRA rank 8 on query and
value of its 6 layers, 2 x 384 x 8 each, and a 3-label head): d = 74,883 values, random here
(cost does not depend on the values). Weights n_k public (Flower's FedAvg weighting).

mpcft side, every step the real code:
  download  SecureFedAvg.configure_train's Message (the global arrays, float32, and the config),
  seal      updates.seal_update per client (timed), its reply Message {"mpcft": sealed parts,
            "metrics"}; message sizes are Flower's protobuf serialization (serde.message_to_proto
            .ByteSize(): metadata and content), as on the SecAgg+ side;
  relay     SecureFedAvg.aggregate_train with an Aggregators whose sockets count bytes: the
            hand-off messages (handoff.send_message: header and body) to and from each aggregator,
  MPC       aggregator.aggregate_round (open the parts, agree on the clients, secure_fedavg) at m
            aggregator processes (runtime.spawn: real processes, loopback TCP with mutual TLS, one
            compute thread each, a CorrelationDealer process with one thread), its wall time
            (median of --repeat runs in one session; 1 run with clipping at K > 10), the payload
            bytes and rounds of runtime.comm (tensor bytes; frame headers in the JSON), dealer bytes.
  The result is checked against plaintext FedAvg (with clipping: of the clamped, clipped updates).
  The aggregators' MPCContext uses the request's frac_bits (16, SecureFedAvg's), not MPCContext's
  default (20).
SecAgg+ side: benchmarks.secagg_reference, Flower's simulation engine (Ray, 1 CPU per client),
--secagg-rounds rounds, the first a warm-up (Ray actors start), medians of the rest; configs
num_shares:threshold 3:2 (Flower's example app) and "log" (2 ceil(log2 K) + 1 neighbours, majority
threshold, the O(log K) degree of Bell et al. 2020). Its stage times include the clients' work
(K clients on 2 Ray actors here) and the in-memory grid's 0.1 s polling.
Bytes exclude TLS records and gRPC/HTTP2 framing on both sides.
"""
import argparse
import json
import math
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

from benchmarks.timing import markdown_table, one_compute_thread

HIDDEN, LAYERS, RANK, LABELS = 384, 6, 8, 3
D = 74_883


def layout() -> dict:
    """name -> shape of MiniLM's LoRA (rank 8, query and value, 6 layers) plus head arrays."""
    shapes = {}
    for i in range(LAYERS):
        for proj in ("query", "value"):
            base = f"encoder.base_model.model.encoder.layer.{i}.attention.self.{proj}"
            shapes[f"{base}.lora_A.default.weight"] = (RANK, HIDDEN)
            shapes[f"{base}.lora_B.default.weight"] = (HIDDEN, RANK)
    shapes["head.weight"] = (LABELS, HIDDEN)
    shapes["head.bias"] = (LABELS,)
    assert sum(int(np.prod(s)) for s in shapes.values()) == D
    return shapes


class _Nodes:
    """Flower's Grid as far as a strategy's sampling asks it (as in tests/federated)."""

    def __init__(self, count):
        self.nodes = list(range(1, count + 1))

    def get_node_ids(self):
        return self.nodes


class _CountingSocket:
    def __init__(self):
        self.sent = 0

    def sendall(self, data):
        self.sent += len(data)


def _msg_bytes(message) -> int:
    from flwr.common.serde import message_to_proto
    return message_to_proto(message).ByteSize()


# ---------------------------------------------------------------------------------------------
# the aggregator parties (spawned processes)

def aggregator_party(session, header, bodies, certs, repeat):
    """At aggregator `rank`: `repeat` runs of aggregate_round on the server's request; returns
    (seconds per run, comm counts of the last run, seconds to open the parts alone, share bytes,
    clients used, rejected)."""
    from mpcft.federated.aggregator import aggregate_round, parse_request
    from mpcft.federated.handoff import DEFAULT_MAX_BODY_BYTES
    from mpcft.federated.updates import open_update
    from mpcft.protocols.context import MPCContext
    one_compute_thread()
    ctx = MPCContext(session, frac_bits=int(header["frac_bits"]))   # the clients' fixed point (16 bits)
    certs = pathlib.Path(certs)
    key, ca = certs / f"party-{ctx.rank}-key.pem", certs / "ca.pem"
    request = parse_request(header, DEFAULT_MAX_BODY_BYTES)
    body = bodies[ctx.rank]
    start, offset = time.perf_counter(), 0
    for client, length in request["parts"]:          # the opening alone (also inside aggregate_round)
        open_update(body[offset:offset + length], request["round"], ctx.rank, key, ca, client)
        offset += length
    open_s = time.perf_counter() - start
    times = []
    for _ in range(repeat):
        before = session.comm.snapshot()
        start = time.perf_counter()
        share, used, rejected = aggregate_round(ctx, request, body, key, ca)
        times.append(time.perf_counter() - start)
        delta = (session.comm.snapshot() - before).total
    counts = {f: getattr(delta, f) for f in ("bytes_sent", "bytes_received", "wire_bytes_sent",
                                             "wire_bytes_received", "rounds", "dealer_bytes_sent",
                                             "dealer_bytes_received", "dealer_requests")}
    return times, counts, open_s, share.cpu().numpy().astype("<i8").tobytes(), used, rejected


class MeasuredAggregators:
    """Stands in for strategy.Aggregators: the hand-off messages are written (by handoff's own
    send_message) to byte-counting sockets, the m aggregators run in spawned processes."""

    def __init__(self, m, certs, repeat, timeout):
        self.m, self.certs, self.repeat, self.timeout = m, certs, repeat, timeout
        self.result = None

    def __len__(self):
        return self.m

    def aggregate(self, header, parts, numel):
        from mpcft.federated import handoff
        from mpcft.federated.strategy import AggregatorError
        from mpcft.protocols.correlations import CorrelationDealer
        from mpcft.runtime import spawn
        headers, bodies, to_agg = [], [], []
        for rank in range(self.m):
            body = b"".join(blob for _, blob in parts[rank])
            request = dict(header, parts=[[c, len(b)] for c, b in parts[rank]])
            sock = _CountingSocket()
            handoff.send_message(sock, request, body, f"aggregator {rank}")
            headers.append(request)
            bodies.append(body)
            to_agg.append(sock.sent)
        # every aggregator gets its own request (same header apart from the part lengths)
        results = spawn(_party_entry, self.m, headers, bodies, str(self.certs), self.repeat,
                        dealer_handler=CorrelationDealer, dealer_threads=1, timeout=self.timeout)
        total, used, rejected, from_agg = np.zeros(numel, dtype=np.int64), None, {}, []
        for rank, (_, _, _, share, got, refused) in enumerate(results):
            if used is not None and got != used:
                raise AggregatorError("the aggregators used different clients")
            used = got
            rejected.update(refused)
            sock = _CountingSocket()
            handoff.send_message(sock, {"type": "result", "round": header["round"], "clients": got,
                                        "rejected": refused, "numel": numel}, share, "the Flower server")
            from_agg.append(sock.sent)
            with np.errstate(over="ignore"):
                total += np.frombuffer(share, dtype="<i8").astype(np.int64)
        self.result = {"to_aggregator": to_agg, "from_aggregator": from_agg,
                       "parties": [{"seconds": r[0], "comm": r[1], "open_s": r[2]} for r in results]}
        return total, used, rejected


def _party_entry(session, headers, bodies, certs, repeat):
    return aggregator_party(session, headers[session.rank], bodies, certs, repeat)


def _reference(updates, counts, clip):
    """Plaintext FedAvg of the updates (values clamped to [-C, C] and clipped to norm C first)."""
    u = updates.clone()
    if clip:
        u = u.clamp(-clip, clip)
        u = u * (clip / u.norm(dim=1, keepdim=True)).clamp(max=1.0)
    w = torch.tensor(counts, dtype=torch.float64)
    return (w[:, None] * u).sum(0) / w.sum()


def run_mpcft(clients, m, clips, certs, repeat, timeout, seed=0):
    """Rows of measurements for K = clients, m aggregators, each clipping norm in clips (None: off)."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from mpcft.federated.strategy import REPLY_KEY, SecureFedAvg
    from mpcft.federated.updates import Round, UpdateSpec, seal_update
    shapes = layout()
    gen = torch.Generator().manual_seed(seed)
    global_arrays = {n: (torch.randn(s, generator=gen) * 0.02).float() for n, s in shapes.items()}
    spec = UpdateSpec.of({n: v.numpy() for n, v in global_arrays.items()})
    # random updates ~ N(0, 0.01^2) per value: norm ~ 2.7, so a clipping norm of 1 clips them all
    updates = [{n: torch.randn(s, generator=gen, dtype=torch.float64) * 0.01 for n, s in shapes.items()}
               for _ in range(clients)]
    counts = [10 + k for k in range(clients)]
    flat = torch.stack([spec.flatten(u) for u in updates])
    federation, sealed, seal_s, rows = None, None, [], []
    for clip in clips:
        aggs = MeasuredAggregators(m, certs, repeat if (clip is None or clients <= 10) else 1, timeout)
        strategy = SecureFedAvg(aggs, clipping_norm=clip, fraction_train=1.0, fraction_evaluate=0.0,
                                min_train_nodes=clients, min_available_nodes=clients)
        if federation is None:
            federation = strategy.federation
        strategy.federation = federation           # the same sealed parts serve both clipping settings
        messages = list(strategy.configure_train(1, ArrayRecord(global_arrays), ConfigRecord({}), _Nodes(clients)))
        down = [_msg_bytes(msg) for msg in messages]
        config = messages[0].content["config"]
        round_ = Round(str(config["mpcft-federation"]), int(config["server-round"]), spec,
                       bool(config["mpcft-secret-counts"]), int(config["mpcft-frac-bits"]))
        if sealed is None:
            sealed = []
            for k in range(clients):
                start = time.perf_counter()
                sealed.append(seal_update(updates[k], counts[k], round_, f"client-{k}", certs, m))
                seal_s.append(time.perf_counter() - start)
        replies = [Message(RecordDict({REPLY_KEY: ConfigRecord({"client": f"client-{k}", "sealed": sealed[k]}),
                                       "metrics": MetricRecord({"num-examples": counts[k], "train_loss": 1.0})}),
                           reply_to=msg) for k, msg in enumerate(messages)]
        up = [_msg_bytes(r) for r in replies]
        start = time.perf_counter()
        new, _ = strategy.aggregate_train(1, replies)
        server_s = time.perf_counter() - start
        if new is None:
            raise RuntimeError(f"K={clients} m={m}: the round was skipped: {strategy.history[-1]}")
        got = torch.cat([(torch.as_tensor(new[n].numpy(), dtype=torch.float64)
                          - global_arrays[n].double()).reshape(-1) for n in spec.names])
        error = float((got - _reference(flat, counts, clip)).abs().max())
        info = aggs.result
        seconds = [statistics.median(p["seconds"]) for p in info["parties"]]
        rows.append({"clients": clients, "aggregators": m, "clipping_norm": clip, "d": spec.numel,
                     "seal_s": statistics.median(seal_s), "parts": [len(p) for p in sealed[0]],
                     "client_up_raw": sum(len(p) for p in sealed[0]), "client_up": statistics.median(up),
                     "client_down": statistics.median(down),
                     "server_out": sum(down) + sum(info["to_aggregator"]),
                     "server_in": sum(up) + sum(info["from_aggregator"]),
                     "to_aggregator": info["to_aggregator"], "from_aggregator": info["from_aggregator"],
                     "mpc_s": max(seconds), "mpc_runs": len(info["parties"][0]["seconds"]),
                     "open_s": [p["open_s"] for p in info["parties"]],
                     "comm": [p["comm"] for p in info["parties"]],
                     "strategy_s": server_s, "max_error": error})
        print(f"# mpcft K={clients} m={m} clip={clip}: MPC {max(seconds):.2f} s, error {error:.2e}",
              file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------------------------------------

def _mb(b):
    return f"{b / 1e6:.2f}" if b >= 1e4 else f"{b / 1e6:.4f}"


def _kb(b):
    return f"{b / 1e3:.1f}"


def _secagg_config(spec: str, clients: int) -> tuple[int, int]:
    """(num_shares, reconstruction_threshold) of a --secagg-configs entry for K clients."""
    if spec == "log":
        shares = min(2 * math.ceil(math.log2(clients)) + 1, clients)
        return shares, shares // 2 + 1
    shares, threshold = (int(v) for v in spec.split(":"))
    return shares, threshold


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100], help="K values")
    parser.add_argument("--aggregators", type=int, default=2, help="m for every K")
    parser.add_argument("--three-aggregator-clients", type=int, nargs="*", default=[10, 50],
                        help="K values also run with m = 3")
    parser.add_argument("--clipping-norm", type=float, default=1.0,
                        help="C of the clipped runs (each setting also runs without clipping)")
    parser.add_argument("--repeat", type=int, default=3, help="MPC runs per setting (median; 1 with clipping at K > 10)")
    parser.add_argument("--secagg-rounds", type=int, default=3, help="SecAgg+ rounds per K (the first is a warm-up)")
    parser.add_argument("--secagg-configs", nargs="+", default=["3:2", "log"],
                        help="SecAgg+ num_shares:reconstruction_threshold pairs; 'log' is 2*ceil(log2 K)+1 "
                             "shares and a majority threshold (3:2 is Flower's example)")
    parser.add_argument("--skip-secagg", action="store_true")
    parser.add_argument("--skip-mpcft", action="store_true")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--json", help="also write every measurement here (e.g. /tmp/bench_federated.json)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    mpc_rows, sa_rows = [], []
    if not args.skip_mpcft:
        from flwr.common.constant import SUPERLINK_NODE_ID
        from flwr.supercore.task_identity import TaskIdentity

        from mpcft.runtime import tls
        # what Flower sets in a ServerApp's process (the strategy builds its Messages here)
        identity = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SUPERLINK_NODE_ID, 1
        with tempfile.TemporaryDirectory(prefix="bench-federated-") as tmp:
            certs = tls.make_certs(pathlib.Path(tmp) / "certs", 3, dealer=False, days=2,
                                   owners=[f"client-{k}" for k in range(max(args.clients + args.three_aggregator_clients))])
            settings = [(k, args.aggregators) for k in args.clients] + [(k, 3) for k in args.three_aggregator_clients]
            for k, m in settings:
                mpc_rows += run_mpcft(k, m, [None, args.clipping_norm], certs, args.repeat, args.timeout)
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = identity
    if not args.skip_secagg:
        from benchmarks.secagg_reference import run_secaggplus
        shapes = list(layout().values())
        for spec in args.secagg_configs:
            for k in args.clients:
                shares, threshold = _secagg_config(spec, k)
                out = run_secaggplus(shapes, k, rounds=args.secagg_rounds, num_shares=shares,
                                     reconstruction_threshold=threshold)
                steady = out["rounds"][1:] or out["rounds"]
                row = {"clients": k, "spec": spec, "config": out["config"], "first_round": out["rounds"][0],
                       "simulation_s": out["simulation_s"], "measured_rounds": len(steady)}
                for key in ("client_up", "client_down", "server_in", "server_out", "seconds", "messages"):
                    row[key] = statistics.median(r[key] for r in steady)
                row["stage_seconds"] = {s: statistics.median(r["stage_seconds"][s] for r in steady)
                                        for s in steady[0]["stage_seconds"]}
                row["stage_up"], row["stage_down"] = steady[-1]["stage_up"], steady[-1]["stage_down"]
                sa_rows.append(row)
                print(f"# SecAgg+ K={k}: round {row['seconds']:.2f} s ({out['config']})", file=sys.stderr, flush=True)
    print_tables(mpc_rows, sa_rows, args)
    print("\nmpcft: client up = the reply Message with the m sealed parts; MPC/dealer bytes = tensor payload "
          "(runtime.comm); time = aggregate_round (open, agree, secure_fedavg) in spawned aggregator processes "
          "with TLS. SecAgg+: every Message of the 4 stages, protobuf-serialized; time = the 4 stages at the "
          "server, clients included. Neither counts TLS/gRPC framing.")
    print(f"\n(total benchmark wall time {time.perf_counter() - started:.0f} s)")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"mpcft": mpc_rows, "secaggplus": sa_rows}, indent=1,
                                                      default=str), "utf-8")


def print_tables(mpc_rows, sa_rows, args):
    clip = lambda c: f"C={c:g}" if c else "none"      # noqa: E731
    if mpc_rows or sa_rows:
        print(f"\n### Cost per round, d = {D:,} (MiniLM LoRA r8 q,v x 6 layers + 3-label head)\n")
        rows = []
        for r in mpc_rows:
            rows.append([f"mpcft, m={r['aggregators']}", r["clients"], clip(r["clipping_norm"]), 1,
                         f"{r['seal_s'] * 1e3:.0f}", _kb(r["client_up"]), _kb(r["client_down"]),
                         _mb(r["server_in"]), _mb(r["server_out"]),
                         _mb(sum(c["bytes_sent"] for c in r["comm"])),
                         _mb(sum(c["dealer_bytes_received"] for c in r["comm"])), r["comm"][0]["rounds"],
                         f"{r['mpc_s']:.2f} (MPC)", f"{r['max_error']:.1e}"])
        for r in sa_rows:
            rows.append([f"SecAgg+, shares={r['config']['num_shares']}, t={r['config']['threshold']}",
                         r["clients"], f"none (clamp ±{r['config']['clipping_range']:g})", 4, "",
                         _kb(r["client_up"]), _kb(r["client_down"]), _mb(r["server_in"]), _mb(r["server_out"]),
                         "", "", "", f"{r['seconds']:.2f} (round)", ""])
        print(markdown_table(["protocol", "K", "clipping", "client↔server msgs", "seal ms/client",
                              "client up kB", "client down kB", "server in MB", "server out MB",
                              "MPC MB sent (all aggs)", "dealer→aggs MB", "MPC rounds", "time s", "max |err|"],
                             rows))
    if mpc_rows:
        print("\n### mpcft, per aggregator (payload bytes; MPC = between the aggregators)\n")
        rows = []
        for r in mpc_rows:
            for rank, c in enumerate(r["comm"]):
                rows.append([r["clients"], r["aggregators"], clip(r["clipping_norm"]), rank,
                             _mb(r["to_aggregator"][rank]), _mb(r["from_aggregator"][rank]),
                             _mb(c["bytes_sent"]), _mb(c["bytes_received"]), c["rounds"],
                             _mb(c["dealer_bytes_received"]), _mb(c["dealer_bytes_sent"]),
                             f"{r['open_s'][rank]:.2f}"])
        print(markdown_table(["K", "m", "clipping", "aggregator", "from server MB", "to server MB", "MPC sent MB",
                              "MPC recv MB", "MPC rounds", "dealer→agg MB", "agg→dealer MB", "open parts s"], rows))
        print("\n### mpcft: MPC aggregation wall time (s) as K grows: aggregate_round, slowest aggregator, "
              "median of the runs (runs in brackets)\n")
        ks = sorted({r["clients"] for r in mpc_rows})
        settings = sorted({(r["aggregators"], r["clipping_norm"] or 0) for r in mpc_rows})
        table = []
        for m, c in settings:
            by_k = {r["clients"]: r for r in mpc_rows if r["aggregators"] == m and (r["clipping_norm"] or 0) == c}
            table.append([f"m={m}, clipping {clip(c)}"] +
                         [f"{by_k[k]['mpc_s']:.2f} ({by_k[k]['mpc_runs']})" if k in by_k else "" for k in ks])
        print(markdown_table(["setting"] + [f"K={k}" for k in ks], table))
    if sa_rows:
        print("\n### SecAgg+ per stage: median client message kB up / down, server-side stage wall s "
              f"(median of rounds 2..{args.secagg_rounds}; round 1 = warm-up, Ray actors start)\n")
        rows = []
        for r in sa_rows:
            label = f"K={r['clients']}, shares={r['config']['num_shares']}, t={r['config']['threshold']}"
            for stage, secs in r["stage_seconds"].items():
                rows.append([label, stage, _kb(r["stage_up"][stage]), _kb(r["stage_down"][stage]), f"{secs:.2f}"])
            rows.append([label, "round 1 (warm-up), whole", _kb(r["first_round"]["client_up"]),
                         _kb(r["first_round"]["client_down"]), f"{r['first_round']['seconds']:.2f}"])
        print(markdown_table(["run", "stage", "client up kB", "client down kB", "s"], rows))


if __name__ == "__main__":
    main()
