"""Private fine-tuning of a pretrained BERT-family classifier under MPC (`mpcft finetune`).

Roles: every compute party is also a data owner with its own labelled texts. Each owner
tokenizes its texts and runs the frozen bottom of the public pretrained encoder on them
locally (plaintext never leaves it); it secret-shares the resulting features, the padding
mask and one-hot labels, batch by batch, with pairwise seeds (no bytes sent). The parties
then train the MPC part (mpcft.nn.Classifier) with the dealer's correlations. What is
revealed: the public schedule (how many examples each owner has, which batch they fall in),
the training loss per step to the output party (rank 0; --no-loss turns it off), and at the
end the trained parameters to the output party, which evaluates on its held-out split and
saves a model that transformers loads back. With --no-reveal the parameters stay shared
and the held-out split is evaluated under MPC, opening only the number of correct
predictions to the output party (--eval-mpc does this beside the reveal). Trained shares
are saved by every party.

Run as a worker under `mpcft launch`/`mpcft party` (`python -m mpcft.finetune ...`), or let
`mpcft finetune` start local parties and the dealer.
"""
import argparse
import json
import os
import pathlib
import sys
import time

import torch

from mpcft import owners as owner_files
from mpcft.data import BUILTIN_MAX_TRAIN, DataError, load_data, schedule
from mpcft.encoder import accuracy, default_model_path, frozen_features, load_encoder
from mpcft.nn import MODES, SGD, AdamW, Classifier, count_correct, mpc_layer_count
from mpcft.nn.bert import hf_parameter_name
from mpcft.protocols import sharing
from mpcft.protocols.context import MPCContext
from mpcft.plaintext import train_plaintext
from mpcft.runtime.errors import ConfigError, MPCRuntimeError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each option's default, except where there is none (None, False)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", help="CSV/TSV of labelled texts (default: the built-in set)")
    parser.add_argument("--test", help="held-out CSV/TSV for the output party (default: a split of --train)")
    parser.add_argument("--owner-shares", nargs="+", default=None, metavar="PATH",
                        help="train on share files sealed by data owners (`mpcft share-data`): files, "
                             "or folders holding *.party-R.mpcft; the parties are then not data owners")
    parser.add_argument("--owner-sealing", nargs="+", type=owner_files.sealing_pin, default=None, metavar="NAME=ID",
                        help="with --owner-shares: accept only sealing ID (printed by `mpcft share-data`) "
                             "of owner NAME, refusing its withdrawn ones")
    parser.add_argument("--text-column", default="sentence", help="column of --train/--test holding the texts")
    parser.add_argument("--label-column", default="label", help="column of --train/--test holding the labels")
    parser.add_argument("--model", default=None, help="local model folder (default: all-MiniLM-L6-v2)")
    parser.add_argument("--mode", choices=MODES, default="lora", help="what is trained (see mpcft.nn.classifier)")
    parser.add_argument("--layers", type=int, default=1, help="top encoder layers under MPC (modes top, lora)")
    parser.add_argument("--lora-rank", type=int, default=4, help="rank r of the LoRA adapters (mode lora)")
    parser.add_argument("--lora-alpha", type=float, default=8.0, help="LoRA scaling alpha (the update is alpha/r * B A)")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the training examples")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per training step (all owners together)")
    parser.add_argument("--seq-len", type=int, default=32, help="tokens per text (longer texts are cut)")
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd",
                        help="adamw: see mpcft.nn.AdamW (its inverse square root costs per parameter: "
                             "best for modes head and lora)")
    parser.add_argument("--lr", type=float, default=0.05, help="learning rate")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--adam-eps", type=float, default=1e-4, help="AdamW eps (inside the square root)")
    parser.add_argument("--clip", type=float, default=1.0, help="AdamW: clip gradients to [-clip, clip]")
    parser.add_argument("--max-train", type=int, default=None,
                        help=f"use at most this many training examples (0: all; default: "
                             f"{BUILTIN_MAX_TRAIN} of the built-in set, all of --train)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="held-out share of --train when no --test is given")
    parser.add_argument("--split-train", action=argparse.BooleanOptionalAction, default=True,
                        help="parties read the same file and each keeps every n-th row (local runs)")
    parser.add_argument("--seed", type=int, default=0, help="public seed: split, schedule, initialisation")
    parser.add_argument("--out", default="runs/finetune", help="output folder")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per party")
    parser.add_argument("--device", default="cpu", help="where each party keeps its shares (cpu, cuda)")
    parser.add_argument("--no-loss", action="store_true", help="do not reveal the training loss")
    parser.add_argument("--reveal", action=argparse.BooleanOptionalAction, default=True,
                        help="reveal the trained parameters to the output party (rank 0) at the end; "
                             "with --no-reveal they stay shared and the evaluation runs in MPC")
    parser.add_argument("--eval-mpc", action="store_true",
                        help="evaluate the held-out split in MPC (only the number of correct "
                             "predictions is opened, to rank 0); implied by --no-reveal")
    parser.add_argument("--eval-batch-size", type=int, default=32, help="examples per evaluation batch under MPC")
    parser.add_argument("--plaintext-baseline", action="store_true",
                        help="also train the same configuration in plain torch (output party)")


def worker_argv(args: argparse.Namespace) -> list[str]:
    """The fine-tuning options of `args` as command-line arguments for the party workers."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = []
    for action in parser._actions:
        if not action.option_strings or not hasattr(args, action.dest):
            continue
        value, flag = getattr(args, action.dest), action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(action, argparse._StoreTrueAction):
            argv += [flag] if value else []
        elif isinstance(value, list):
            argv += [flag] + [str(v) for v in value]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


LOSS_LIMIT = 30.0   # cross-entropy of a run that has not diverged (chance level is log(labels))


class TrainingDiverged(RuntimeError):
    pass


def check_loss(loss: float, step: int, lr: float) -> float:
    """The output party's guard: a loss outside [0, LOSS_LIMIT] means the run diverged or its
    values left the fixed-point ranges; stop then (the other parties abort with it) rather
    than train on wrapped values."""
    if not -1e-3 <= loss <= LOSS_LIMIT:
        raise TrainingDiverged(f"step {step}: training loss {loss:.4g} is outside [0, {LOSS_LIMIT:g}]: "
                               f"the run diverged or left the fixed-point range; lower --lr (was {lr:g})")
    return loss


def make_optimizer(args, model: Classifier):
    params = model.trainable_parameters()
    if args.optimizer == "adamw":
        return AdamW(params, lr=args.lr, eps=args.adam_eps, weight_decay=args.weight_decay,
                     clip=args.clip, grad_scale=model.grad_scale)
    return SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
               grad_scale=model.grad_scale)


def share_batch(ctx, batch, features, masks, labels, num_labels: int, feature_shape):
    """Every owner shares its examples of the batch; returns shares (x, mask or None, one-hot y)."""
    xs, ms, ys = [], [], []
    for owner in range(ctx.world_size):
        idx = [i for o, i in batch if o == owner]
        if not idx:
            continue
        mine = ctx.rank == owner
        shape = (len(idx),) + tuple(feature_shape)
        x = ctx.fp.encode(features[idx]) if mine else None
        y = ctx.fp.encode(torch.nn.functional.one_hot(labels[idx], num_labels).double()) if mine else None
        xs.append(sharing.share(ctx, x, owner, shape))
        ys.append(sharing.share(ctx, y, owner, (len(idx), num_labels)))
        if len(feature_shape) == 2:
            m = masks[idx].to(torch.int64) if mine else None
            ms.append(sharing.share(ctx, m, owner, shape[:2]))
    return torch.cat(xs), (torch.cat(ms) if ms else None), torch.cat(ys)


# ----- where the shared examples come from -------------------------------------------------------
class PartiesData:
    """Every compute party is a data owner: it runs the frozen layers on its own texts and
    shares the results batch by batch (pairwise seeds: no bytes sent). Rank 0 also holds the
    plaintext held-out split."""

    def __init__(self, ctx, args, encoder, tokenizer, mpc_layers: int):
        (texts, labels), self.test, self.names = load_data(args, ctx.rank, ctx.world_size)
        self.ctx, self.args, self.encoder, self.tokenizer = ctx, args, encoder, tokenizer
        self.mpc_layers = mpc_layers
        self.features, self.masks = frozen_features(encoder, tokenizer, texts, args.seq_len, mpc_layers)
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.counts = [int(c) for c in ctx.session.all_gather(torch.tensor([len(texts)]))]
        hidden = encoder.config.hidden_size
        self.feature_shape = (args.seq_len, hidden) if mpc_layers else (hidden,)

    def train_batch(self, batch):
        return share_batch(self.ctx, batch, self.features, self.masks, self.labels, len(self.names),
                           self.feature_shape)

    def test_batches(self, batch_size: int):
        """(batches, shares of a batch) for the held-out split, which rank 0 shares."""
        ctx = self.ctx
        size = int(ctx.session.broadcast(torch.tensor([len(self.test[0]) if self.test else 0]), 0,
                                         dtype=torch.int64, shape=(1,))[0])
        features = masks = labels = None
        if ctx.rank == 0:
            features, masks = frozen_features(self.encoder, self.tokenizer, self.test[0], self.args.seq_len,
                                              self.mpc_layers)
            labels = torch.tensor(self.test[1], dtype=torch.int64)
        batches = [[(0, i) for i in range(start, min(size, start + batch_size))]
                   for start in range(0, size, batch_size)]
        return batches, lambda batch: share_batch(ctx, batch, features, masks, labels, len(self.names),
                                                  self.feature_shape)


class OwnersData:
    """Data owners outside the parties sent sealed share files (mpcft.owners): each party
    reads its own; nothing is shared during training. The held-out parts are evaluated in MPC."""

    def __init__(self, ctx, args, encoder, mpc_layers: int):
        from mpcft.runtime.config import load as load_cluster
        from mpcft.runtime.envelope import SealedFileError
        from mpcft.runtime.session import ENV_CLUSTER
        if args.plaintext_baseline:
            raise ConfigError("--plaintext-baseline needs every owner's plaintext: not with --owner-shares")
        config = load_cluster(os.environ[ENV_CLUSTER])
        if not config.tls:
            raise ConfigError("--owner-shares needs the parties' certificates (a TLS cluster)")
        self.owners = owner_files.load_owner_shares(
            args.owner_shares, ctx.rank, ctx.world_size, config.party(ctx.rank).key, config.ca,
            ctx.frac_bits, owner_files.model_fingerprint(encoder),
            owner_files.sealing_pins(args.owner_sealing))
        owner_files.check_same_files(ctx.session, self.owners)
        header = self.owners[0].header
        if header["mpc_layers"] != mpc_layers:
            raise SealedFileError(f"the share files were made for {header['mpc_layers']} MPC layers, this run "
                                  f"has {mpc_layers}: use the owners' --mode and --layers")
        self._batch = owner_files.batch_shares
        self.names, self.test = header["labels"], None
        self.counts = [o.count("train") for o in self.owners]

    def train_batch(self, batch):
        return self._batch(self.owners, "train", batch)

    def test_batches(self, batch_size: int):
        items = [(o, i) for o, owner in enumerate(self.owners) for i in range(owner.count("test"))]
        batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
        return batches, lambda batch: self._batch(self.owners, "test", batch)


# ----- evaluation ----------------------------------------------------------------------------
def evaluate_mpc(ctx, model: Classifier, data, batch_size: int) -> float | None:
    """Accuracy of the still-shared model on the held-out examples, under MPC: the parties run
    the forward pass on shared test examples and count correct predictions (nn.count_correct);
    only that count is opened, to rank 0. Returns the accuracy at rank 0, None elsewhere."""
    batches, shares_of = data.test_batches(batch_size)
    correct = torch.zeros((), dtype=torch.int64)
    for batch in batches:
        with ctx.step("evaluate"):
            x, m, y = shares_of(batch)
            correct = correct + count_correct(ctx, model(x, m), y)
    total = sharing.open_to(ctx, correct, 0)
    size = sum(len(b) for b in batches)
    return (total.item() / size if size else float("nan")) if ctx.rank == 0 else None


# ----- the revealed model (output party) ----------------------------------------------------
def revealed_model(encoder, model: Classifier, values: dict, mode: str, args):
    """The plaintext encoder with trained weights written back (LoRA merged), and the head."""
    total = encoder.config.num_hidden_layers
    first = total - model.mpc_layers
    params = dict(encoder.named_parameters())
    scaling = args.lora_alpha / args.lora_rank
    with torch.no_grad():
        for name, value in values.items():
            if name.startswith("head."):
                continue
            block, rest = name.split(".", 1)
            prefix = f"encoder.layer.{first + int(block[len('layer'):])}."
            if ".lora_a." in rest or ".lora_b." in rest:
                if ".lora_a." in rest:
                    target = rest.split(".lora_a.")[0]
                    b = values[f"{block}.{target}.lora_b.weight"]
                    params[prefix + hf_parameter_name(target + ".weight")] += scaling * b @ value
                continue
            params[prefix + hf_parameter_name(rest)].copy_(value)
    return encoder, values["head.weight"], values["head.bias"]


def save_outputs(out: pathlib.Path, encoder, tokenizer, head_w, head_b, names, history, summary):
    """summary.json, training.png and, when the parameters were revealed (head_w given), model/."""
    out.mkdir(parents=True, exist_ok=True)
    if head_w is not None:
        save_model(out / "model", encoder, tokenizer, head_w, head_b, names)
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


def save_model(model_dir: pathlib.Path, encoder, tokenizer, head_w, head_b, names) -> None:
    """The encoder with trained weights (transformers format), its tokenizer and the head."""
    encoder.float().save_pretrained(model_dir)
    encoder.double()
    tokenizer.save_pretrained(model_dir)
    from safetensors.torch import save_file
    save_file({"weight": head_w.float().contiguous(), "bias": head_b.float().contiguous()},
              str(model_dir / "classifier_head.safetensors"))
    (model_dir / "classifier_head.json").write_text(json.dumps(
        {"pooling": "mean", "labels": names, "head": "classifier_head.safetensors"}, indent=2))


# ----- the worker -----------------------------------------------------------------------------
def train(session, args) -> dict | None:
    """One party's part of the run; returns the summary at rank 0, None elsewhere."""
    from tqdm import tqdm
    torch.set_num_threads(args.threads)
    import numba
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: torch sees no CUDA device on this host")
    ctx, rank, n = MPCContext(session, device=args.device), session.rank, session.world_size
    started = time.perf_counter()
    tokenizer, encoder = load_encoder(args.model or default_model_path())
    count = mpc_layer_count(args.mode, encoder.config.num_hidden_layers, args.layers)
    data = (OwnersData(ctx, args, encoder, count) if args.owner_shares
            else PartiesData(ctx, args, encoder, tokenizer, count))
    names, test, counts = data.names, data.test, data.counts
    model = Classifier(ctx, encoder, len(names), mode=args.mode, layers=args.layers,
                       lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, seed=args.seed)
    optimizer = make_optimizer(args, model)
    batches = schedule(counts, args.batch_size, args.epochs, args.seed)
    losses = []
    bar = tqdm(batches, desc=f"MPC {args.mode} x{n}", unit="step", disable=rank != 0, file=sys.stdout,
               dynamic_ncols=True)
    for batch in bar:
        step_start = time.perf_counter()
        with ctx.step("train"):              # the dealer prepares the last step's requests
            x, m, y = data.train_batch(batch)
            logits = model(x, m)
            loss = model.loss_backward(logits, y, with_loss=not args.no_loss)
            optimizer.step()
            optimizer.zero_grad()
            if loss is not None:
                value = sharing.open_to(ctx, loss, 0)
                if rank == 0:
                    losses.append(check_loss(ctx.fp.decode(value).item(), len(losses) + 1, args.lr))
        if rank == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}" if losses else "hidden",
                            step_s=f"{time.perf_counter() - step_start:.1f}",
                            MB=f"{session.comm.bytes_sent / 1e6:.0f}")
    train_seconds = time.perf_counter() - started
    comm = session.comm.snapshot()
    out = pathlib.Path(args.out)
    (out / "shares").mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "shares" / f"party-{rank}.pt")
    mpc_acc = None
    if args.eval_mpc or not args.reveal or args.owner_shares:
        eval_start = time.perf_counter()
        mpc_acc = evaluate_mpc(ctx, model, data, args.eval_batch_size)
        eval_seconds = time.perf_counter() - eval_start
    values = {}
    for name, p in model.named_parameters():
        if p.trainable and args.reveal:
            opened = sharing.open_to(ctx, p.data, 0)
            if rank == 0:
                values[name] = ctx.fp.decode(opened)
    if rank != 0:
        return None
    summary = {"mode": args.mode, "optimizer": args.optimizer, "mpc_layers": count, "parties": n,
               "data_owners": len(counts) if args.owner_shares else n, "train_examples": sum(counts),
               "steps": len(batches),
               "seconds": round(train_seconds, 1), "MB_sent_per_party": round(comm.bytes_sent / 1e6, 1),
               "rounds": comm.rounds, "dealer_MB_received": round(comm.dealer_bytes_received / 1e6, 1)}
    head_w = head_b = None
    if args.reveal:
        encoder, head_w, head_b = revealed_model(encoder, model, values, args.mode, args)
        if test is not None:
            summary["test_examples"] = len(test[0])
            summary["accuracy"] = accuracy(encoder, head_w, head_b, tokenizer, *test, args.seq_len)
    if mpc_acc is not None:
        summary["mpc_accuracy"] = mpc_acc
        summary["mpc_eval_seconds"] = round(eval_seconds, 1)
    history = {"MPC": losses} if losses else {}
    if args.plaintext_baseline:
        base_acc, base_losses = train_plaintext(args, names, counts, test)
        summary["plaintext_accuracy"] = base_acc
        history["plaintext torch"] = base_losses
    save_outputs(out, encoder, tokenizer, head_w, head_b, names, history, summary)
    return summary


def print_summary(summary: dict, out) -> None:
    print("\nmpcft fine-tuning summary")
    for key, value in summary.items():
        print(f"  {key:>20}: {value:.4f}" if isinstance(value, float) else f"  {key:>20}: {value}")
    model = "model/ (transformers), " if (pathlib.Path(out) / "model").exists() else ""
    print(f"  outputs in {out}: {model}shares/, summary.json, training.png")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpcft.finetune", description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    from mpcft.runtime import init
    from mpcft.runtime.session import ENV_RANK
    try:
        with init() as session:
            summary = train(session, args)
    except (MPCRuntimeError, DataError) as exc:
        print(f"mpcft party {os.environ.get(ENV_RANK)}: {type(exc).__name__}: {exc}", file=sys.stderr,
              flush=True)
        return 1
    if summary is not None:
        print_summary(summary, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
