"""What a fine-tuning run leaves at the output party: the revealed model written back into the
plaintext encoder, `model/` (a transformers text classifier, mpcft.finetune.predict), summary.json,
training.png, the printed summary."""
import json
import pathlib

from mpcft.nn import write_back

from .predict import export_classifier


def revealed_model(model, values: dict):
    """Writes the revealed trained values {Parameter: tensor} back into the plaintext encoder
    the model was built from (mpcft.nn.write_back, LoRA merged); returns the head (weight, bias)."""
    write_back(model, values)
    return values[model.head.weight], values[model.head.bias]


def save_outputs(out: pathlib.Path, encoder, tokenizer, head_w, head_b, names, history, summary,
                 seq_len: int):
    """summary.json, training.png and, when the parameters were revealed (head_w given), model/
    (texts cut to seq_len tokens, as the run's evaluation cuts them)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if history:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for (label, losses), style in zip(history.items(), ("-", "--")):
            ax.plot(range(1, len(losses) + 1), losses, style, label=label)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title(f"mpcft fine-tuning ({summary['mode']}, {summary['parties']} parties)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "training.png", dpi=120)
        plt.close(fig)
    if head_w is not None:
        save_model(out / "model", encoder, tokenizer, head_w, head_b, names, seq_len)


def save_model(model_dir: pathlib.Path, encoder, tokenizer, head_w, head_b, names, seq_len: int) -> None:
    """The encoder with trained weights, the mean-pooling linear head and the tokenizer, as one
    model for transformers.pipeline("text-classification", trust_remote_code=True), labelled
    with `names` (mpcft.finetune.predict.export_classifier)."""
    export_classifier(model_dir, encoder, tokenizer, head_w, head_b, names, seq_len)


def print_summary(summary: dict, out) -> None:
    """The run's summary as printed by the output party, and where its outputs are."""
    print("\nmpcft fine-tuning summary")
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.1e}"
        print(f"  {key:>23}: {value}")
    out = pathlib.Path(out)
    model = "model/ (transformers), " if (out / "model").exists() else ""
    plot = ", training.png" if (out / "training.png").exists() else ""
    print(f"  outputs in {out}: {model}shares/, summary.json{plot}")
