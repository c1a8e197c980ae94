"""Non-linear protocols between real party processes on loopback (mutual TLS), one thread each.

    python -m benchmarks.bench_nonlinear [--parties 2 3] [--repeat 3] [--only relu softmax ...]

Per function: median wall time (after warm-up steps, each run a step that asks the dealer ahead,
timing.measure_steps), payload bytes each party sends, rounds, the dealer's bytes to
all parties together (its corrections), max error against float64 torch and the plaintext torch
time. CrypTen is measured beside mpcft in the same run by benchmarks.bench_side_by_side.
"""
import argparse
import torch

from benchmarks.timing import markdown_table, measure_steps, median_seconds, one_compute_thread
from mpcft.protocols import activations, comparison, exponential, layernorm, reciprocal, sharing, softmax
from mpcft.protocols.context import MPCContext
from mpcft.protocols.correlations import CorrelationDealer
from mpcft.runtime import spawn

N = 8 * 12 * 128 * 128  # 1.57M elements


def _inputs(name):
    gen = torch.Generator().manual_seed(0)  # public benchmark data
    if name in ("softmax", "exp"):
        x = torch.rand(8, 12, 128, 128, generator=gen, dtype=torch.float64) * 30 - 15
        return x - x.amax(-1, keepdim=True) if name == "exp" else x
    if name == "reciprocal":
        return 10 ** (torch.rand(N, generator=gen, dtype=torch.float64) * 6 - 2)
    if name == "layernorm":
        return torch.randn(8, 128, 384, generator=gen, dtype=torch.float64) * 2 + 0.5
    return torch.randn(N, generator=gen, dtype=torch.float64) * 4


FUNCTIONS = {  # name: (protocol on shares, plaintext reference)
    "relu": (lambda ctx, x: comparison.relu(ctx, x, bits=32), torch.relu),
    "gelu": (lambda ctx, x: activations.gelu(ctx, x), torch.nn.functional.gelu),
    "exp": (lambda ctx, x: exponential.exp(ctx, x), torch.exp),
    "reciprocal": (lambda ctx, x: reciprocal.reciprocal(ctx, x), torch.reciprocal),
    "softmax": (lambda ctx, x: softmax.softmax(ctx, x), lambda x: torch.softmax(x, -1)),
    "layernorm": (lambda ctx, x: layernorm.layernorm(ctx, x)[0],
                  lambda x: torch.nn.functional.layer_norm(x, x.shape[-1:], eps=1e-12)),
}


def party(session, name, repeat):
    one_compute_thread()
    ctx = MPCContext(session)
    x = _inputs(name)
    share = sharing.share(ctx, ctx.fp.encode(x) if ctx.rank == 0 else None, 0, x.shape)
    fn = FUNCTIONS[name][0]
    seconds, counts, y = measure_steps(session, ctx, lambda: fn(ctx, share), repeat)
    error = (ctx.fp.decode(sharing.open_(ctx, y)) - FUNCTIONS[name][1](x)).abs().max().item()
    return seconds, counts.bytes_sent, counts.rounds, error, counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parties", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--plaintext", action="store_true",
                        help="INSECURE plaintext channels (to compare with engines that have no TLS)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", nargs="+", default=list(FUNCTIONS))
    args = parser.parse_args()
    rows = []
    for name in args.only:
        x = _inputs(name)
        torch.set_num_threads(1)
        plain = median_seconds(lambda: FUNCTIONS[name][1](x), args.repeat)
        for n in args.parties:
            results = spawn(party, n, name, args.repeat, dealer_handler=CorrelationDealer,
                            dealer_threads=1, tls=not args.plaintext, timeout=1200)
            seconds = max(r[0] for r in results)
            dealer = sum(r[4].dealer_bytes_received for r in results)
            rows.append([name, tuple(x.shape), n, f"{seconds:.2f}", f"{max(r[1] for r in results) / 1e6:.1f}",
                         results[0][2], f"{dealer / 1e6:.1f}", f"{max(r[3] for r in results):.1e}",
                         f"{plain:.4f}"])
            print(rows[-1], flush=True)
    print(f"\nchannels: {'PLAINTEXT (insecure)' if args.plaintext else 'mutual TLS 1.3'}\n")
    print(markdown_table(["function", "shape", "parties", "mpcft s", "MB sent/party", "rounds",
                          "dealer MB (all parties)", "max error", "plaintext s"], rows))


if __name__ == "__main__":
    main()
