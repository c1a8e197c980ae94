"""A Transformer block's forward + backward under MPC, and fine-tuning steps, beside plaintext.

    python -m benchmarks.bench_block [--parties 2 3] [--repeat 2]

Block: hidden 256, 4 heads, seq 64, batch 4, every weight trained (beside CrypTen, measured in
the same run: benchmarks.bench_side_by_side). Steps: one fine-tuning step of the MiniLM
classifier (batch 8, seq 64) in each mode, beside the same step in float64 torch (one
thread). One compute thread per party, dealer at one thread, mutual TLS; each measured run
follows two warm-up runs (timing.WARMUP_STEPS) and prefetches its dealer correlations, as
`mpcft finetune` does (`with ctx.step(...)`).
"""
import argparse
import copy
import statistics
import time

import torch
from transformers import BertConfig, BertModel

from benchmarks.timing import markdown_table, measure_warm, one_compute_thread
from mpcft.nn import SGD, Classifier, prepare, train_module
from mpcft.nn.bert import BertLayer
from mpcft.nn.functional import cross_entropy
from mpcft.protocols.context import MPCContext
from mpcft.protocols.correlations import CorrelationDealer
from mpcft.runtime import spawn
from mpcft.tensor import SharedTensor


def block_model():
    torch.manual_seed(0)  # public benchmark weights
    config = BertConfig(hidden_size=256, num_attention_heads=4, intermediate_size=1024,
                        num_hidden_layers=1, attn_implementation="eager")
    return BertModel(config).double().eval()


def _inputs(batch, seq, hidden):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, seq, hidden, generator=gen, dtype=torch.float64)
    return x, torch.ones(batch, seq, dtype=torch.int64), torch.randn(x.shape, generator=gen, dtype=torch.float64) * 0.01


def _share(ctx, value, bits=False):
    """Party 0's benchmark input as a SharedTensor (bits: 0/1 integers, frac_bits 0)."""
    return SharedTensor.from_plain(ctx, value if ctx.rank == 0 else None, 0, tuple(value.shape),
                                   frac_bits=0 if bits else None)


def block_step(ctx, model):
    """The block's forward and backward on party 0's shared inputs, as one step."""
    layer = BertLayer(ctx, model.encoder.layer[0], 4)
    train_module(layer)
    x, mask, grad = _inputs(4, 64, 256)
    xs, ms, gs = _share(ctx, x), _share(ctx, mask, bits=True), _share(ctx, grad)
    xs.requires_grad_()

    def forward_backward():
        with ctx.step("block"):
            layer(xs, ms[:, None, None, :]).backward(gs)
    return forward_backward


def party_block(session, model, repeat, opening="all"):
    one_compute_thread()
    forward_backward = block_step(MPCContext(session, opening=opening), model)
    seconds, counts, _ = measure_warm(session, forward_backward, repeat)
    return seconds, counts.bytes_sent, counts.rounds, counts


def training_step(ctx, encoder, mode, layers):
    """One fine-tuning step of the MiniLM classifier (batch 8, seq 64) on shared inputs."""
    model = prepare(Classifier(ctx, encoder, 3, mpc_layers=layers), mode)
    optimizer = SGD(model.trainable_parameters(), lr=0.01, grad_scale=model.grad_scale)
    hidden, seq, batch = encoder.config.hidden_size, 64, 8
    gen = torch.Generator().manual_seed(2)
    x = torch.randn((batch, hidden) if mode == "head" else (batch, seq, hidden), generator=gen, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.arange(batch) % 3, 3).double()
    xs, ys = _share(ctx, x), _share(ctx, y)
    ms = _share(ctx, torch.ones(batch, seq), bits=True) if mode != "head" else None

    def step():
        with ctx.step("train"):
            cross_entropy(model(xs, ms), ys, value=False).backward(model.grad_scale)
            optimizer.step()
            optimizer.zero_grad()
    return step


def party_step(session, encoder, mode, layers, repeat):
    one_compute_thread()
    step = training_step(MPCContext(session), encoder, mode, layers)
    seconds, counts, _ = measure_warm(session, step, repeat)
    return seconds, counts.bytes_sent, counts.rounds, counts


def plaintext_step_seconds(encoder, mode, layers, repeat):
    """The same training step in float64 torch (autograd, SGD), median of `repeat`."""
    from mpcft.finetune.plaintext import _LoRA, _layer
    torch.set_num_threads(1)
    encoder = copy.deepcopy(encoder)   # trained in place below
    config = encoder.config
    hidden, seq, batch = config.hidden_size, 64, 8
    gen = torch.Generator().manual_seed(2)
    x = torch.randn((batch, hidden) if mode == "head" else (batch, seq, hidden), generator=gen, dtype=torch.float64)
    y = torch.arange(batch) % 3
    mask = torch.ones(batch, seq, dtype=torch.int64)
    top = list(encoder.encoder.layer[config.num_hidden_layers - layers:]) if layers else []
    adapters = [(_LoRA(l.attention.self.query, 4, 8.0, 0), _LoRA(l.attention.self.value, 4, 8.0, 0))
                for l in top] if mode == "lora" else []
    head = torch.nn.Linear(hidden, 3).double()
    params = list(head.parameters()) + [p for pair in adapters for a in pair for p in (a.a, a.b)]
    if mode in ("top", "all"):
        params += [p for l in top for p in l.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    times = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        h = x
        for i, layer in enumerate(top):
            q, v = adapters[i] if adapters else (layer.attention.self.query, layer.attention.self.value)
            h = _layer(layer, h, mask, config.num_attention_heads, q, v)
        pooled = h.mean(1) if top else h
        loss = torch.nn.functional.cross_entropy(head(pooled), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def plaintext_block_seconds(model):
    torch.set_num_threads(1)
    layer = model.encoder.layer[0]
    x, mask, grad = _inputs(4, 64, 256)
    x = x.requires_grad_()
    start = time.perf_counter()
    out = layer(x)
    (out[0] if isinstance(out, tuple) else out).backward(grad)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parties", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--steps", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    model = block_model()
    plain = plaintext_block_seconds(model)
    rows = []
    for n in args.parties:
        s, sent, rounds, _ = max(spawn(party_block, n, model, args.repeat, dealer_handler=CorrelationDealer,
                                       dealer_threads=1, timeout=1800), key=lambda r: r[0])
        rows.append(["block 256/4 heads, seq 64, batch 4 (fwd+bwd)", n, f"{s:.2f}", f"{sent / 1e6:.0f}",
                     rounds, f"{plain:.3f}"])
        print(rows[-1], flush=True)
    if args.steps:
        from mpcft.encoder import default_model_path, load_encoder, quiet_transformers
        quiet_transformers()
        _, encoder = load_encoder(default_model_path())
        for mode, layers in (("head", 0), ("lora", 1), ("top", 1), ("top", 2), ("all", 6)):
            plain_step = plaintext_step_seconds(encoder, mode, layers, args.repeat)
            for n in args.parties:
                s, sent, rounds, _ = max(spawn(party_step, n, encoder, mode, layers, args.repeat,
                                               dealer_handler=CorrelationDealer, dealer_threads=1, timeout=3600),
                                         key=lambda r: r[0])
                rows.append([f"MiniLM step, mode {mode}, {layers} MPC layer(s), batch 8, seq 64", n,
                             f"{s:.2f}", f"{sent / 1e6:.0f}", rounds, f"{plain_step:.3f}"])
                print(rows[-1], flush=True)
    print()
    print(markdown_table(["workload", "parties", "mpcft s", "MB sent/party", "rounds",
                          "plaintext torch s"], rows))


if __name__ == "__main__":
    main()
