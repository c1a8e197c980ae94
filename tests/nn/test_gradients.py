"""MPC forward/backward of the BERT classifier against torch autograd on the same weights.

Every trained parameter's gradient must agree within 1e-2 relative error (norm-wise), with
2 and 3 parties; logits and loss within 1e-3.
"""
import pytest
import torch

from mpcft.protocols.correlations import CorrelationDealer
from mpcft.runtime import run_threads

from ..devices import to_cpu
from . import programs, reference

B, T, LABELS = 2, 6, 3


def case(mode):
    gen = torch.Generator().manual_seed(1)
    hidden = programs.CONFIG["hidden_size"]
    inputs = torch.randn(B, hidden, generator=gen, dtype=torch.float64) if mode == "head" else \
        torch.randn(B, T, hidden, generator=gen, dtype=torch.float64)
    mask = None if mode == "head" else torch.tensor([[1] * T, [1] * 4 + [0] * 2])
    labels = torch.nn.functional.one_hot(torch.tensor([2, 0]), LABELS).double()
    return inputs, mask, labels


def torch_gradients(mode, layers, inputs, mask, labels, encoder=None):
    encoder = encoder if encoder is not None else programs.tiny_bert()
    gen = torch.Generator().manual_seed(0)
    head_w = (torch.randn(LABELS, encoder.config.hidden_size, generator=gen, dtype=torch.float64) * 0.02).requires_grad_()
    head_b = torch.zeros(LABELS, dtype=torch.float64, requires_grad=True)
    count = 0 if mode == "head" else layers
    named = {"head.weight": head_w, "head.bias": head_b}
    if mode == "top":
        top = encoder.encoder.layer[len(encoder.encoder.layer) - count:]
        for i, layer in enumerate(top):
            for mpc_name, hf_name in MAP.items():
                named[f"layer{i}.{mpc_name}"] = layer.get_parameter(hf_name)
    logits = reference.classifier_logits(encoder, head_w, head_b, inputs, mask, count)
    loss = torch.nn.functional.cross_entropy(logits, labels.argmax(1))
    grads = torch.autograd.grad(loss, list(named.values()))
    return logits.detach(), loss.detach(), dict(zip(named, grads))


MAP = {
    "attention.query.weight": "attention.self.query.weight", "attention.query.bias": "attention.self.query.bias",
    "attention.key.weight": "attention.self.key.weight", "attention.key.bias": "attention.self.key.bias",
    "attention.value.weight": "attention.self.value.weight", "attention.value.bias": "attention.self.value.bias",
    "attention.output.weight": "attention.output.dense.weight", "attention.output.bias": "attention.output.dense.bias",
    "norm1.gamma": "attention.output.LayerNorm.weight", "norm1.beta": "attention.output.LayerNorm.bias",
    "intermediate.weight": "intermediate.dense.weight", "intermediate.bias": "intermediate.dense.bias",
    "output.weight": "output.dense.weight", "output.bias": "output.dense.bias",
    "norm2.gamma": "output.LayerNorm.weight", "norm2.beta": "output.LayerNorm.bias",
}


def relative(a, b):
    """Norm-wise relative error; gradients that are exactly zero in theory (the key bias:
    softmax ignores a constant shift) are compared against 1e-4 instead of their own norm."""
    return ((a - b).norm() / b.norm().clamp(min=1e-4)).item()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("mode,layers", [("head", 0), ("top", 1), ("top", 2)])
def test_gradients_match_torch_autograd(n, mode, layers, device):
    inputs, mask, labels = case(mode)
    want_logits, want_loss, want = torch_gradients(mode, layers, inputs, mask, labels)
    got = to_cpu(run_threads(programs.gradients, n, inputs, mask, labels, mode, layers, programs.tiny_bert(), device,
                             dealer_handler=CorrelationDealer, timeout=580)[0])
    assert (got["logits"] - want_logits).abs().max() < 1e-3
    assert abs(got["loss"].item() - want_loss.item()) < 1e-3
    assert set(got["grads"]) == set(want)
    errors = {name: relative(got["grads"][name], g) for name, g in want.items()}
    print(f"max relative gradient error, {mode}-{layers}, {n} parties: {max(errors.values()):.2e}")
    assert max(errors.values()) < 1e-2, errors


@pytest.mark.timeout(900)
@pytest.mark.parametrize("n", [2, 3])
def test_minilm_top_two_layers_on_real_activations(n):
    """all-MiniLM-L6-v2's top 2 layers + head, fed the real hidden states of two sentences."""
    from mpcft.encoder import default_model_path, frozen_features, load_encoder
    tokenizer, encoder = load_encoder(default_model_path())
    texts = ["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn.", "The company will publish its report."]
    inputs, mask = frozen_features(encoder, tokenizer, texts, seq_len=12, mpc_layers=2)
    labels = torch.nn.functional.one_hot(torch.tensor([2, 1]), LABELS).double()
    want_logits, want_loss, want = torch_gradients("top", 2, inputs, mask, labels, encoder)
    got = run_threads(programs.gradients, n, inputs, mask, labels, "top", 2, encoder,
                      dealer_handler=CorrelationDealer, timeout=880)[0]
    assert (got["logits"] - want_logits).abs().max() < 1e-3
    errors = {name: relative(got["grads"][name], g) for name, g in want.items()}
    print(f"max relative gradient error, {n} parties: {max(errors.values()):.2e}")
    assert max(errors.values()) < 1e-2, sorted(errors.items(), key=lambda e: -e[1])[:5]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode,layers", [("head", 0), ("top", 1)])
def test_per_example_gradients_match_torch(mode, layers):
    """grad_sample[b] is the gradient of example b's share of the mean loss (loss_b / B), for
    every trainable parameter (Linear weights and biases, LayerNorm gamma and beta), from the
    same backward pass; the examples' gradients sum to the batch gradient."""
    inputs, mask, labels = case(mode)
    got = run_threads(programs.per_example_gradients, 2, inputs, mask, labels, mode, layers,
                      programs.tiny_bert(), dealer_handler=CorrelationDealer, timeout=580)[0]
    for b in range(B):
        one = lambda t: None if t is None else t[b:b + 1]
        want = torch_gradients(mode, layers, inputs[b:b + 1], one(mask), labels[b:b + 1])[2]
        assert set(got) == set(want)
        errors = {name: relative(got[name][0][b], g / B) for name, g in want.items()}
        assert max(errors.values()) < 1e-2, sorted(errors.items(), key=lambda e: -e[1])[:5]
    for name, (sample, total) in got.items():
        assert sample.shape[0] == B
        assert (sample.sum(0) - total).abs().max() < 1e-4, name


LORA_NAMES = {"layer0.attention.query.lora_a.weight": "adapters.0.0.a",
              "layer0.attention.query.lora_b.weight": "adapters.0.0.b",
              "layer0.attention.value.lora_a.weight": "adapters.0.1.a",
              "layer0.attention.value.lora_b.weight": "adapters.0.1.b", "head.weight": "head_w", "head.bias": "head_b"}


def lora_case():
    """LoRA on the top layer of the tiny BERT, with B started away from zero so that A's
    gradient does not vanish: (encoder, B's start, the plaintext per-example gradients of the
    model `--plaintext-baseline` hands to Opacus (mpcft.finetune.plaintext), by LORA_NAMES)."""
    from mpcft.finetune.plaintext import _LoRA, _Model, _per_example_gradients
    inputs, mask, labels = case("top")
    encoder, rank, alpha = programs.tiny_bert(), 8, 16.0      # mpcft.nn.prepare's defaults
    hidden = encoder.config.hidden_size
    lora_b = torch.randn(hidden, rank, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 0.3
    layer = encoder.encoder.layer[-1]
    adapters = [_LoRA(layer.attention.self.query, rank, alpha, 0), _LoRA(layer.attention.self.value, rank, alpha, 0)]
    for adapter in adapters:
        adapter.b.data.copy_(lora_b)
    head_w = torch.randn(LABELS, hidden, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.02
    model = _Model([layer], [adapters], encoder.config.num_attention_heads, torch.nn.Parameter(head_w),
                   torch.nn.Parameter(torch.zeros(LABELS, dtype=torch.float64)))
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    return encoder, lora_b, _per_example_gradients(model, params, inputs, mask, labels.argmax(1))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("n", [2, 3])
def test_lora_gradients_match_the_plaintext_baseline(n):
    """LoRA's fused projections (q, k, v in shared rounds: mpcft.nn.layers.project): the batch
    gradients of the adapters and the head equal the plaintext model's."""
    inputs, mask, labels = case("top")
    encoder, lora_b, per_example = lora_case()
    got = run_threads(programs.gradients, n, inputs, mask, labels, "lora", 1, encoder, None, lora_b,
                      dealer_handler=CorrelationDealer, timeout=580)[0]["grads"]
    assert set(got) == set(LORA_NAMES)
    errors = {name: relative(got[name], per_example[LORA_NAMES[name]].mean(0)) for name in LORA_NAMES}
    print(f"max relative gradient error, lora, {n} parties: {max(errors.values()):.2e}")
    assert max(errors.values()) < 1e-2, errors


@pytest.mark.timeout(600)
def test_lora_per_example_gradients_match_the_plaintext_baseline():
    """The same with per-example gradients (the adapters' layers then run one by one)."""
    inputs, mask, labels = case("top")
    encoder, lora_b, want = lora_case()
    got = run_threads(programs.per_example_gradients, 2, inputs, mask, labels, "lora", 1, encoder, lora_b,
                      dealer_handler=CorrelationDealer, timeout=580)[0]
    assert set(got) == set(LORA_NAMES)
    errors = {name: relative(got[name][0] * B, want[LORA_NAMES[name]]) for name in LORA_NAMES}
    print(errors)
    assert max(errors.values()) < 1e-2, errors
