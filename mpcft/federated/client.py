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
        frozen = None
        if s.mode == "head":
            with torch.no_grad():
                frozen = torch.cat([self._pooled(self._tokens(texts[i:i + 64])) for i in range(0, len(texts), 64)])
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


def local_update(settings: LocalSettings, global_state: dict, texts, labels) -> tuple[dict, dict, float]:
    """(trained arrays, update = trained - global, mean loss) of one client's local training."""
    model = LocalModel(settings)
    model.load_trainable_state(global_state)
    loss = model.fit(texts, labels)
    trained = {n: v.double() for n, v in model.trainable_state().items()}
    update = {n: trained[n] - torch.as_tensor(np.asarray(global_state[n]), dtype=torch.float64) for n in trained}
    return trained, update, loss


def train_reply(msg, settings: LocalSettings, texts, labels, name: str, certs, secure: bool = True,
                send_loss: bool = True):
    """The reply of client `name` to a Flower train message: local training on (texts, labels)
    from the message's arrays, then the update sealed to the aggregators (secure: for
    mpcft.federated.strategy.SecureFedAvg) or the trained arrays and num-examples (Flower's FedAvg)."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    from .strategy import REPLY_KEY

    arrays = msg.content["arrays"]
    global_state = {key: arrays[key].numpy() for key in arrays}
    trained, update, loss = local_update(settings, global_state, texts, labels)
    metrics = {"num-examples": len(texts)}
    if send_loss:
        metrics["train_loss"] = loss
    content = {"metrics": MetricRecord(metrics)}
    if secure:
        config = msg.content["config"]
        round_ = Round(str(config["mpcft-federation"]), int(config["server-round"]), UpdateSpec.of(global_state),
                       bool(config["mpcft-secret-counts"]), int(config["mpcft-frac-bits"]))
        sealed = seal_update(update, len(texts), round_, name, certs, int(config["mpcft-aggregators"]))
        content[REPLY_KEY] = ConfigRecord({"client": name, "sealed": sealed})
        if round_.secret_counts:
            content["metrics"] = MetricRecord({k: v for k, v in metrics.items() if k != "num-examples"})
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
        return train_reply(msg, settings, texts, labels, f"client-{pid}", certs, secure, send_loss)

    return app
