"""The same fine-tuning in plain torch (float64, autograd): the baseline MPC accuracy is judged by;
under --dp, DP-SGD by Opacus (the tool DP users trust) at the same sigma, C, rate and steps.

Same data split among owners, same frozen features, public schedule, initialisation (head,
LoRA), optimizer and hyper-parameters as mpcft.finetune.trainer; only the arithmetic differs. It needs
every owner's training data, so it is for benchmarking on one machine, not for deployments.
"""
import dataclasses
import math

import torch

from mpcft.data import by_owner, load_data, schedule
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


@dataclasses.dataclass
class Replay:
    """An MPC DP run's random draws, for a paired baseline (common random numbers): its Poisson
    schedule and, per step, the noise z its optimizer received by mpcft parameter name, in
    per-example gradient units (the step's gradient is (clipped sum + z) / B_exp)."""
    schedule: list
    noise: list


def _mpcft_name(name: str) -> str:
    """The mpcft.nn.Classifier name of a trained parameter of _Model (head and LoRA modes)."""
    if name in ("head_w", "head_b"):
        return {"head_w": "head.weight", "head_b": "head.bias"}[name]
    _, layer, which, factor = name.split(".")          # adapters.<layer>.<0 query, 1 value>.<a, b>
    return f"layer{layer}.attention.{('query', 'value')[int(which)]}.lora_{factor}.weight"


def _dp_optimizer(optimizer, config, noise_multiplier, expected_batch_size, names, noise=None):
    """Opacus's DPOptimizer over `optimizer`; with `noise` (an iterable of {mpcft name: z} per
    step), one whose add_noise adds those draws instead of its own ({id(p): _Model name} `names`)."""
    from opacus.optimizers import DPOptimizer

    class ReplayedNoise(DPOptimizer):
        def add_noise(self):
            z = next(draws)
            for p in self.params:
                p.grad = (p.summed_grad + z[_mpcft_name(names[id(p)])].to(p.summed_grad).view_as(p.summed_grad)
                          ).view_as(p)

    draws = iter(noise) if noise is not None else None
    return (DPOptimizer if noise is None else ReplayedNoise)(
        optimizer, noise_multiplier=noise_multiplier, max_grad_norm=config.max_grad_norm,
        expected_batch_size=expected_batch_size)


def make_optimizer(config, params):
    """The torch optimizer matching mpcft.finetune.trainer.make_optimizer's."""
    if config.optimizer == "adamw":
        return AdamW(params, lr=config.lr, eps=config.adam_eps, weight_decay=config.weight_decay, clip=config.clip)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def _split(t, heads):
    b, n, h = t.shape
    return t.reshape(b, n, heads, h // heads).transpose(1, 2)


class _LoRA(torch.nn.Module):
    """`dense` plus a trainable low-rank update alpha/r * B A, drawn as mpcft.nn.LoRALinear draws it."""

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
    """A post-LN BERT `layer` on x [B, T, H] with `heads` heads and a 0/1 key mask [B, T] (padded
    keys get -inf); `query` and `value` stand in for its own projections (LoRA adapters)."""
    att = layer.attention
    q, k, v = _split(query(x), heads), _split(att.self.key(x), heads), _split(value(x), heads)
    scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(mask[:, None, None, :] == 0, -math.inf)
    c = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(x.shape)
    x1 = att.output.LayerNorm(x + att.output.dense(c))
    return layer.output.LayerNorm(x1 + layer.output.dense(torch.nn.functional.gelu(layer.intermediate.dense(x1))))


class _Model(torch.nn.Module):
    """The plaintext classifier: the top `layers` (their query and value LoRA-adapted or not),
    masked mean pooling when there are layers, and the head."""

    def __init__(self, layers, adapters, heads, head_w, head_b):
        super().__init__()
        self.layers, self.adapters = torch.nn.ModuleList(layers), torch.nn.ModuleList(
            torch.nn.ModuleList(pair) for pair in adapters)
        self.heads, self.head_w, self.head_b = heads, head_w, head_b

    def forward(self, x, m):
        h = x
        for i, layer in enumerate(self.layers):
            query, value = self.adapters[i] if self.adapters else (layer.attention.self.query,
                                                                   layer.attention.self.value)
            h = _layer(layer, h, m, self.heads, query, value)
        if len(self.layers):
            mf = m[..., None].double()
            h = (h * mf).sum(1) / mf.sum(1)
        return h @ self.head_w.T + self.head_b


def _per_example_gradients(model, params, x, m, y) -> dict:
    """{name: per-example gradients [B, *shape]} of the trained parameters, by torch.func."""
    def loss(p, xi, mi, yi):
        logits = torch.func.functional_call(model, p, (xi[None], mi[None]))
        return torch.nn.functional.cross_entropy(logits, yi[None])
    return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0, 0))(params, x, m, y)


def train_plaintext(config, names, counts, test, noise_multiplier: float | None = None, replay: Replay | None = None):
    """(test accuracy, loss per step) of the plaintext run of FinetuneConfig `config`. With
    config.dp, DP-SGD by Opacus's DPOptimizer at `noise_multiplier` (the MPC run's), the same
    clipping norm, Poisson rate and steps (its own public schedule and noise draws, or those
    of an MPC run in `replay`: head and LoRA modes), per-example gradients from torch.func."""
    tokenizer, encoder = load_encoder(config.model or default_model_path())
    hf = encoder.config
    count = mpc_layer_count(config.mode, hf.num_hidden_layers, config.layers)
    owners = []
    for rank in range(len(counts)):
        (texts, labels), _, _ = load_data(config, rank, len(counts))
        feats, masks = frozen_features(encoder, tokenizer, texts, config.seq_len, count)
        owners.append((feats, masks, torch.tensor(labels)))
    layers = list(encoder.encoder.layer[hf.num_hidden_layers - count:])
    for p in encoder.parameters():
        p.requires_grad_(config.mode in ("top", "all") and any(p is q for l in layers for q in l.parameters()))
    adapters = []
    if config.mode == "lora":
        adapters = [(_LoRA(l.attention.self.query, config.lora_rank, config.lora_alpha, config.seed),
                     _LoRA(l.attention.self.value, config.lora_rank, config.lora_alpha, config.seed)) for l in layers]
    gen = torch.Generator().manual_seed(config.seed)
    head_w = torch.nn.Parameter(torch.randn(len(names), hf.hidden_size, generator=gen, dtype=torch.float64) * 0.02)  # noqa: csprng
    head_b = torch.nn.Parameter(torch.zeros(len(names), dtype=torch.float64))
    model = _Model(layers, adapters, hf.num_attention_heads, head_w, head_b)
    trained = {name: p for name, p in model.named_parameters() if p.requires_grad}
    optimizer = make_optimizer(config, list(trained.values()))
    if not config.dp:
        batches = schedule(counts, config.batch_size, config.epochs, config.seed)
    else:
        from mpcft.kernels import derive_seed
        from mpcft.privacy.sampling import poisson_plan, poisson_schedule
        rate, steps = poisson_plan(sum(counts), config.batch_size, config.epochs)
        batches = (replay.schedule if replay is not None else
                   poisson_schedule(counts, rate, steps, derive_seed(bytes(32), "plaintext", config.seed)))
        optimizer = _dp_optimizer(optimizer, config, noise_multiplier, rate * sum(counts),
                                  {id(p): name for name, p in trained.items()}, replay and replay.noise)
    losses = []
    for batch in batches:
        x, m, y = (torch.cat([owners[o][k][idx] for o, idx in by_owner(batch).items()]) if batch else
                   owners[0][k][:0] for k in range(3))
        optimizer.zero_grad()
        if config.dp:
            samples = _per_example_gradients(model, {n: p.detach() for n, p in trained.items()}, x, m, y)
            for name, p in trained.items():
                p.grad_sample = samples[name]
        else:
            loss = torch.nn.functional.cross_entropy(model(x, m), y)
            loss.backward()
            losses.append(loss.item())
        optimizer.step()
    with torch.no_grad():
        for layer, (q, v) in zip(layers, adapters):
            layer.attention.self.query.weight += q.scaling * q.b @ q.a
            layer.attention.self.value.weight += v.scaling * v.b @ v.a
    return accuracy(encoder, head_w.detach(), head_b.detach(), tokenizer, *test, config.seq_len), losses
