"""`FinetuneConfig`: every option of a fine-tuning run, as command-line flags and as JSON.

`mpcft finetune` parses its flags into a FinetuneConfig and hands it to every party's worker
as JSON (`python -m mpcft.finetune --config-json JSON`); a worker started by hand
(`mpcft party ... -m mpcft.finetune --train ...`) parses the same flags itself.
"""
import argparse
import dataclasses
import json
import pathlib
import typing

from mpcft.data import BUILTIN_MAX_TRAIN
from mpcft.data.owners import sealing_pin
from mpcft.nn import MODES


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each option's default, except where there is none (None, False)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class ConfigError(ValueError):
    """Options that cannot run together or are out of range (reported in one line)."""


def _option(default, help=None, **flag):
    """A FinetuneConfig field: its default, its help text and more argparse keywords of its flag."""
    return dataclasses.field(default=default, metadata=dict(flag, help=help))


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """The options of one fine-tuning run; field `lora_rank` is flag `--lora-rank`."""
    train: str | None = _option(None, "CSV/TSV of labelled texts (default: the built-in set)")
    test: str | None = _option(None, "held-out CSV/TSV for the output party (default: a split of --train)")
    owner_shares: list[str] | None = _option(
        None, "train on share files sealed by data owners (`mpcft share-data`): files, or folders holding "
              "*.party-R.mpcft; the parties are then not data owners", nargs="+", metavar="PATH")
    owner_sealing: list[str] | None = _option(
        None, "with --owner-shares: accept only sealing ID (printed by `mpcft share-data`) of owner NAME, "
              "refusing its withdrawn ones", nargs="+", type=sealing_pin, metavar="NAME=ID")
    text_column: str = _option("sentence", "column of --train/--test holding the texts")
    label_column: str = _option("label", "column of --train/--test holding the labels")
    model: str | None = _option(None, "local model folder (default: all-MiniLM-L6-v2)")
    mode: str = _option("lora", "what is trained (see mpcft.nn.peft.prepare)", choices=MODES)
    layers: int = _option(1, "top encoder layers under MPC (modes top, lora)")
    lora_rank: int = _option(4, "rank r of the LoRA adapters (mode lora)")
    lora_alpha: float = _option(8.0, "LoRA scaling alpha (the update is alpha/r * B A)")
    epochs: int = _option(1, "passes over the training examples")
    batch_size: int = _option(8, "examples per training step (all owners together)")
    seq_len: int = _option(32, "tokens per text (longer texts are cut)")
    optimizer: str = _option("sgd", "adamw: see mpcft.nn.AdamW (its inverse square root costs per "
                                    "parameter: best for modes head and lora)", choices=("sgd", "adamw"))
    lr: float = _option(0.05, "learning rate")
    momentum: float = _option(0.9, "SGD momentum")
    weight_decay: float = _option(0.0)
    adam_eps: float = _option(1e-4, "AdamW eps (inside the square root)")
    clip: float = _option(1.0, "AdamW: clip gradients to [-clip, clip]")
    max_train: int | None = _option(None, f"use at most this many training examples (0: all; default: "
                                          f"{BUILTIN_MAX_TRAIN} of the built-in set, all of --train)")
    test_fraction: float = _option(0.2, "held-out share of --train when no --test is given")
    split_train: bool = _option(True, "parties read the same file and each keeps every n-th row (local runs)")
    seed: int = _option(0, "public seed: split, schedule, initialisation")
    out: str = _option("runs/finetune", "output folder")
    checkpoint_every: int = _option(50, "every party saves its shares and the optimizer's state every this many "
                                        "steps into OUT/checkpoints/ (0: never)")
    resume: str | None = _option(None, "resume the run in folder RUN from the latest checkpoint all parties hold "
                                       "(its options are the run's own; output goes to RUN)", metavar="RUN")
    threads: int = _option(1, "torch threads per party")
    device: str = _option("cpu", "where each party keeps its shares (cpu, cuda)")
    opening: str = _option("all", "how shares are opened: all (each party sends its share to every other, 1 round) "
                                  "or king (through every party in turn for a part: 2 rounds, 2/n of the bytes of all "
                                  "together; for 4 or more parties on a slow link)", choices=("all", "king"))
    no_loss: bool = _option(False, "do not reveal the training loss")
    reveal: bool = _option(True, "reveal the trained parameters to the output party (rank 0) at the end; "
                                 "with --no-reveal they stay shared and the evaluation runs in MPC")
    eval_mpc: bool = _option(False, "evaluate the held-out split in MPC (only the number of correct "
                                    "predictions is opened, to rank 0); implied by --no-reveal")
    eval_batch_size: int = _option(32, "examples per evaluation batch under MPC")
    plaintext_baseline: bool = _option(False, "also train the same configuration in plain torch (output party; "
                                              "with --dp, with Opacus at the same noise, clipping and sampling)")
    dp: bool = _option(False, "differential privacy: DP-SGD under MPC (per-example clipping, noise no party "
                              "knows, Poisson sampling); give --target-epsilon or --noise-multiplier")
    target_epsilon: float | None = _option(None, "with --dp: the epsilon to reach at the end; the accountant "
                                                 "calibrates the noise multiplier for the run's steps and rate")
    noise_multiplier: float | None = _option(None, "with --dp: the noise std over --max-grad-norm (instead of "
                                                   "--target-epsilon)")
    delta: float = _option(1e-5, "with --dp: the delta of (epsilon, delta)-DP")
    max_grad_norm: float = _option(1.0, "with --dp: the per-example gradient norm C that examples are clipped to")
    accountant: str = _option("rdp", "with --dp: the privacy accountant (Opacus's RDP or PRV, Google's PLD)",
                              choices=("rdp", "prv", "pld"))
    dp_noise: str = _option("dealer", "with --dp: who draws the noise: the dealer (as it deals triples), or each "
                                      "party a share (safe against --dp-colluders parties and the dealer, "
                                      "n/(n-t) times the variance)", choices=("dealer", "parties"))
    dp_colluders: int | None = _option(None, "with --dp-noise parties: the colluding parties t the noise "
                                             "withstands (default: n-1)")
    dp_reveal_loss: bool = _option(False, "with --dp: reveal the per-step training loss to the output party "
                                          "(not covered by the privacy guarantee)")
    dp_ghost_clipping: bool = _option(False, "with --dp: norms and clipped sums of Linear layers by ghost clipping "
                                             "where its cost is lower (full layers, the head: fewer bytes); its "
                                             "rounding stays within the noise's calibration only for unit-scale "
                                             "layer inputs (LayerNorm outputs), while the default formed gradients' "
                                             "bound holds for any input")

    def check(self, parties: int) -> None:
        """ConfigError, in one line, for options that contradict each other or are out of range
        (the model's limits read from its config.json)."""
        if parties < 2:
            raise ConfigError(f"--parties must be at least 2 (MPC needs two parties), got {parties}")
        for rule, flags in _RANGES:
            for flag in flags:
                value = getattr(self, flag)
                if value is not None and not rule[0](value):
                    raise ConfigError(f"--{flag.replace('_', '-')} must be {rule[1]}, got {value}")
        layers, positions = model_limits(self.model)
        if self.seq_len > positions:
            raise ConfigError(f"--seq-len {self.seq_len} is beyond the model's {positions} positions")
        if self.mode in ("top", "lora") and self.layers > layers:
            raise ConfigError(f"--layers {self.layers} is more than the model's {layers} layers")
        if not self.dp:
            given = [f for f in ("target_epsilon", "noise_multiplier", "dp_colluders") if getattr(self, f) is not None]
            given += ["dp_reveal_loss"] * self.dp_reveal_loss + ["dp_ghost_clipping"] * self.dp_ghost_clipping
            if given:
                raise ConfigError(f"--{given[0].replace('_', '-')} needs --dp")
            return
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise ConfigError("--dp needs one of --target-epsilon E or --noise-multiplier S")
        for name, value in (("target_epsilon", self.target_epsilon), ("noise_multiplier", self.noise_multiplier),
                            ("max_grad_norm", self.max_grad_norm)):
            if value is not None and not 0 < value < float("inf"):
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"--delta must be in (0, 1), got {self.delta}")
        if self.dp_colluders is not None and (self.dp_noise != "parties" or not 1 <= self.dp_colluders < parties):
            raise ConfigError(f"--dp-colluders needs --dp-noise parties and must be in [1, {parties - 1}] "
                              f"for {parties} parties, got {self.dp_colluders}")

    @classmethod
    def from_args(cls, namespace: argparse.Namespace) -> "FinetuneConfig":
        """The config of parsed flags (add_arguments); other attributes of `namespace` are ignored."""
        return cls(**{field.name: getattr(namespace, field.name) for field in dataclasses.fields(cls)})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "FinetuneConfig":
        """The config that to_json wrote; fields it lacks keep their defaults. ValueError for
        anything but a JSON object of FinetuneConfig fields."""
        values = json.loads(text)
        names = {field.name for field in dataclasses.fields(cls)}
        if not isinstance(values, dict) or not set(values) <= names:
            unknown = sorted(set(values) - names) if isinstance(values, dict) else values
            raise ValueError(f"not a FinetuneConfig: {unknown!r}")
        return cls(**values)


_RANGES = (
    ((lambda v: v >= 1, "at least 1"), ("epochs", "batch_size", "layers", "lora_rank", "eval_batch_size",
                                        "threads")),
    ((lambda v: v >= 2, "at least 2 (a [CLS] and one token)"), ("seq_len",)),
    ((lambda v: 0 < v < float("inf"), "> 0"), ("lr", "lora_alpha", "adam_eps", "clip")),
    ((lambda v: v >= 0, ">= 0"), ("weight_decay", "max_train", "checkpoint_every")),
    ((lambda v: 0 <= v < 1, "in [0, 1)"), ("momentum", "test_fraction")),
)


def model_limits(model: str | None) -> tuple[int, int]:
    """(layers, positions) of the model folder `model` (default: all-MiniLM-L6-v2) from its
    config.json; ConfigError if it has none."""
    from mpcft.encoder import default_model_path
    folder = pathlib.Path(model or default_model_path())
    try:
        values = json.loads((folder / "config.json").read_text())
        return int(values["num_hidden_layers"]), int(values["max_position_embeddings"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--model {folder}: not a BERT-family model folder ({exc})") from None


def _number_type(annotation):
    """int or float for a field annotated int, float, int | None or float | None; else None."""
    kinds = [t for t in typing.get_args(annotation) if t is not type(None)] or [annotation]
    return kinds[0] if kinds[0] in (int, float) else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per FinetuneConfig field, with its default and help; booleans that default to
    True get a --no- form, those that default to False are switches."""
    for field in dataclasses.fields(FinetuneConfig):
        flag = dict(field.metadata)
        if field.type is bool:
            flag["action"] = argparse.BooleanOptionalAction if field.default else "store_true"
        elif "type" not in flag and _number_type(field.type):
            flag["type"] = _number_type(field.type)
        parser.add_argument("--" + field.name.replace("_", "-"), default=field.default, **flag)
