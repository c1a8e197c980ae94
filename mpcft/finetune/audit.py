"""`mpcft audit`: train as `mpcft finetune` does, with canaries inserted, then attack the model.

The members (finetune's split of the texts that occur once in --train or the built-in set) plus
--canary-repeats copies of each of --canaries random sentences are trained under MPC by
`mpcft finetune` itself, in a subprocess, with every fine-tuning option given (--dp included).
The revealed model is then loaded in plaintext and attacked (mpcft.privacy.audit): loss-threshold
membership inference of members against held-out non-members, and the exposure of the inserted
canaries among --reference-canaries never inserted. Writes OUT/train/ (the run), OUT/audit.json
and OUT/audit.md.
"""
import collections
import csv
import dataclasses
import json
import math
import pathlib
import subprocess
import sys
import tempfile
import time

from mpcft.data import BUILTIN_MAX_TRAIN, DataError, builtin_dataset, check_data, read_labelled, split
from mpcft.encoder import default_model_path, example_losses, quiet_transformers
from mpcft.kernels import fresh_seed
from mpcft.privacy.audit import (REPORTED_FPRS, chance_exposure, check_dp_bound, empirical_epsilon, exposure,
                                 make_canaries, membership_scores)

from .config import ConfigError, FinetuneConfig, add_arguments
from .predict import read_head

TEXT, LABEL = "sentence", "label"   # columns of the CSV files the audit trains on


def add_audit_arguments(parser) -> None:
    """The audit's own options, `mpcft finetune`'s local-run options and every fine-tuning flag."""
    parser.add_argument("--canaries", type=int, default=8, help="random sentences inserted into training")
    parser.add_argument("--canary-repeats", type=int, default=1,
                        help="copies of each inserted canary (DP covers one example: r copies are a group of r)")
    parser.add_argument("--reference-canaries", type=int, default=1000,
                        help="canaries never inserted, that the inserted ones are ranked among")
    parser.add_argument("--parties", type=int, default=2, help="compute parties of the training run")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per protocol step")
    parser.add_argument("--certs", default=None, help="certificate folder (default: throw-away)")
    add_arguments(parser)
    parser.set_defaults(out="runs/audit")


def check_audit_options(args, config: FinetuneConfig) -> None:
    """ConfigError, in one line, for audit options out of range or fine-tuning options it cannot audit."""
    for flag, value, least in (("--canaries", args.canaries, 1), ("--canary-repeats", args.canary_repeats, 1),
                               ("--reference-canaries", args.reference_canaries, 10)):
        if value < least:
            raise ConfigError(f"{flag} must be >= {least}, got {value}")
    if config.owner_shares or config.owner_sealing:
        raise ConfigError("--owner-shares: the audit trains on data it writes itself (the rows and the canaries)")
    if not config.reveal:
        raise ConfigError("--no-reveal: the audit attacks the revealed model")
    config.check(args.parties)


def finetune_argv(config: FinetuneConfig) -> list[str]:
    """The `mpcft finetune` flags (config.add_arguments) that give `config`: one per field off its default."""
    argv = []
    for field in dataclasses.fields(FinetuneConfig):
        value, flag = getattr(config, field.name), "--" + field.name.replace("_", "-")
        if value == field.default:
            continue
        if field.type is bool:
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, *map(str, value if isinstance(value, list) else [value])]
    return argv


def unique(rows) -> list:
    """The rows (text, label) whose text no other row has."""
    rows = list(rows)
    counts = collections.Counter(text for text, _ in rows)
    return [row for row in rows if counts[row[0]] == 1]


def audit_rows(config: FinetuneConfig):
    """(members, non-members, label names), rows (text, label id): the texts that occur once in
    --train (default: the built-in set; a repeated text could be member and non-member at once),
    split as finetune splits (--test or --test-fraction, --seed, --max-train), so that members
    and non-members are drawn alike. --test rows that copy a member are no non-members."""
    if config.train:
        texts, labels, names = read_labelled(config.train, config.text_column, config.label_column)
    else:
        texts, labels, names = builtin_dataset(seed=config.seed)
    rows = unique(zip(texts, labels))
    if config.test:
        held_out = unique(zip(*read_labelled(config.test, config.text_column, config.label_column, names)[:2]))
    else:
        member_index, held_out_index = split(len(rows), config.test_fraction, config.seed)
        rows, held_out = [rows[i] for i in member_index], [rows[i] for i in held_out_index]
    max_train = BUILTIN_MAX_TRAIN if config.max_train is None and not config.train else config.max_train
    members = rows[:max_train or None]
    known = {text for text, _ in members}
    nonmembers = [(text, label) for text, label in held_out if text not in known]
    if not members or not nonmembers:
        raise DataError(f"{config.test or config.train or 'the built-in set'}: too few texts that occur once "
                        f"for members and non-members (give more rows, --test, or another --test-fraction)")
    return members, nonmembers, names


def evenly(rows: list, count: int) -> list:
    """`count` of `rows` at even strides (a public, label-mixing subsample)."""
    return [rows[i * len(rows) // count] for i in range(count)]


def canary_vocabulary(tokenizer) -> list[str]:
    """The tokenizer's whole-word entries of three or more ASCII letters, sorted."""
    return sorted(w for w in tokenizer.get_vocab() if w.isascii() and w.isalpha() and len(w) >= 3)


def write_rows(path: pathlib.Path, rows, names) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([TEXT, LABEL])
        writer.writerows((text, names[label]) for text, label in rows)


def load_trained(model_dir: pathlib.Path):
    """(tokenizer, encoder in float64, head weight, head bias, label names) of a run's model/ folder."""
    return read_head(model_dir)[:5]


def measure(model_dir, members, nonmembers, inserted, reference, names, config: FinetuneConfig,
            privacy: dict | None) -> dict:
    """The attacks on the trained model: membership on equal numbers of members and non-members
    (with the epsilon it proves at config.delta, and the run's DP bound if `privacy` holds the
    run's epsilon and delta), and the exposure of each inserted canary."""
    tokenizer, encoder, head_w, head_b, model_names = load_trained(model_dir)

    def losses(rows):
        ids = [model_names.index(names[label]) for _, label in rows]
        return example_losses(encoder, head_w, head_b, tokenizer, [text for text, _ in rows], ids, config.seq_len)

    count = min(len(members), len(nonmembers))
    member_losses, nonmember_losses = losses(evenly(members, count)), losses(evenly(nonmembers, count))
    membership = membership_scores(member_losses, nonmember_losses)
    membership["epsilon_proved"] = empirical_epsilon(member_losses, nonmember_losses, config.delta)
    reference_losses = losses(reference)
    exposures = [exposure(loss, reference_losses) for loss in losses(inserted)]
    report = {"membership": membership,
              "canaries": {"exposures": exposures, "mean_exposure": sum(exposures) / len(exposures),
                           "max_exposure": max(exposures), "chance_exposure": chance_exposure(len(reference)),
                           "most_exposure": math.log2(len(reference) + 1)}}
    if privacy:
        report["dp_bound"] = check_dp_bound(member_losses, nonmember_losses, privacy["epsilon"], privacy["delta"])
    return report


def markdown(report: dict) -> str:
    """The audit as a small markdown table and the lines that explain it."""
    scores, canaries, dp = report["membership"], report["canaries"], report.get("dp_bound")
    copies = f"{canaries['repeats']} {'copy' if canaries['repeats'] == 1 else 'copies'}"
    tprs = [scores["tpr_at_fpr"][fpr] for fpr in REPORTED_FPRS]
    bounds = " / ".join(f"{dp['tpr_at_fpr'][fpr]['bound']:.3f}" for fpr in REPORTED_FPRS) if dp else "none"
    lines = ["| epsilon | AUC | TPR@1% | TPR@0.1% | DP bound on TPR@1% / @0.1% | epsilon proved (95 %) "
             "| canary exposure mean / max | chance exposure |", "|---|---|---|---|---|---|---|---|",
             f"| {report['epsilon'] if dp else 'none'} | {scores['auc']:.3f} | {tprs[0]:.3f} | {tprs[1]:.3f} "
             f"| {bounds} | {scores['epsilon_proved']:.2f} | {canaries['mean_exposure']:.2f} / "
             f"{canaries['max_exposure']:.2f} bits | {canaries['chance_exposure']:.2f} bits |", "",
             f"Loss-threshold attack on {scores['members']} members against {scores['nonmembers']} non-members "
             f"(an FPR below 1/{scores['nonmembers']} reads as 0); {canaries['inserted']} canaries x "
             f"{copies} ranked among {canaries['reference']} never inserted (exposure at most "
             f"{canaries['most_exposure']:.2f} bits). Test accuracy {report['accuracy']:.3f}, training "
             f"{report['training_seconds']:.0f} s."]
    if dp:
        group_epsilon, group_delta = report["canary_group_privacy"]
        verdict = "within it" if dp["holds"] else "VIOLATED beyond sampling error"
        lines.append(f"The run's (epsilon {report['epsilon']}, delta {report['delta']:g})-DP bound: the measured "
                     f"TPRs and AUC (at most {dp['auc']['bound']:.3f}) are {verdict} (95 % DKW band). An "
                     f"inserted canary ({copies}) is covered as a group: "
                     f"({group_epsilon:.3g}, {group_delta:.3g})-DP.")
    return "\n".join(lines) + "\n"


def run_audit(args) -> int:
    config = FinetuneConfig.from_args(args)
    check_audit_options(args, config)
    quiet_transformers()
    members, nonmembers, names = audit_rows(config)
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(config.model or default_model_path())
    inserted, reference = make_canaries(args.canaries, args.reference_canaries, len(names),
                                        canary_vocabulary(tokenizer), fresh_seed())
    out = pathlib.Path(config.out)
    with tempfile.TemporaryDirectory(prefix="mpcft-audit-") as folder:
        run = dataclasses.replace(config, train=str(pathlib.Path(folder, "train.csv")),
                                  test=str(pathlib.Path(folder, "test.csv")), out=str(out / "train"), max_train=0,
                                  text_column=TEXT, label_column=LABEL)
        write_rows(pathlib.Path(run.train), members + inserted * args.canary_repeats, names)
        write_rows(pathlib.Path(run.test), nonmembers, names)
        check_data(run, args.parties)
        local = ["--parties", str(args.parties), "--timeout", str(args.timeout)]
        local += ["--certs", args.certs] if args.certs else []
        started = time.perf_counter()
        status = subprocess.run([sys.executable, "-m", "mpcft.cli", "finetune", *local, *finetune_argv(run)]).returncode
        training_seconds = time.perf_counter() - started
    if status:
        print(f"mpcft audit: the training run failed (exit status {status})", file=sys.stderr)
        return status
    started = time.perf_counter()
    summary = json.loads((out / "train" / "summary.json").read_text())
    privacy = summary if config.dp else None
    report = {"epsilon": summary.get("epsilon"), "delta": summary.get("delta"), "accuracy": summary.get("accuracy"),
              **measure(out / "train" / "model", members, nonmembers, inserted, reference, names, config, privacy)}
    report["canaries"].update(inserted=args.canaries, repeats=args.canary_repeats, reference=args.reference_canaries)
    if privacy:
        k, eps = args.canary_repeats, privacy["epsilon"]
        report["canary_group_privacy"] = [k * eps, k * math.exp((k - 1) * eps) * privacy["delta"]]
    report.update(training_seconds=round(training_seconds, 1), audit_seconds=round(time.perf_counter() - started, 1))
    (out / "audit.json").write_text(json.dumps(report, indent=2))
    (out / "audit.md").write_text(markdown(report))
    print("\nmpcft privacy audit\n\n" + markdown(report) + f"\noutputs in {out}: audit.json, audit.md, train/")
    return 0
