"""A run's trained shares on disk: RUN/shares/party-R.pt and its manifest party-R.json.

At the end of `mpcft finetune` every party saves its shares of the classifier's parameters
(Module.state_dict: shares of the trained ones, encodings of the public ones) in party-R.pt,
and beside it party-R.json: the run's id (32 random bytes the parties open together at the
end, the same at every party), the party's rank, the number of parties, whether the trained
parameters were revealed, the run's options, the label names, the base model's fingerprint
and the SHA-256 of party-R.pt. `mpcft predict --shares RUN` checks these before any party
starts, and every party checks its own again before using it (mpcft.finetune.predict_shared).
A manifest holds nothing its party did not already know.
"""
import dataclasses
import hashlib
import io
import json
import pathlib

import torch

from mpcft.data.owners import model_fingerprint
from mpcft.privacy.sampling import joint_seed

from .config import ConfigError, FinetuneConfig

FORMAT = "mpcft trained shares"


class SharesError(ConfigError):
    """A shares folder that cannot be predicted from (reported in one line)."""


def share_files(run, rank: int) -> tuple[pathlib.Path, pathlib.Path]:
    """(party-R.pt, party-R.json) of party `rank` in run folder `run`."""
    folder = pathlib.Path(run) / "shares"
    return folder / f"party-{rank}.pt", folder / f"party-{rank}.json"


def save_trained_shares(ctx, out, model, config: FinetuneConfig, names, encoder, mpc_layers: int) -> None:
    """This party's shares of `model` and their manifest in OUT/shares/. Cost: one open of
    4 words (the run's id, from every party's randomness: mpcft.privacy.sampling.joint_seed)."""
    run_id = joint_seed(ctx)[:16].hex()
    buffer = io.BytesIO()
    torch.save({name: tensor.cpu() for name, tensor in model.state_dict().items()}, buffer)
    payload = buffer.getvalue()
    shares, manifest = share_files(out, ctx.rank)
    shares.parent.mkdir(parents=True, exist_ok=True)
    shares.write_bytes(payload)
    manifest.write_text(json.dumps({
        "format": FORMAT, "run": run_id, "rank": ctx.rank, "parties": ctx.world_size,
        "revealed": config.reveal, "labels": list(names), "mpc_layers": mpc_layers,
        "model_fingerprint": model_fingerprint(encoder), "shares_sha256": hashlib.sha256(payload).hexdigest(),
        "config": dataclasses.asdict(config)}, indent=2, sort_keys=True))


def read_manifest(run, rank: int) -> dict:
    """Party `rank`'s manifest in run folder `run`; SharesError (one line) when the folder is
    not a run's, the manifest is missing, unreadable, of another party or of a revealed run."""
    run = pathlib.Path(run)
    shares, path = share_files(run, rank)
    if not run.is_dir():
        raise SharesError(f"--shares {run}: no such run folder")
    if not shares.parent.is_dir():
        raise SharesError(f"--shares {run}: no shares/ folder there (mpcft finetune --no-reveal writes "
                          f"RUN/shares/party-R.pt)")
    if not path.is_file():
        older = " (written by an older mpcft: fine-tune again)" if shares.is_file() else ""
        raise SharesError(f"--shares {run}: no manifest shares/{path.name} for party {rank}{older}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        fields = (manifest["format"], manifest["run"], manifest["rank"], manifest["parties"], manifest["revealed"],
                  manifest["labels"], manifest["mpc_layers"], manifest["model_fingerprint"],
                  manifest["shares_sha256"], FinetuneConfig.from_json(json.dumps(manifest["config"])))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        fields = None
    if fields is None or fields[0] != FORMAT:
        raise SharesError(f"{path}: not a manifest of mpcft's trained shares")
    if manifest["rank"] != rank:
        raise SharesError(f"{path}: the manifest of party {manifest['rank']}, not of party {rank}")
    if manifest["revealed"]:
        raise SharesError(f"--shares {run}: this run revealed its trained parameters to party 0; "
                          f"predict in plaintext with --model {run / 'model'}")
    return manifest


def run_config(manifest: dict) -> FinetuneConfig:
    return FinetuneConfig.from_json(json.dumps(manifest["config"]))


def load_shares(run, manifest: dict) -> dict:
    """The shares file of the manifest's party, after checking it against the manifest's digest."""
    path, _ = share_files(run, manifest["rank"])
    try:
        payload = path.read_bytes()
    except OSError as exc:
        raise SharesError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    if hashlib.sha256(payload).hexdigest() != manifest["shares_sha256"]:
        raise SharesError(f"{path}: does not match its manifest (damaged or replaced)")
    return torch.load(io.BytesIO(payload), weights_only=True)


def load_run_encoder(manifest: dict):
    """(tokenizer, encoder) of the base model the run was trained on (its --model folder);
    SharesError when the folder is missing or its weights are not the run's."""
    from mpcft.encoder import default_model_path, load_encoder
    folder = pathlib.Path(run_config(manifest).model or default_model_path())
    if not (folder / "config.json").is_file():
        raise SharesError(f"--model {folder}: the run's base model folder is missing")
    tokenizer, encoder = load_encoder(str(folder))
    if model_fingerprint(encoder) != manifest["model_fingerprint"]:
        raise SharesError(f"--model {folder}: not the model this run was trained on (its weights differ)")
    return tokenizer, encoder


def check_run(run, parties: int | None = None) -> dict:
    """Every party's manifest and shares file in `run` (one host: `mpcft predict --shares`):
    party 0's manifest, after checking that parties 0..n-1 are all there, of the same run,
    whole, trained on the model found at its --model, and that `parties` (when given) is the run's n. SharesError otherwise."""
    first = read_manifest(run, 0)
    count = first["parties"]
    if parties is not None and parties != count:
        raise SharesError(f"--parties {parties}: the run at {run} has {count} parties' shares (leave "
                          f"--parties out)")
    for rank in range(count):
        manifest = first if rank == 0 else read_manifest(run, rank)
        if manifest["run"] != first["run"] or manifest["parties"] != count:
            raise SharesError(f"{share_files(run, rank)[1]}: of another run than party 0's shares")
        if not share_files(run, rank)[0].is_file():
            raise SharesError(f"--shares {run}: party {rank}'s shares file shares/party-{rank}.pt is missing")
        load_shares(run, manifest)
    load_run_encoder(first)
    return first
