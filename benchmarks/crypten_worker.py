"""One CrypTen 0.4.1 party, or its trusted third party (TTP), for benchmarks/bench_crypten.py.

Runs ONLY as a script under CrypTen's own virtual environment, launched by bench_crypten.py
with RANK, WORLD_SIZE, RENDEZVOUS (tcp://127.0.0.1:port) and DISTRIBUTED_BACKEND=gloo set
and the crypten_compat directory on PYTHONPATH; it imports neither mpcft nor the benchmarks
package, and mpcft never imports it.

    python crypten_worker.py --workload multiply --repeat 3 --out rank0.json   # a party
    python crypten_worker.py --ttp                                              # the TTP

A party: one compute thread; inputs shared outside the timing; two warm-up runs (as mpcft's
harness, benchmarks/timing.measure_steps); then
`repeat` runs, each started after a barrier with the communicator's statistics reset, timed
by this party. It writes {seconds: [per run], bytes, rounds (of the last run, as CrypTen's
communicator counts them), max_error and off_by_more_than_one (rank 0, against float64 torch)}
as JSON to --out.
"""
if __name__ != "__main__":
    raise ImportError("crypten_worker.py runs only as a script under CrypTen's virtual environment "
                      "(launched by benchmarks/bench_crypten.py)")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import crypten_compat  # noqa: E402  (shims torch.onnx for crypten; must precede crypten)
import torch  # noqa: E402

import crypten  # noqa: E402
import crypten.communicator as comm  # noqa: E402
import crypten.nn  # noqa: E402

BATCH, SEQ, HIDDEN, HEADS, INTERMEDIATE = 4, 64, 256, 4, 1024


WIDE = 1024   # bench_arithmetic.WIDE: the wide multiply's operands are uniform in [-WIDE, WIDE)


def operands(shape_x, shape_y, bound=None):
    """bench_arithmetic's public benchmark operands (same generator, seed, order and law)."""
    gen = torch.Generator().manual_seed(0)
    if bound is None:
        return tuple(torch.randn(shape, generator=gen, dtype=torch.float64) for shape in (shape_x, shape_y))
    return tuple((torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound for shape in (shape_x, shape_y))


def softmax_logits():
    """bench_nonlinear's softmax input: 8x12x128x128 logits uniform in [-15, 15]."""
    gen = torch.Generator().manual_seed(0)
    return torch.rand(8, 12, 128, 128, generator=gen, dtype=torch.float64) * 30 - 15


class LayerNorm(torch.nn.Module):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis, written out so that
    the ONNX export uses ops CrypTen converts (ReduceMean, Pow, Sqrt, Div); random affine
    weights, because the exporter merges equal initialisers into an Identity CrypTen lacks."""

    def __init__(self, width, eps=1e-12):
        super().__init__()
        self.weight = torch.nn.Parameter(1 + 0.1 * torch.randn(width))
        self.bias = torch.nn.Parameter(0.1 * torch.randn(width))
        self.eps = eps

    def forward(self, x):
        centred = x - x.mean(-1, keepdim=True)
        return centred / torch.sqrt((centred ** 2).mean(-1, keepdim=True) + self.eps) * self.weight + self.bias


class BertBlock(torch.nn.Module):
    """A post-LayerNorm BERT encoder layer (as transformers' BertLayer, no attention mask:
    the benchmark's mask is all ones). `exact_gelu` False uses x * sigmoid(1.702 x), since
    CrypTen's erf (a Taylor series) diverges for |x| > ~2 and CrypTen has no GELU."""

    def __init__(self, exact_gelu):
        super().__init__()
        self.exact_gelu = exact_gelu
        self.query, self.key, self.value, self.attention_output = (
            torch.nn.Linear(HIDDEN, HIDDEN) for _ in range(4))
        self.attention_norm = LayerNorm(HIDDEN)
        self.intermediate = torch.nn.Linear(HIDDEN, INTERMEDIATE)
        self.output = torch.nn.Linear(INTERMEDIATE, HIDDEN)
        self.output_norm = LayerNorm(HIDDEN)

    def heads(self, t):
        return t.reshape(BATCH, SEQ, HEADS, HIDDEN // HEADS).transpose(1, 2)

    def gelu(self, t):
        return torch.nn.functional.gelu(t) if self.exact_gelu else t * torch.sigmoid(1.702 * t)

    def forward(self, x):
        q, k, v = self.heads(self.query(x)), self.heads(self.key(x)), self.heads(self.value(x))
        probs = torch.softmax(q.matmul(k.transpose(2, 3)) * (1 / math.sqrt(HIDDEN // HEADS)), -1)
        context = probs.matmul(v).transpose(1, 2).reshape(BATCH, SEQ, HIDDEN)
        a = self.attention_norm(self.attention_output(context) + x)
        return self.output_norm(self.output(self.gelu(self.intermediate(a))) + a)


def plain(z):
    """The revealed value in float64: ring element / 2^16. (CrypTen's own decoder divides
    negatives by 2^16 - 1 first and is off by 1.0 just above a negative integer.)"""
    return z.reveal().double() / z.encoder.scale


def errors(got, expected):
    """(max error, how many results miss by more than 1: a failed truncation, not rounding)."""
    miss = (got - expected).abs()
    return miss.max().item(), int((miss > 1).sum())


def arithmetic(world_size, shape_x, shape_y, op, bound=None):
    """x from party 0, y from the last party (as bench_arithmetic); op on the shares."""
    x, y = operands(shape_x, shape_y, bound)
    xe, ye = crypten.cryptensor(x, src=0), crypten.cryptensor(y, src=world_size - 1)
    return (lambda: op(xe, ye)), (lambda z: errors(plain(z), op(x, y)))


def softmax(world_size):
    x = softmax_logits()
    xe = crypten.cryptensor(x, src=0)
    return (lambda: xe.softmax(-1)), (lambda z: errors(plain(z), torch.softmax(x, -1)))


def block(world_size):
    """Forward and backward of the whole block with every weight trained; error of the
    forward output against the float64 block with exact GELU (same weights)."""
    torch.manual_seed(0)  # public benchmark weights
    reference = BertBlock(exact_gelu=True)
    secure = BertBlock(exact_gelu=False)
    secure.load_state_dict(reference.state_dict())
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, SEQ, HIDDEN, generator=gen, dtype=torch.float64)
    grad = torch.randn(x.shape, generator=gen, dtype=torch.float64) * 0.01
    crypten_compat.patch_crypten_nn()
    model = crypten.nn.from_pytorch(secure, x.float()).encrypt(src=0)
    model.train()
    xe = crypten.cryptensor(x, src=0, requires_grad=True)
    ge = crypten.cryptensor(grad, src=0)

    def forward_backward():
        model.zero_grad()
        xe.grad = None
        out = model(xe)
        out.backward(ge)
        return out
    with torch.no_grad():
        expected = reference.double()(x)
    return forward_backward, lambda z: errors(plain(z), expected)


WORKLOADS = {
    "multiply": lambda n: arithmetic(n, (1_000_000,), (1_000_000,), lambda a, b: a * b),
    "multiply-wide": lambda n: arithmetic(n, (1_000_000,), (1_000_000,), lambda a, b: a * b, WIDE),
    "matmul": lambda n: arithmetic(n, (1024, 1024), (1024, 1024), lambda a, b: a.matmul(b)),
    "softmax": softmax,
    "block": block,
}


def run_party(workload, repeat):
    channel = comm.get()
    rank, world_size = channel.get_rank(), channel.get_world_size()
    run, error_of = WORKLOADS[workload](world_size)
    for _ in range(2):  # warm-up
        run()
    seconds = []
    for _ in range(repeat):
        channel.barrier()
        channel.reset_communication_stats()
        start = time.perf_counter()
        result = run()
        seconds.append(time.perf_counter() - start)
        stats = channel.get_communication_stats()
    error, wrong = error_of(result)
    return {"rank": rank, "seconds": seconds, "bytes": stats["bytes"], "rounds": stats["rounds"],
            "max_error": error if rank == 0 else None, "off_by_more_than_one": wrong if rank == 0 else None}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ttp", action="store_true", help="run the trusted third party")
    parser.add_argument("--workload", choices=sorted(WORKLOADS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    crypten.cfg.mpc.provider = "TTP"        # TFP (the default) deals every triple in every party
    crypten.cfg.communicator.verbose = True  # CrypTen counts rounds and bytes only when verbose
    if args.ttp:
        crypten.mpc.provider.TTPServer()     # serves party 0's requests until crypten.uninit()
        return
    if args.workload is None or args.out is None:
        parser.error("a party needs --workload and --out")
    crypten.init()
    figures = run_party(args.workload, args.repeat)
    crypten.uninit()
    with open(args.out, "w") as f:
        json.dump(figures, f)


main()
