"""SecureFedAvg: Flower's FedAvg strategy with the mpcft aggregator parties doing the averaging.

A Flower user swaps `FedAvg(...)` for `SecureFedAvg(Aggregators.connect(...), ...)` in the
ServerApp. Each round the strategy sends the global arrays as FedAvg does; the clients
(client.py, or any ClientApp that calls updates.seal_update) reply with sealed parts of their
update instead of arrays; the strategy relays part r of every reply to aggregator r
(handoff), sums the m shares of the aggregate they return and adds it to the global arrays.
The Flower server sees ciphertexts and the aggregate only. Clients that fail or miss the
round's deadline are simply not in it (their contributions are complete on their own, so
nothing needs recovering); fewer than min_clients usable updates skips the round with an
error line. A failed aggregator ends the round (its session is gone on every side): with
restart_aggregators the strategy links to a fresh aggregator session before the next round,
without it the run ends.
"""
import pathlib
import secrets
import time

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp.strategy import FedAvg

from mpcft.kernels import FixedPoint
from mpcft.runtime.errors import PeerError

from . import handoff
from .updates import FRAC_BITS, RING_BYTES, Round, UpdateSpec

REPLY_KEY = "mpcft"          # the reply's ConfigRecord: {"client": name, "sealed": [part 0, ..., part m-1]}


class AggregatorError(RuntimeError):
    """An aggregator failed or answered with an error: the run cannot go on."""


class Aggregators:
    """The Flower server's TLS links to the m aggregator parties."""

    def __init__(self, sockets: list):
        self.sockets = sockets

    @classmethod
    def connect(cls, endpoints, certs, timeout: float = 600.0, connect_timeout: float = 60.0) -> "Aggregators":
        """endpoints [(host, port)] of aggregators 0..m-1; certs: a folder with ca.pem and
        flower-server(-key).pem issued by the cluster CA. Retries until connect_timeout."""
        certs = pathlib.Path(certs)
        ca, cert, key = certs / "ca.pem", certs / f"{handoff.SERVER_IDENTITY}.pem", certs / f"{handoff.SERVER_IDENTITY}-key.pem"
        deadline, sockets = time.monotonic() + connect_timeout, []
        for rank, (host, port) in enumerate(endpoints):
            while True:
                try:
                    sockets.append(handoff.connect_aggregator(host, port, rank, ca, cert, key, timeout))
                    break
                except PeerError:
                    if time.monotonic() > deadline:
                        for sock in sockets:
                            sock.close()
                        raise
                    time.sleep(0.2)
        return cls(sockets)

    def __len__(self) -> int:
        return len(self.sockets)

    def aggregate(self, header: dict, parts: list, numel: int) -> tuple[np.ndarray, list, dict]:
        """(the sum of the aggregators' shares [numel] int64, clients used, rejected) for one
        round; parts[r] = [(client, sealed part for aggregator r)]."""
        for rank, sock in enumerate(self.sockets):
            body = b"".join(blob for _, blob in parts[rank])
            try:
                handoff.send_message(sock, dict(header, parts=[[c, len(b)] for c, b in parts[rank]]), body,
                                     f"aggregator {rank}")
            except handoff.HandoffError as exc:
                raise AggregatorError(f"aggregator {rank} failed in round {header['round']}: {exc}") from None
        total, used, rejected, errors = np.zeros(numel, dtype=np.int64), None, {}, []
        for rank, sock in enumerate(self.sockets):
            try:
                reply, body = handoff.recv_message(sock, f"aggregator {rank}", numel * RING_BYTES)
            except handoff.HandoffError as exc:
                raise AggregatorError(f"aggregator {rank} failed in round {header['round']}: {exc}") from None
            if reply.get("type") == "error":
                errors.append(f"aggregator {rank}: {reply.get('message')}")
                continue
            if reply.get("type") != "result" or reply.get("round") != header["round"] or len(body) != numel * RING_BYTES:
                raise AggregatorError(f"aggregator {rank} sent a malformed reply in round {header['round']}")
            if used is not None and reply.get("clients") != used:
                raise AggregatorError(f"the aggregators used different clients in round {header['round']}")
            used = reply.get("clients")
            rejected.update(reply.get("rejected") or {})
            with np.errstate(over="ignore"):
                total += np.frombuffer(body, dtype="<i8").astype(np.int64)     # shares add mod 2^64
        if errors:
            raise RoundSkipped("; ".join(errors))
        return total, used, rejected

    def close(self, done: bool = True) -> None:
        """Close the links, first telling every aggregator the run is done (done) or not (a
        broken session: the survivors see the link close and end)."""
        for rank, sock in enumerate(self.sockets):
            try:
                if done:
                    handoff.send_message(sock, {"type": "done"}, b"", f"aggregator {rank}")
            except handoff.HandoffError:
                pass
            sock.close()


class RoundSkipped(RuntimeError):
    """The aggregators refused the round (too few usable updates): the global model stays."""


class SecureFedAvg(FedAvg):
    """FedAvg whose aggregation runs in MPC (mpcft.federated.aggregation.secure_fedavg).

    weighting "examples" (n_k / n, as FedAvg; secret_counts keeps n_k from everyone), "uniform"
    (1/K, K the clients sampled: DP-FedAvg) or "capped" (min(n_k, weight_cap) / (weight_cap D),
    D = expected_weight, the public expected sum of min(n_k / weight_cap, 1) over a round's
    clients, q W in McMahan et al. 2018; default K; n_k public or secret); clipping_norm C clips
    each update in MPC; noise_multiplier sigma adds N(0, (sigma C')^2) to the sum, no party knowing it.
    restart_aggregators: a callable returning new Aggregators (a fresh aggregator session), called
    before the round after one in which an aggregator failed; None: such a failure ends the run.
    """

    def __init__(self, aggregators: Aggregators, *, weighting: str = "examples", secret_counts: bool = False,
                 clipping_norm: float | None = None, noise_multiplier: float = 0.0, noise_source: str = "dealer",
                 weight_cap: int | None = None, expected_weight: float | None = None,
                 frac_bits: int = FRAC_BITS, min_clients: int = 1, on_round=None, restart_aggregators=None,
                 **fedavg):
        super().__init__(**fedavg)
        self.aggregators, self.weighting, self.secret_counts = aggregators, weighting, secret_counts
        self.weight_cap, self.expected_weight = weight_cap, expected_weight
        self.restart_aggregators, self.aggregators_failed = restart_aggregators, False
        self.clipping_norm, self.noise_multiplier, self.noise_source = clipping_norm, noise_multiplier, noise_source
        self.frac_bits, self.min_clients, self.on_round = frac_bits, min_clients, on_round
        self.federation = secrets.token_hex(16)
        self._sent: dict = {}
        self.history: list = []

    def configure_train(self, server_round, arrays, config, grid):
        if self.aggregators_failed:           # the last round lost an aggregator: a fresh session
            self.aggregators, self.aggregators_failed = self.restart_aggregators(), False
        config = ConfigRecord(dict(config, **{"mpcft-federation": self.federation,
                                             "mpcft-secret-counts": self.secret_counts,
                                             "mpcft-frac-bits": self.frac_bits,
                                             "mpcft-aggregators": len(self.aggregators)}))
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._sent[server_round] = (arrays, len(messages))
        return messages

    def _skip(self, info: dict, reason: str, **extra):
        """A round that leaves the global model as it was (FedAvg's (None, None))."""
        info.update(skipped=reason, **extra)
        self.history.append(info)
        if self.on_round:
            self.on_round(info)
        return None, None

    def aggregate_train(self, server_round, replies):
        arrays, planned = self._sent.pop(server_round)
        replies = list(replies)
        valid = [m for m in replies if not m.has_error() and REPLY_KEY in m.content]
        state = {name: arrays[name].numpy() for name in arrays}
        spec = UpdateSpec.of(state)
        round_ = Round(self.federation, server_round, spec, self.secret_counts, self.frac_bits)
        parts = [[] for _ in range(len(self.aggregators))]
        for message in valid:
            record = message.content[REPLY_KEY]
            sealed = list(record["sealed"])
            if len(sealed) != len(self.aggregators):
                continue
            for rank, blob in enumerate(sealed):
                parts[rank].append((str(record["client"]), bytes(blob)))
        header = {"type": "round", "federation": round_.federation, "round": server_round,
                  "layout": [[n, list(s)] for n, s in zip(spec.names, spec.shapes)],
                  "frac_bits": self.frac_bits, "secret_counts": self.secret_counts,
                  "weighting": self.weighting, "planned_clients": max(planned, 1),
                  "min_clients": self.min_clients,
                  "clipping_norm": self.clipping_norm or 0.0, "noise_multiplier": self.noise_multiplier,
                  "noise_source": self.noise_source, "weight_cap": self.weight_cap or 0,
                  "expected_weight": self.expected_weight or 0.0}
        started = time.perf_counter()
        info = {"round": server_round, "sampled": planned, "replied": len(valid),
                "failed": len(replies) - len(valid)}
        try:
            total, used, rejected = self.aggregators.aggregate(header, parts, spec.numel)
        except AggregatorError as exc:
            if self.restart_aggregators is None:
                raise
            self.aggregators.close(done=False)
            self.aggregators_failed = True
            return self._skip(info, str(exc), aggregator_failed=True)
        except RoundSkipped as exc:
            return self._skip(info, str(exc))
        delta = FixedPoint(self.frac_bits).decode(torch.from_numpy(total))
        new = {name: torch.from_numpy(np.asarray(state[name], dtype=np.float64)) + d
               for name, d in spec.unflatten(delta).items()}
        info.update(used=len(used), clients=used, rejected=rejected, aggregation_s=time.perf_counter() - started,
                    parts_bytes=sum(len(b) for rank_parts in parts for _, b in rank_parts))
        local = {str(m.content[REPLY_KEY]["client"]): float(m.content["metrics"]["local-epsilon"]) for m in valid
                 if "metrics" in m.content and "local-epsilon" in m.content["metrics"]}
        if local:                 # the clients' own local DP-SGD epsilon (example level)
            info.update(local_epsilon=local)
        losses = [float(m.content["metrics"]["train_loss"]) for m in valid
                  if "metrics" in m.content and "train_loss" in m.content["metrics"]]
        metrics = MetricRecord({"train_loss": float(np.mean(losses)) if losses else 0.0,
                                "clients": len(used)})
        self.history.append(info)
        if self.on_round:
            self.on_round(info)
        return ArrayRecord({n: v.to(torch.from_numpy(np.asarray(state[n])).dtype) for n, v in new.items()}), metrics
