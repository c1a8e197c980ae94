"""`mpcft predict --shares RUN`: classify texts under MPC with a run whose trained parameters
stayed secret-shared (`mpcft finetune --no-reveal`).

Every party loads its own shares of the trained classifier (RUN/shares/party-R.pt, checked
against its manifest: mpcft.finetune.shares) and the parties check that they hold the same
run. The asking party, rank 0, holds the texts: it tokenises them and runs the public frozen
bottom of the encoder on them in plaintext (as data owners do in training), then shares the
features; the parties run the trained part (mpcft.nn.Classifier) on the shares, and only
each text's predicted label and its softmax probability are opened, to rank 0
(predicted_label). The other parties learn the number of texts and the batches (shapes),
nothing else; rank 0 learns the label and probability of each of its texts, not the model.

The worker, one process per party: `python -m mpcft.finetune.predict_shared --shares RUN`,
the texts given to rank 0 (`mpcft predict --shares RUN` starts the parties and the dealer on
loopback; on several hosts: `mpcft party --config cluster.toml --rank R -m
mpcft.finetune.predict_shared --shares RUN [--text ... at rank 0]`).
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # before transformers loads: the model is local

import argparse
import hashlib
import pathlib
import sys

import torch

from mpcft.data import DataError
from mpcft.encoder import frozen_features, quiet_transformers
from mpcft.kernels.threads import set_compute_threads
from mpcft.nn import Classifier, no_grad, prepare
from mpcft.protocols import beaver, comparison, softmax
from mpcft.protocols.context import MPCContext
from mpcft.runtime import init
from mpcft.runtime.errors import MPCRuntimeError, failure_report
from mpcft.runtime.session import ENV_RANK
from mpcft.tensor import SharedTensor

from .config import ConfigError, HelpFormatter
from .predict import add_text_arguments, requested_texts, write_predictions
from .shares import SharesError, check_run, load_run_encoder, load_shares, read_manifest, run_config

MODULE = "mpcft.finetune.predict_shared"


def predicted_label(logits: SharedTensor) -> tuple[SharedTensor, SharedTensor]:
    """Shares of each row's predicted label (scale 1: the index of the row's largest logit,
    the lowest one among ties) and of that label's softmax probability (scale f) for logits
    [B, L]; nothing is opened. In ring units y = L z + (L - 1 - j) orders the logits with ties
    broken toward lower j, and its entries differ, so y - max(y) is 0 at one j only (the
    maximum is exact): h = 1 - [y - max(y) < 0] is one-hot, the label sum_j j h_j and the
    probability sum_j h_j softmax(z)_j (h has scale 1: no truncation). The probability has
    softmax's error (protocols/softmax.py, |z| < 2^11). Cost: max_along_cost(n, B L, L)
    + sign_cost(n, B L) + softmax_cost(n, (B, L), clamp=True) + mul_cost(n, B L, B L)."""
    ctx, z = logits.ctx, logits.detach().share
    rows, labels = z.shape
    ranks = torch.arange(labels - 1, -1, -1, dtype=torch.float64)
    order = z * labels + ctx.public(ranks, (rows, labels), frac_bits=0)
    best = comparison.max_along(ctx, order, -1)
    one_hot = ctx.public(1.0, (rows, labels), frac_bits=0) - comparison.sign_bit(ctx, order - best)
    label = (one_hot * torch.arange(labels, device=z.device)).sum(-1)
    probability = beaver.mul(ctx, softmax.softmax(ctx, z, clamp=True), one_hot).sum(-1)
    return SharedTensor(ctx, label, 0), SharedTensor(ctx, probability)


def _agree_on_run(session, manifest: dict) -> None:
    """SharesError at every party unless all of them hold shares of the same run (one
    all-gather of a digest of the run's id, party count and labels: public)."""
    identity = f"{manifest['run']}|{manifest['parties']}|{manifest['labels']}".encode()
    words = torch.frombuffer(bytearray(hashlib.sha256(identity).digest()), dtype=torch.int64)
    for rank, theirs in enumerate(session.all_gather(words)):
        if not torch.equal(theirs, words):
            raise SharesError(f"party {rank} holds the shares of another run than party {session.rank}'s "
                              f"(--shares must name the same run's folder at every party)")


def predict_under_mpc(session, run, texts: list[str] | None, batch_size: int | None) -> list | None:
    """This party's part: at rank 0 [(label name, probability, None)] for each of `texts`
    in batches of `batch_size`, None elsewhere (the other parties pass None for both)."""
    rank = session.rank
    manifest = read_manifest(run, rank)
    if manifest["parties"] != session.world_size:
        raise SharesError(f"--shares {run}: the run has {manifest['parties']} parties, this cluster "
                          f"{session.world_size}")
    _agree_on_run(session, manifest)
    config, names, layers = run_config(manifest), manifest["labels"], manifest["mpc_layers"]
    tokenizer, encoder = load_run_encoder(manifest)
    ctx = MPCContext(session)
    model = prepare(Classifier(ctx, encoder, len(names), mpc_layers=layers, seed=config.seed), config.mode,
                    lora_rank=config.lora_rank, lora_alpha=config.lora_alpha, seed=config.seed)
    try:
        model.load_state_dict(load_shares(run, manifest))
    except (KeyError, ValueError) as exc:
        raise SharesError(f"--shares {run}: party {rank}'s shares do not fit the run's model: {exc}") from None
    count, batch_size = (int(v) for v in session.broadcast(          # rank 0's request: public
        torch.tensor([len(texts), batch_size] if rank == 0 else [0, 0]), 0, dtype=torch.int64, shape=(2,)))
    if count < 0 or batch_size < 1:
        raise SharesError(f"party 0 asked for {count} texts in batches of {batch_size}")
    features = masks = None
    if rank == 0:
        features, masks = frozen_features(encoder, tokenizer, texts, config.seq_len, layers)
    hidden = encoder.config.hidden_size
    results = []
    for start in range(0, count, batch_size):
        stop = min(count, start + batch_size)
        shape = (stop - start, config.seq_len, hidden) if layers else (stop - start, hidden)
        with ctx.step(f"predict/{stop - start}"), no_grad():
            x = SharedTensor.from_plain(ctx, features[start:stop] if rank == 0 else None, 0, shape)
            mask = (SharedTensor.from_plain(ctx, masks[start:stop] if rank == 0 else None, 0, shape[:2], 0)
                    if layers else None)
            label, probability = predicted_label(model(x, mask))
            label, probability = label.reveal_to(0), probability.reveal_to(0)
        if rank == 0:
            results += [(names[int(j)], float(p), None) for j, p in zip(label.round().long(), probability)]
    return results if rank == 0 else None


def check_request(args) -> int:
    """`mpcft predict --shares RUN` before any party starts: the texts, --output's folder and
    the run's shares (shares.check_run); returns the run's number of parties. DataError or
    SharesError (one line) otherwise."""
    if args.model is not None:
        raise DataError("give --model (a model folder) or --shares RUN (a --no-reveal run), not both")
    requested_texts(args)
    if args.output is not None and not pathlib.Path(args.output).resolve().parent.is_dir():
        raise DataError(f"--output {args.output}: its folder does not exist")
    return check_run(args.shares, args.parties)["parties"]


def worker_arguments(args) -> tuple[list[str], list[str]]:
    """The worker's options for a `mpcft predict --shares` request `args`: (every party's,
    rank 0's own: the texts, which no other party's command line carries)."""
    options = [f"--shares={args.shares}", f"--text-column={args.text_column}", f"--batch-size={args.batch_size}"]
    texts = [f"--text={text}" for text in args.text or []]
    return options, texts + [f"--{flag}={value}" for flag, value in (("input", args.input), ("output", args.output))
                             if value is not None]


def parse(argv=None):
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", formatter_class=HelpFormatter,
                                     description="One party's part of a prediction under MPC from a --no-reveal "
                                                 "run's shares (`mpcft predict --shares`); only rank 0 reads "
                                                 "the texts and writes the predictions.")
    parser.add_argument("--shares", required=True, metavar="RUN",
                        help="this party's run folder (its shares/party-R.pt and party-R.json)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this party")
    add_text_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    set_compute_threads(max(args.threads, 1))
    quiet_transformers()
    try:
        with init() as session:
            texts = requested_texts(args) if session.rank == 0 else None
            results = predict_under_mpc(session, args.shares, texts, args.batch_size if session.rank == 0 else None)
            if results is not None:
                write_predictions(texts, results, args.output)
    except (DataError, ConfigError) as exc:
        print(f"mpcft party {os.environ.get(ENV_RANK)}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except MPCRuntimeError as exc:
        status, line = failure_report(exc)
        print(f"mpcft party {os.environ.get(ENV_RANK)}: {line}", file=sys.stderr, flush=True)
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
