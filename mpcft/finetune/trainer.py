"""One party's part of private fine-tuning of a pretrained BERT-family classifier under MPC.

Roles: every compute party is also a data owner with its own labelled texts
(mpcft.data.PartiesData), unless data owners outside the parties sealed share files
(mpcft.data.OwnersData). An owner tokenizes its texts and runs the frozen bottom of the
public pretrained encoder on them locally (plaintext never leaves it); the parties then train
the MPC part (mpcft.nn.Classifier) on shares of the resulting features, padding masks and
one-hot labels, with the dealer's correlations. What is revealed: the public schedule (how
many examples each owner has, which batch they fall in), the training loss per step to the
output party (rank 0; --no-loss turns it off), and at the end the trained parameters to the
output party, which evaluates on its held-out split and saves a model that transformers loads
back. With --no-reveal the parameters stay shared and the held-out split is evaluated under
MPC, opening only the number of correct predictions to the output party (--eval-mpc does this
beside the reveal). Every party saves its trained shares with their manifest (shares.py), from
which `mpcft predict --shares` predicts under MPC.
"""
import pathlib
import sys
import time

import torch

from mpcft.data import OwnersData, PartiesData, schedule
from mpcft.data.owners import model_fingerprint
from mpcft.encoder import accuracy, default_model_path, load_encoder
from mpcft.nn import SGD, AdamW, Classifier, count_correct, mpc_layer_count, no_grad, prepare
from mpcft.nn.functional import cross_entropy
from mpcft.protocols.context import MPCContext

from .checkpoint import (Checkpoints, agree_on_step, certificate_fingerprint, computation, restore_training,
                         saved_joint_seed, training_state)
from .config import FinetuneConfig
from .outputs import revealed_model, save_outputs
from .plaintext import train_plaintext
from .private import PrivateTraining
from .shares import save_trained_shares

LOSS_LIMIT = 30.0   # cross-entropy of a run that has not diverged (chance level is log(labels))


class TrainingDiverged(RuntimeError):
    """The training loss left [0, LOSS_LIMIT]: the run diverged or its values wrapped."""


def check_loss(loss: float, step: int, lr: float) -> float:
    """The output party's guard: a loss outside [0, LOSS_LIMIT] means the run diverged or its
    values left the fixed-point ranges; stop then (the other parties abort with it) rather
    than train on wrapped values."""
    if not -1e-3 <= loss <= LOSS_LIMIT:
        raise TrainingDiverged(f"step {step}: training loss {loss:.4g} is outside [0, {LOSS_LIMIT:g}]: "
                               f"the run diverged or left the fixed-point range; lower --lr (was {lr:g})")
    return loss


def make_optimizer(config: FinetuneConfig, model: Classifier, grad_scale: int):
    """The MPC optimizer over the model's trainable parameters (config.optimizer: sgd or adamw),
    handed gradients scaled by grad_scale."""
    params = model.trainable_parameters()
    if config.optimizer == "adamw":
        return AdamW(params, lr=config.lr, eps=config.adam_eps, weight_decay=config.weight_decay,
                     clip=config.clip, grad_scale=grad_scale)
    return SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
               grad_scale=grad_scale)


def evaluate_mpc(ctx, model: Classifier, data, batch_size: int) -> float | None:
    """Accuracy of the still-shared model on the held-out examples, under MPC: the parties run
    the forward pass on shared test examples and count correct predictions (nn.count_correct);
    only that count is opened, to rank 0. Returns the accuracy at rank 0, None elsewhere."""
    batches, shares_of = data.test_batches(batch_size)
    correct = 0
    with no_grad():
        for batch in batches:
            with ctx.step(f"evaluate/{len(batch)}"):
                x, m, y = shares_of(batch)
                correct = count_correct(model(x, m), y) + correct
    size = sum(len(b) for b in batches)
    if not size:
        return float("nan") if ctx.rank == 0 else None
    total = correct.reveal_to(0)
    return total.item() / size if ctx.rank == 0 else None


def _sealing_keys(session):
    """(this party's private key, the cluster CA certificate) that owners seal their files to;
    (None, None) when the session's cluster has no TLS certificates."""
    cluster = session.config
    if cluster is None or not cluster.tls:
        return None, None
    return cluster.party(session.rank).key, cluster.ca


def train(session, config: FinetuneConfig) -> dict | None:
    """One party's part of the run; returns the summary at rank 0, None elsewhere."""
    from tqdm import tqdm
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {config.device}: torch sees no CUDA device on this host")
    ctx, rank, n = MPCContext(session, device=config.device, opening=config.opening), session.rank, session.world_size
    started = time.perf_counter()
    tokenizer, encoder = load_encoder(config.model or default_model_path())
    count = mpc_layer_count(config.mode, encoder.config.num_hidden_layers, config.layers)
    data = (OwnersData(ctx, config, encoder, count, *_sealing_keys(session)) if config.owner_shares
            else PartiesData(ctx, config, encoder, tokenizer, count))
    names, test, counts = data.names, data.test, data.counts
    model = prepare(Classifier(ctx, encoder, len(names), mpc_layers=count, seed=config.seed), config.mode,
                    lora_rank=config.lora_rank, lora_alpha=config.lora_alpha, seed=config.seed)
    checkpoints = Checkpoints(config.out, rank, {
        "config": computation(config), "model": lambda: model_fingerprint(encoder),
        "certificate": certificate_fingerprint(session), "parties": n, "rank": rank})
    start = agree_on_step(session, checkpoints) if config.resume else 0
    state = checkpoints.load(start) if start else None
    private = None
    if config.dp:      # DP-SGD: Poisson batches, per-example clipping and noise on shares
        private = PrivateTraining(ctx, config, counts, make_optimizer(config, model, 1), model.grad_scale,
                                  saved_joint_seed(state))
        model.track_per_example()
        optimizer, batches = private.optimizer, private.batches
    else:
        optimizer = make_optimizer(config, model, model.grad_scale)
        batches = schedule(counts, config.batch_size, config.epochs, config.seed)
    losses = []
    if state:
        losses = restore_training(state, model, optimizer)
        if private is not None:
            private.accountant.step(start)
        ctx.new_epoch(start)
        if rank == 0:
            print(f"mpcft: resuming {config.out} at step {start} of {len(batches)}", flush=True)
    reveal_loss = not config.no_loss and (not config.dp or config.dp_reveal_loss)
    if rank == 0 and config.dp and reveal_loss:
        print("mpcft: warning: --dp-reveal-loss opens each step's training loss to party 0; "
              "the privacy guarantee does not cover it", file=sys.stderr, flush=True)
    bar = tqdm(batches[start:], desc=f"MPC {config.mode} x{n}" + " DP" * config.dp, unit="step",
               disable=rank != 0, file=sys.stdout, dynamic_ncols=True, initial=start, total=len(batches))
    try:
        for number, batch in enumerate(batches[start:], start + 1):
            step_start = time.perf_counter()
            # the dealer prepares the requests of the last step of this batch size (Poisson
            # batches under --dp, an epoch's last batch): its shapes, hence its layouts
            with ctx.step(f"train/{len(batch)}"):
                loss = None
                if batch:                        # a Poisson batch may be empty: noise only
                    x, m, y = data.train_batch(batch)
                    loss = cross_entropy(model(x, m), y, value=reveal_loss)
                    loss.backward(model.grad_scale)          # loss scaling: the optimizer divides it out
                optimizer.step()
                optimizer.zero_grad()
                if reveal_loss and loss is not None:
                    value = loss.reveal_to(0)
                    if rank == 0:
                        losses.append(check_loss(value.item(), number, config.lr))
            if private is not None:
                private.accountant.step()
            if config.checkpoint_every and number % config.checkpoint_every == 0 and number < len(batches):
                checkpoints.save(number, training_state(number, model, optimizer, losses,
                                                        private.seed if private else None))
                ctx.new_epoch(number)            # the streams a resumed run starts from
            if rank == 0:
                progress = dict(loss=f"{losses[-1]:.3f}" if losses else "hidden")
                if private is not None:
                    progress.update(eps=f"{private.accountant.epsilon:.2f}", batch=len(batch))
                bar.set_postfix(**progress, step_s=f"{time.perf_counter() - step_start:.1f}",
                                MB=f"{session.comm.bytes_sent / 1e6:.0f}")
                bar.update()
    finally:                                 # the bar's line ends before an error's line
        bar.close()
    train_seconds = time.perf_counter() - started
    comm = session.comm.snapshot()
    out = pathlib.Path(config.out)
    save_trained_shares(ctx, out, model, config, names, encoder, count)
    mpc_acc = None
    if config.eval_mpc or not config.reveal or config.owner_shares:
        eval_start = time.perf_counter()
        mpc_acc = evaluate_mpc(ctx, model, data, config.eval_batch_size)
        eval_seconds = time.perf_counter() - eval_start
    values = {p: p.tensor().reveal_to(0) for p in model.trainable_parameters()} if config.reveal else {}
    if rank != 0:
        return None
    summary = {"mode": config.mode, "seed": config.seed, "optimizer": config.optimizer, "mpc_layers": count, "parties": n,
               "data_owners": len(counts) if config.owner_shares else n, "train_examples": sum(counts),
               "steps": len(batches),
               "seconds": round(train_seconds, 1), "MB_sent_per_party": round(comm.bytes_sent / 1e6, 1),
               "rounds": comm.rounds, "dealer_MB_received": round(comm.dealer_bytes_received / 1e6, 1)}
    if private is not None:
        summary.update(private.summary())
    head_w = head_b = None
    if config.reveal:
        head_w, head_b = revealed_model(model, values)
        if test is not None:
            summary["test_examples"] = len(test[0])
            summary["accuracy"] = accuracy(encoder, head_w, head_b, tokenizer, *test, config.seq_len)
    if mpc_acc is not None:
        summary["mpc_accuracy"] = mpc_acc
        summary["mpc_eval_seconds"] = round(eval_seconds, 1)
    history = {"MPC": losses} if losses else {}
    if config.plaintext_baseline:
        base_acc, base_losses = train_plaintext(config, names, counts, test,
                                                private.noise_multiplier if private else None)
        summary["opacus_accuracy" if config.dp else "plaintext_accuracy"] = base_acc
        if base_losses:
            history["plaintext torch"] = base_losses
    save_outputs(out, encoder, tokenizer, head_w, head_b, names, history, summary, config.seq_len)
    return summary
