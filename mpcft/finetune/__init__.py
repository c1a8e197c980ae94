"""Private fine-tuning of a pretrained BERT-family classifier under MPC (`mpcft finetune`).

`config` (FinetuneConfig: every option, its flags and its JSON form), `trainer` (one party's
part of a run: train), `outputs` (the revealed model, saved files, the summary), `plaintext`
(the same run in plain torch, the baseline), `__main__` (the worker process), `predict` (the
model folder that transformers.pipeline loads, and `mpcft predict`), `modeling_mpcft` (that
folder's model classes, copied into it), `shares` (each party's trained shares and their
manifest), `predict_shared` (`mpcft predict --shares`: prediction under MPC from them).

    from mpcft.finetune import FinetuneConfig, train
    with mpcft.init() as session:
        summary = train(session, FinetuneConfig(mode="head", epochs=2))
"""
from .config import FinetuneConfig

__all__ = ["FinetuneConfig", "train"]


def __getattr__(name):
    """`train` is imported when first asked for (it loads transformers), so that the CLI
    checks a run's options without loading it."""
    if name == "train":
        from .trainer import train
        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
