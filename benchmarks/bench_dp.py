"""The cost of differential privacy: a DP-SGD step under MPC beside the same step without DP,
and beside Opacus on the same step in plaintext.

    python -m benchmarks.bench_dp [--parties 2 3] [--repeat 3]
    python -m benchmarks.bench_dp --routes [--parties 2] [--repeat 3]

MiniLM classifier, LoRA (rank 4) on the top layer plus the head, batch 8, seq 64: one step of
forward, cross-entropy, backward, optimizer. The DP step also keeps per-example gradients,
clips them on shares (Beaver squares, inverse square root, one comparison per example), draws
dealer noise and divides by the expected batch size (mpcft.privacy.DPOptimizer, sigma 1, C 1).
Plaintext: torch float64, one thread; its DP step is Opacus's DPOptimizer on per-example
gradients from torch.func. One compute thread per party and for the dealer, mutual TLS,
median of `repeat` runs after a warm-up run with the dealer's correlations prefetched.

--routes: one Linear layer's clipping alone (norms and clipped sum) by the ghost route and by
forming its per-example gradients (mpcft.privacy.ghost), for MiniLM's dense shape and LoRA's,
beside the declared costs.
"""
import argparse
import copy
import statistics
import time

import torch

from benchmarks.bench_block import _share
from benchmarks.timing import markdown_table, measure_protocol, one_compute_thread
from mpcft.nn import SGD, Classifier, prepare
from mpcft.nn.classifier import GRAD_SCALE
from mpcft.nn.functional import cross_entropy
from mpcft.nn.grad_sample import LinearFactors
from mpcft.privacy import DPOptimizer, ghost
from mpcft.privacy.dp_sgd import norm_shift, row_squares, weighted_rows
from mpcft.protocols.context import MPCContext
from mpcft.protocols.correlations import CorrelationDealer
from mpcft.runtime import spawn

BATCH, SEQ = 8, 64
# (name, (B, T, in_features, out_features)) of one Linear layer's per-example gradients
LAYER_SHAPES = [("MiniLM dense 384 -> 384", (BATCH, SEQ, 384, 384)),
                ("LoRA A 384 -> 8", (BATCH, SEQ, 384, 8)), ("LoRA B 8 -> 384", (BATCH, SEQ, 8, 384))]


def _batch(hidden):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(BATCH, SEQ, hidden, generator=gen, dtype=torch.float64)
    return x, torch.arange(BATCH) % 3


def party_step(session, encoder, dp, repeat):
    """(median s, bytes sent, rounds, dealer bytes received) of one LoRA step, DP or not."""
    one_compute_thread()
    ctx = MPCContext(session)
    model = prepare(Classifier(ctx, encoder, 3, mpc_layers=1), "lora")
    x, y = _batch(encoder.config.hidden_size)
    xs, ys = _share(ctx, x), _share(ctx, torch.nn.functional.one_hot(y, 3).double())
    ms = _share(ctx, torch.ones(BATCH, SEQ), bits=True)
    if dp:
        model.track_per_example()
        optimizer = DPOptimizer(SGD(model.trainable_parameters(), lr=0.01, grad_scale=1), noise_multiplier=1.0,
                                max_grad_norm=1.0, expected_batch_size=BATCH, loss_scale=model.grad_scale)
    else:
        optimizer = SGD(model.trainable_parameters(), lr=0.01, grad_scale=model.grad_scale)

    def step():
        with ctx.step("train"):
            cross_entropy(model(xs, ms), ys, value=False).backward(model.grad_scale)
            optimizer.step()
            optimizer.zero_grad()
    step()
    before = session.comm.snapshot()
    seconds, sent, rounds, _ = measure_protocol(session, step, repeat)
    dealer = (session.comm.snapshot() - before).dealer_bytes_received / repeat
    return seconds, sent, rounds, dealer


def party_routes(session, shape, repeat):
    """({route: (median s, bytes sent, rounds, dealer bytes received)}, threshold, shift) of one
    layer's clipping."""
    one_compute_thread()
    ctx = MPCContext(session)
    batch, positions, in_features, out_features = shape
    gen = torch.Generator().manual_seed(3)
    x = _share(ctx, torch.randn(batch, positions, in_features, generator=gen, dtype=torch.float64)).share
    g = _share(ctx, torch.randn(batch, positions, out_features, generator=gen, dtype=torch.float64)).share
    weight = _share(ctx, torch.rand(batch, generator=gen, dtype=torch.float64)).share
    factors = LinearFactors(x, g)
    threshold = 1.0 * GRAD_SCALE / batch
    shift = norm_shift(threshold, in_features * out_features, ctx.frac_bits)

    def ghost_route():
        ghost.ghost_squared_norms(ctx, [factors], threshold, shift)
        ghost.ghost_weighted_sums(ctx, [factors], weight, 0)

    def formed_route():
        rows = factors.materialise(ctx).reshape(batch, -1)
        row_squares(ctx, rows, shift)
        weighted_rows(ctx, weight, rows, 0)
    out = {}
    for name, route in (("ghost", ghost_route), ("formed", formed_route)):
        route()
        before = session.comm.snapshot()
        seconds, sent, rounds, _ = measure_protocol(session, route, repeat)
        out[name] = (seconds, sent, rounds, (session.comm.snapshot() - before).dealer_bytes_received / repeat)
    return out, threshold, shift


def routes_table(parties, repeat):
    rows = []
    for n in parties:
        for name, shape in LAYER_SHAPES:
            results = spawn(party_routes, n, shape, repeat, dealer_handler=CorrelationDealer,
                            dealer_threads=1, timeout=3600)
            measured, threshold, shift = max(results, key=lambda r: r[0]["ghost"][0])
            declared = {"ghost": (ghost.ghost_cost(n, *shape, threshold, shift, 0),
                                  ghost.ghost_norm_dealer_bytes(*shape, threshold, shift) + ghost.ghost_sum_dealer_bytes(*shape, 0)),
                        "formed": (ghost.formed_cost(n, *shape, shift, 0), ghost.formed_dealer_bytes(*shape, shift, 0))}
            chosen = "ghost" if ghost.prefer_ghost(n, *shape, threshold, shift, 0) else "formed"
            for route, (s, sent, rounds, _) in measured.items():
                cost, dealer_declared = declared[route]
                dealer = sum(r[0][route][3] for r in results)       # each party receives its runs
                rows.append([name, route + (" (chosen)" if route == chosen else ""), n, f"{s:.3f}",
                             f"{sent / 1e6:.2f}", f"{cost.bytes_sent / 1e6:.2f}", rounds, cost.rounds,
                             f"{dealer / 1e6:.2f}", f"{dealer_declared / 1e6:.2f}"])
                print(rows[-1], flush=True)
    print()
    print(markdown_table(["layer (B 8, T 64)", "route", "parties", "s", "MB sent/party", "declared MB",
                          "rounds", "declared rounds", "dealer MB (all parties)", "declared dealer MB"], rows))


def plaintext_step_seconds(encoder, dp, repeat):
    from opacus.optimizers import DPOptimizer as OpacusDPOptimizer
    from mpcft.finetune.plaintext import _LoRA, _Model, _per_example_gradients
    torch.set_num_threads(1)
    encoder = copy.deepcopy(encoder)
    top = encoder.encoder.layer[-1]
    for p in encoder.parameters():
        p.requires_grad_(False)
    adapters = [(_LoRA(top.attention.self.query, 4, 8.0, 0), _LoRA(top.attention.self.value, 4, 8.0, 0))]
    hidden = encoder.config.hidden_size
    model = _Model([top], adapters, encoder.config.num_attention_heads,
                   torch.nn.Parameter(torch.zeros(3, hidden, dtype=torch.float64)),
                   torch.nn.Parameter(torch.zeros(3, dtype=torch.float64)))
    trained = {name: p for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.SGD(trained.values(), lr=0.01, momentum=0.9)
    if dp:
        optimizer = OpacusDPOptimizer(optimizer, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=BATCH)
    x, y = _batch(hidden)
    mask = torch.ones(BATCH, SEQ, dtype=torch.int64)
    times = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        optimizer.zero_grad()
        if dp:
            samples = _per_example_gradients(model, {n: p.detach() for n, p in trained.items()}, x, mask, y)
            for name, p in trained.items():
                p.grad_sample = samples[name]
        else:
            torch.nn.functional.cross_entropy(model(x, mask), y).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parties", type=int, nargs="+", default=[2, 3], help="party counts (default: 2 3)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per workload (default: 3)")
    parser.add_argument("--routes", action="store_true",
                        help="measure one Linear layer's ghost and formed clipping instead (default: off)")
    args = parser.parse_args()
    if args.routes:
        routes_table(args.parties, args.repeat)
        return
    from mpcft.encoder import default_model_path, load_encoder, quiet_transformers
    quiet_transformers()
    _, encoder = load_encoder(default_model_path())
    rows = []
    plain = {dp: plaintext_step_seconds(encoder, dp, args.repeat) for dp in (False, True)}
    for n in args.parties:
        measured = {}
        for dp in (False, True):
            results = spawn(party_step, n, encoder, dp, args.repeat, dealer_handler=CorrelationDealer,
                            dealer_threads=1, timeout=3600)
            # the slowest party's time and most bytes; each party receives its runs of the corrections
            measured[dp] = (max(r[0] for r in results), max(r[1] for r in results), results[0][2],
                            sum(r[3] for r in results))
            s, sent, rounds, dealer = measured[dp]
            rows.append([f"LoRA step, batch {BATCH}, seq {SEQ}" + (", DP-SGD" if dp else ""), n, f"{s:.2f}",
                         f"{sent / 1e6:.0f}", rounds, f"{dealer / 1e6:.0f}",
                         f"{plain[dp]:.3f}" + (" (Opacus)" if dp else "")])
            print(rows[-1], flush=True)
        (s0, b0, r0, _), (s1, b1, r1, _) = measured[False], measured[True]
        rows.append(["DP / non-DP", n, f"{s1 / s0:.2f}x", f"{b1 / b0:.2f}x", f"{r1 / r0:.2f}x", "",
                     f"{plain[True] / plain[False]:.2f}x"])
    print()
    print(markdown_table(["workload", "parties", "mpcft s", "MB sent/party", "rounds", "dealer MB (all parties)",
                          "plaintext torch s"], rows))


if __name__ == "__main__":
    main()
