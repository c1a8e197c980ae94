"""An aggregator party: one of the m compute parties that average the clients' sealed updates.

Started as any mpcft party (`mpcft launch` / `mpcft party ... -m mpcft.federated.aggregator`),
it listens for the Flower server (handoff), then every round: checks that all parties got the
same request, opens the sealed parts addressed to it (updates.open_update), agrees with the
others on the clients whose parts every party accepted, runs aggregation.secure_fedavg and
sends its share of the aggregate back. A part that fails its checks leaves its client out of
the round (and is reported); fewer than min_clients ends the round with an error; a failed
peer ends the run on every side within the session's timeout.
"""
import argparse
import hashlib
import json
import os
import sys

import torch

from mpcft.protocols.context import MPCContext
from mpcft.runtime import init
from mpcft.runtime.envelope import SealedFileError

from . import aggregation, handoff
from .updates import FRAC_BITS, MAX_COUNT, MAX_VALUE, RING_BYTES, Round, UpdateSpec, open_update

MAX_CLIENTS = 1 << 16
MAX_DIMS = 64                 # extents of one array in a layout (numpy's limit)


class RequestError(ValueError):
    """The server's round request is malformed (a one-line reason)."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _field(header: dict, name: str, kind, check=lambda v: True):
    value = header.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool or not check(value):
        raise RequestError(f"the round request's {name!r} is missing or invalid: {value!r}")
    return value


def parse_request(header: dict, max_body: int) -> dict:
    """The checked fields of a round request (RequestError on anything malformed)."""
    layout = _field(header, "layout", list, lambda v: len(v) <= 1 << 12)
    try:                  # strict types: JSON may hold Infinity, floats, strings as extents
        names = tuple(n for n, _ in layout)
        shapes = tuple(tuple(shape) for _, shape in layout)
    except (TypeError, ValueError):
        raise RequestError("the round request's layout is not a list of [name, shape]") from None
    if not all(isinstance(n, str) for n in names) or \
            not all(isinstance(shape, tuple) and len(shape) <= MAX_DIMS and all(map(_is_int, shape))
                    for shape in shapes):
        raise RequestError("the round request's layout is not a list of [name, [integer extents]]")
    if any(s < 0 for shape in shapes for s in shape) or len(set(names)) != len(names):
        raise RequestError("the round request's layout has negative extents or repeated names")
    spec = UpdateSpec(names, shapes)
    if any(s > max_body for shape in shapes for s in shape) or spec.numel * RING_BYTES > max_body:
        raise RequestError(f"the round request's layout has more values than the hand-off bound "
                           f"({max_body} bytes) allows")
    parts = _field(header, "parts", list, lambda v: len(v) <= MAX_CLIENTS)
    try:
        parts = [(c, n) for c, n in parts]
    except (TypeError, ValueError):
        raise RequestError("the round request's parts are not a list of [client, bytes]") from None
    if not all(isinstance(c, str) and _is_int(n) and 0 <= n <= max_body for c, n in parts):
        raise RequestError("the round request's parts are not a list of [client, bytes]")
    if len({c for c, _ in parts}) != len(parts):
        raise RequestError("the round request lists a client twice")
    weighting = _field(header, "weighting", str, lambda v: v in aggregation.WEIGHTINGS)
    secret = _field(header, "secret_counts", bool)
    request = {"round": Round(_field(header, "federation", str), _field(header, "round", int, lambda v: v >= 1),
                              spec, secret, _field(header, "frac_bits", int, lambda v: 8 <= v <= 24)),
               "parts": parts, "weighting": weighting,
               "planned_clients": _field(header, "planned_clients", int, lambda v: 1 <= v <= MAX_CLIENTS),
               "min_clients": _field(header, "min_clients", int, lambda v: 1 <= v <= MAX_CLIENTS),
               "clipping_norm": _field(header, "clipping_norm", (int, float), lambda v: 0 <= v < MAX_VALUE) or None,
               "noise_multiplier": float(_field(header, "noise_multiplier", (int, float), lambda v: 0 <= v < 1e6)),
               "noise_source": _field(header, "noise_source", str, lambda v: v in ("dealer", "parties")),
               "weight_cap": _field(header, "weight_cap", int, lambda v: 0 <= v <= MAX_COUNT) or None,
               "expected_weight": _field(header, "expected_weight", (int, float),
                                         lambda v: 0 <= v <= MAX_CLIENTS) or None}
    if request["noise_multiplier"] and (weighting == "examples" or not request["clipping_norm"]):
        raise RequestError("the round request asks for noise without a clipping norm and uniform or capped weights")
    if weighting == "capped":
        try:
            aggregation.check_capped(request["weight_cap"], request["clipping_norm"], len(parts),
                                     request["round"].frac_bits)
        except ValueError as exc:
            raise RequestError(f"the round request's capped weights cannot be computed: {exc}") from None
    return request


def _agreed(session, value: bytes) -> bool:
    digest = torch.frombuffer(bytearray(hashlib.sha256(value).digest()), dtype=torch.uint8)
    return all(torch.equal(d, digest) for d in session.all_gather(digest))


def aggregate_round(ctx, request: dict, body: bytes, key, ca) -> tuple[torch.Tensor, list, dict]:
    """(this party's share of the aggregate, clients used, {client: why left out})."""
    round_, parts = request["round"], request["parts"]
    if ctx.frac_bits != round_.frac_bits:     # clip bounds and noise are encoded in the session's scale
        raise RequestError(f"the round's updates have {round_.frac_bits} fractional bits, this aggregator "
                           f"{ctx.frac_bits} (start it with --frac-bits {round_.frac_bits})")
    if sum(n for _, n in parts) != len(body):
        raise RequestError("the round request's part lengths do not add up to its body")
    opened, rejected, start = [], {}, 0
    for client, length in parts:
        blob, start = body[start:start + length], start + length
        try:
            share = open_update(blob, round_, ctx.rank, key, ca, f"{client}'s update")
            if share.client != client:
                raise SealedFileError(f"the part listed for {client} is signed by {share.client}")
            opened.append(share)
        except SealedFileError as exc:
            opened.append(None)
            rejected[client] = str(exc)
    mine = torch.tensor([s is not None for s in opened], dtype=torch.uint8)
    accepted = torch.stack(ctx.session.all_gather(mine)).min(0).values.bool()
    for (client, _), ok in zip(parts, accepted.tolist()):
        if not ok:
            rejected.setdefault(client, "refused by another aggregator")
    used = [s for s, ok in zip(opened, accepted.tolist()) if ok]
    if len(used) < request["min_clients"]:
        raise RequestError(f"round {round_.number}: {len(used)} usable updates, fewer than the minimum "
                           f"{request['min_clients']}")
    counts = None if round_.secret_counts else [s.count for s in used]
    share = aggregation.secure_fedavg(
        ctx, torch.stack([s.share for s in used]), counts=counts, weighting=request["weighting"],
        planned_clients=request["planned_clients"], clipping_norm=request["clipping_norm"],
        noise_multiplier=request["noise_multiplier"], noise_source=request["noise_source"],
        weight_cap=request["weight_cap"], expected_weight=request["expected_weight"])
    return share, [s.client for s in used], rejected


def serve(ctx, sock, key, ca, max_body: int = handoff.DEFAULT_MAX_BODY_BYTES) -> int:
    """Answer the Flower server's rounds until it says done; returns the rounds served."""
    server, served = "the Flower server", 0
    while True:
        header, body = handoff.recv_message(sock, server, max_body)
        done = header.get("type") == "done"
        if not _agreed(ctx.session, json.dumps({k: v for k, v in header.items() if k != "parts"} |
                                               {"clients": [p[0] for p in header.get("parts", [])]},
                                               sort_keys=True, default=str).encode()):
            handoff.send_message(sock, {"type": "error", "message": "the aggregators got different requests"})
            raise handoff.HandoffError("the aggregators got different requests from the Flower server")
        if done:
            return served
        try:
            request = parse_request(header, max_body)
            with ctx.step("aggregate"):
                share, used, rejected = aggregate_round(ctx, request, body, key, ca)
        except RequestError as exc:
            handoff.send_message(sock, {"type": "error", "round": header.get("round"), "message": str(exc)})
            continue
        handoff.send_message(sock, {"type": "result", "round": request["round"].number, "clients": used,
                                    "rejected": rejected, "numel": int(share.numel())},
                             share.cpu().numpy().astype("<i8").tobytes(), server)
        served += 1


def _endpoint(text: str, rank: int) -> tuple[str, int]:
    entries = text.split(",")
    entry = entries[0] if len(entries) == 1 else entries[rank]
    host, _, port = entry.rpartition(":")
    return host or "0.0.0.0", int(port)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="mpcft.federated.aggregator",
                                     description="An aggregator party of mpcft's secure FedAvg for Flower.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--listen", required=True,
                        help="HOST:PORT where this party waits for the Flower server (a comma-separated "
                             "list indexed by rank for local runs)")
    parser.add_argument("--server-timeout", type=float, default=600.0,
                        help="seconds to wait for the Flower server's connection and each request")
    parser.add_argument("--frac-bits", type=int, default=FRAC_BITS,
                        help="fractional bits of the fixed point, as the clients and SecureFedAvg encode")
    parser.add_argument("--max-body-bytes", type=int, default=handoff.DEFAULT_MAX_BODY_BYTES,
                        help="largest request body (the sealed parts of one round) accepted")
    args = parser.parse_args(argv)
    try:
        with init() as session:
            config = session.config
            ctx = MPCContext(session, frac_bits=args.frac_bits)
            me = config.party(session.rank)
            host, port = _endpoint(args.listen, session.rank)
            sock = handoff.accept_server(host, port, config.ca, me.cert, me.key, args.server_timeout)
            print(f"aggregator {session.rank} (pid {os.getpid()}): the Flower server connected", flush=True)
            with sock:
                rounds = serve(ctx, sock, me.key, config.ca, args.max_body_bytes)
            print(f"aggregator {session.rank}: served {rounds} round{'s' * (rounds != 1)}", flush=True)
    except (OSError, ValueError) as exc:      # MPCRuntimeError: reported by `mpcft party`
        print(f"mpcft aggregator: error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
