"""The same fine-tuning in plain torch (float64, autograd): the baseline MPC accuracy is judged by.

Same data split among owners, same frozen features, public schedule, initialisation (head,
LoRA), optimizer and hyper-parameters as mpcft.finetune; only the arithmetic differs. It needs
every owner's training data, so it is for benchmarking on one machine, not for deployments.
"""
import math

import torch

from mpcft.data import load_data, schedule
from mpcft.encoder import accuracy, default_model_path, frozen_features, load_encoder
from mpcft.nn import mpc_layer_count


class AdamW(torch.optim.Optimizer):
    """The AdamW variant mpcft.nn.AdamW computes under MPC, in float64 torch: gradients clipped
    to [-clip, clip], bias-corrected moments, eps inside the square root, decoupled decay."""

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-4, weight_decay=0.0, clip=1.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, clip=clip))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            (b1, b2), eps, lr = group["betas"], group["eps"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                t = state["step"] = state.get("step", 0) + 1
                g = p.grad.clamp(-group["clip"], group["clip"])
                a = b1 * (1 - b1 ** (t - 1)) / (1 - b1 ** t)
                c = b2 * (1 - b2 ** (t - 1)) / (1 - b2 ** t)
                state["m"] = a * state.get("m", torch.zeros_like(g)) + (1 - a) * g
                state["v"] = c * state.get("v", torch.zeros_like(g)) + (1 - c) * g * g
                p -= lr * (state["m"] / (state["v"] + eps ** 2).sqrt() + group["weight_decay"] * p)


def make_optimizer(args, params):
    if args.optimizer == "adamw":
        return AdamW(params, lr=args.lr, eps=args.adam_eps, weight_decay=args.weight_decay, clip=args.clip)
    return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)


def _split(t, heads):
    b, n, h = t.shape
    return t.reshape(b, n, heads, h // heads).transpose(1, 2)


class _LoRA(torch.nn.Module):
    def __init__(self, dense, rank, alpha, seed):
        super().__init__()
        self.dense = dense
        gen = torch.Generator().manual_seed(seed)   # the same public draw as mpcft.nn.LoRALinear
        self.a = torch.nn.Parameter(torch.randn(rank, dense.in_features, generator=gen,  # noqa: csprng
                                                dtype=torch.float64) / math.sqrt(dense.in_features))
        self.b = torch.nn.Parameter(torch.zeros(dense.out_features, rank, dtype=torch.float64))
        self.scaling = alpha / rank

    def forward(self, x):
        return self.dense(x) + self.scaling * (x @ self.a.T) @ self.b.T


def _layer(layer, x, mask, heads, query, value):
    att = layer.attention
    q, k, v = _split(query(x), heads), _split(att.self.key(x), heads), _split(value(x), heads)
    scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(mask[:, None, None, :] == 0, -math.inf)
    c = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(x.shape)
    x1 = att.output.LayerNorm(x + att.output.dense(c))
    return layer.output.LayerNorm(x1 + layer.output.dense(torch.nn.functional.gelu(layer.intermediate.dense(x1))))


def train_plaintext(args, names, counts, test):
    """(test accuracy, loss per step) of the plaintext run."""
    tokenizer, encoder = load_encoder(args.model or default_model_path())
    config = encoder.config
    count = mpc_layer_count(args.mode, config.num_hidden_layers, args.layers)
    owners = []
    for rank in range(len(counts)):
        (texts, labels), _, _ = load_data(args, rank, len(counts))
        feats, masks = frozen_features(encoder, tokenizer, texts, args.seq_len, count)
        owners.append((feats, masks, torch.tensor(labels)))
    layers = list(encoder.encoder.layer[config.num_hidden_layers - count:])
    for p in encoder.parameters():
        p.requires_grad_(args.mode in ("top", "all") and any(p is q for l in layers for q in l.parameters()))
    adapters = []
    if args.mode == "lora":
        adapters = [(_LoRA(l.attention.self.query, args.lora_rank, args.lora_alpha, args.seed),
                     _LoRA(l.attention.self.value, args.lora_rank, args.lora_alpha, args.seed)) for l in layers]
    gen = torch.Generator().manual_seed(args.seed)
    head_w = torch.nn.Parameter(torch.randn(len(names), config.hidden_size, generator=gen, dtype=torch.float64) * 0.02)  # noqa: csprng
    head_b = torch.nn.Parameter(torch.zeros(len(names), dtype=torch.float64))
    params = [p for p in encoder.parameters() if p.requires_grad] + [head_w, head_b]
    params += [p for pair in adapters for a in pair for p in (a.a, a.b)]
    optimizer = make_optimizer(args, params)
    losses = []
    for batch in schedule(counts, args.batch_size, args.epochs, args.seed):
        x = torch.cat([owners[o][0][[i for oo, i in batch if oo == o]] for o in range(len(counts))])
        m = torch.cat([owners[o][1][[i for oo, i in batch if oo == o]] for o in range(len(counts))])
        y = torch.cat([owners[o][2][[i for oo, i in batch if oo == o]] for o in range(len(counts))])
        h = x
        for i, layer in enumerate(layers):
            query, value = adapters[i] if adapters else (layer.attention.self.query, layer.attention.self.value)
            h = _layer(layer, h, m, config.num_attention_heads, query, value)
        if count:
            mf = m[..., None].double()
            h = (h * mf).sum(1) / mf.sum(1)
        loss = torch.nn.functional.cross_entropy(h @ head_w.T + head_b, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        for layer, (q, v) in zip(layers, adapters):
            layer.attention.self.query.weight += q.scaling * q.b @ q.a
            layer.attention.self.value.weight += v.scaling * v.b @ v.a
    return accuracy(encoder, head_w.detach(), head_b.detach(), tokenizer, *test, args.seq_len), losses
