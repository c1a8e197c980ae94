"""The client side: local fine-tuning in plaintext (transformers, peft for LoRA) and a Flower ClientApp.

A client holds its own texts and never sends them: it loads the round's global arrays (the
classifier head, and LoRA adapters of the query and value projections with mode "lora"),
trains locally, and replies with its update sealed to the aggregators (updates.seal_update),
or, with plain aggregation, with the arrays themselves (Flower's own FedAvg, for comparison).
"""
import dataclasses
import functools
import json
import math
import pathlib

import numpy as np
import torch

from mpcft.encoder import default_model_path, load_encoder

from .updates import Round, UpdateSpec, seal_update

MODES = ("head", "lora")
LOCAL_DP_KEY = "mpcft-local-dp"      # the client's context.state record of its local DP-SGD steps


@dataclasses.dataclass(frozen=True)
class LocalSettings:
    """What every client trains with (public, the same for all)."""
    labels: int
    mode: str = "lora"
    model: str | None = None
    seq_len: int = 64
    local_epochs: int = 1
    batch_size: int = 16
    lr: float = 1e-3
    lora_rank: int = 8
    lora_alpha: float = 16.0
    seed: int = 0
    noise_multiplier: float = 0.0          # local DP-SGD (Opacus, local_dp) when > 0
    max_grad_norm: float = 1.0
    delta: float = 1e-5                    # of the local (example-level) epsilon


@functools.lru_cache(maxsize=2)
def _pretrained(path: str):
    tokenizer, encoder = load_encoder(path)
    return tokenizer, encoder.float()


class LocalModel(torch.nn.Module):
    """Mean-pooled MiniLM (frozen, or LoRA-adapted with peft) and a linear head."""

    def __init__(self, settings: LocalSettings):
        super().__init__()
        if settings.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {settings.mode!r}")
        self.settings = settings
        tokenizer, encoder = _pretrained(settings.model or default_model_path())
        self.tokenizer = tokenizer
        generator = torch.Generator().manual_seed(settings.seed)     # public initialisation
        if settings.mode == "lora":
            import copy

            from peft import LoraConfig, get_peft_model
            config = LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha,
                                target_modules=["query", "value"], lora_dropout=0.0, bias="none")
            with torch.random.fork_rng():           # peft's own draw leaves the process's generator as it was
                self.encoder = get_peft_model(copy.deepcopy(encoder), config)
            with torch.no_grad():                   # A as peft draws it (kaiming uniform), from our public seed
                for name, p in self.encoder.named_parameters():
                    if "lora_A" in name:
                        bound = 1.0 / math.sqrt(p.shape[1])
                        p.copy_(torch.rand(p.shape, generator=generator) * 2 * bound - bound)  # noqa: csprng
        else:
            self.encoder = encoder
            for p in self.encoder.parameters():
                p.requires_grad_(False)
        hidden = encoder.config.hidden_size
        with torch.random.fork_rng():           # its default draw is replaced below
            self.head = torch.nn.Linear(hidden, settings.labels)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(settings.labels, hidden, generator=generator) * 0.02)  # noqa: csprng
            self.head.bias.zero_()

    def trainable_state(self) -> dict:
        return {name: p.detach().clone() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict) -> None:
        params = dict(self.named_parameters())
        mine = {n for n, p in params.items() if p.requires_grad}
        if set(state) != mine:
            raise ValueError(f"the global arrays {sorted(state)[:3]}... do not match this model's "
                             f"trainable parameters {sorted(mine)[:3]}...")
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(torch.as_tensor(np.asarray(value)))

    def _tokens(self, texts):
        return self.tokenizer(list(texts), padding="max_length", truncation=True,
                              max_length=self.settings.seq_len, return_tensors="pt")

    def forward(self, batch):
        """Logits of a tokenised batch."""
        return self.head(self._pooled(batch))

    def _features(self, texts) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([self._pooled(self._tokens(texts[i:i + 64])) for i in range(0, len(texts), 64)])

    def _pooled(self, batch):
        out = self.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           token_type_ids=batch.get("token_type_ids"))
        mask = batch["attention_mask"][..., None].float()
        return (out.last_hidden_state * mask).sum(1) / mask.sum(1)

    def fit(self, texts, labels) -> float:
        """Local epochs of AdamW on (texts, labels); returns the mean training loss."""
        s = self.settings
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=s.lr)
        order = torch.Generator().manual_seed(s.seed)
        y = torch.tensor(labels, dtype=torch.int64)
        frozen = self._features(texts) if s.mode == "head" else None
        losses = []
        self.train()
        for _ in range(s.local_epochs):
            perm = torch.randperm(len(texts), generator=order)     # noqa: csprng (public order)
            for start in range(0, len(texts), s.batch_size):
                idx = perm[start:start + s.batch_size]
                features = frozen[idx] if frozen is not None else self._pooled(self._tokens([texts[i] for i in idx]))
                loss = torch.nn.functional.cross_entropy(self.head(features), y[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        self.eval()
        return float(np.mean(losses)) if losses else 0.0

    def fit_private(self, texts, labels) -> tuple[float, list]:
        """Local epochs of DP-SGD (local_dp.private_fit) on (texts, labels); returns the mean
        training loss and the Opacus accountant's history [(noise_multiplier, sample_rate, steps)]."""
        from .local_dp import private_fit
        s = self.settings
        if s.mode == "head":
            frozen = self._features(texts)
            module, logits_of = self.head, lambda model, idx: model(frozen[idx])
        else:
            tokens = self._tokens(texts)
            module, logits_of = self, lambda model, idx: model({k: v[idx] for k, v in tokens.items()})
        return private_fit(module, logits_of, torch.tensor(labels, dtype=torch.int64),
                           noise_multiplier=s.noise_multiplier, max_grad_norm=s.max_grad_norm,
                           batch_size=s.batch_size, epochs=s.local_epochs, lr=s.lr)

    def accuracy(self, state: dict, texts, labels) -> float:
        """Test accuracy of this model with the trainable arrays `state` (the global model)."""
        self.load_trainable_state(state)
        return float((self.predict(texts).numpy() == np.asarray(labels)).mean())

    @torch.no_grad()
    def predict(self, texts) -> torch.Tensor:
        self.eval()
        return torch.cat([self.head(self._pooled(self._tokens(texts[i:i + 64]))).argmax(-1)
                          for i in range(0, len(texts), 64)])


def read_partition(path) -> tuple[list, list]:
    """(texts, label ids) of one client's partition file (written by the simulation)."""
    data = json.loads(pathlib.Path(path).read_text("utf-8"))
    return data["texts"], data["labels"]


def local_update(settings: LocalSettings, global_state: dict, texts, labels) -> tuple[dict, dict, float, list]:
    """(trained arrays, update = trained - global, mean loss, local DP-SGD's accountant history,
    empty without it) of one client's local training."""
    model = LocalModel(settings)
    model.load_trainable_state(global_state)
    loss, history = model.fit_private(texts, labels) if settings.noise_multiplier else (model.fit(texts, labels), [])
    trained = {n: v.double() for n, v in model.trainable_state().items()}
    update = {n: trained[n] - torch.as_tensor(np.asarray(global_state[n]), dtype=torch.float64) for n in trained}
    return trained, update, loss, history


def local_privacy(settings: LocalSettings, history: list, state=None) -> dict:
    """The reply's metrics of local DP-SGD: local-epsilon (RDP accountant at settings.delta)
    over every step this client has taken, local-steps; `state` (the client's Flower
    context.state) keeps the steps of earlier rounds."""
    from flwr.app import ConfigRecord

    from mpcft.privacy.accountant import epsilon
    if {(sigma, rate) for sigma, rate, _ in history} != {(settings.noise_multiplier, history[0][1])}:
        raise ValueError("local DP-SGD's steps differ in noise or sample rate")     # one (sigma, q) per client
    steps = sum(count for _, _, count in history)
    if state is not None:
        if LOCAL_DP_KEY in state:
            steps += int(state[LOCAL_DP_KEY]["steps"])
        state[LOCAL_DP_KEY] = ConfigRecord({"steps": steps})
    return {"local-epsilon": epsilon(settings.noise_multiplier, history[0][1], steps, settings.delta),
            "local-steps": steps}


def train_reply(msg, settings: LocalSettings, texts, labels, name: str, certs, secure: bool = True,
                send_loss: bool = True, state=None):
    """The reply of client `name` to a Flower train message: local training on (texts, labels)
    from the message's arrays, then the update sealed to the aggregators (secure: for
    mpcft.federated.strategy.SecureFedAvg) or the trained arrays and num-examples (Flower's FedAvg).
    With local DP-SGD it reports its local epsilon (local_privacy; not with secret counts,
    whose sample rate B / n_k would tell n_k)."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    from .strategy import REPLY_KEY

    arrays = msg.content["arrays"]
    global_state = {key: arrays[key].numpy() for key in arrays}
    trained, update, loss, history = local_update(settings, global_state, texts, labels)
    metrics = {"num-examples": len(texts)}
    if send_loss:
        metrics["train_loss"] = loss
    if history:
        metrics.update(local_privacy(settings, history, state))
    content = {"metrics": MetricRecord(metrics)}
    if secure:
        config = msg.content["config"]
        round_ = Round(str(config["mpcft-federation"]), int(config["server-round"]), UpdateSpec.of(global_state),
                       bool(config["mpcft-secret-counts"]), int(config["mpcft-frac-bits"]))
        sealed = seal_update(update, len(texts), round_, name, certs, int(config["mpcft-aggregators"]))
        content[REPLY_KEY] = ConfigRecord({"client": name, "sealed": sealed})
        if round_.secret_counts:
            content["metrics"] = MetricRecord({k: v for k, v in metrics.items()
                                               if k not in ("num-examples", "local-epsilon", "local-steps")})
    else:
        content["arrays"] = ArrayRecord({key: v.float() for key, v in trained.items()})
    return Message(content=RecordDict(content), reply_to=msg)


def client_app(settings: LocalSettings, partitions, certs, secure: bool = True, send_loss: bool = True,
               fail: frozenset = frozenset()):
    """The simulation's Flower ClientApp: node with partition-id p trains on partitions[p] as
    client-p (train_reply). fail: partition ids that raise instead of answering (fault tests)."""
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg, context):
        pid = int(context.node_config["partition-id"])
        if pid in fail:
            raise RuntimeError(f"client-{pid} fails (as the fault test asked)")
        texts, labels = read_partition(partitions[pid])
        return train_reply(msg, settings, texts, labels, f"client-{pid}", certs, secure, send_loss, context.state)

    return app
