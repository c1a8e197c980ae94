"""Checkpoints of a fine-tuning run, and resuming from the latest step every party holds.

Every `checkpoint_every` steps each party writes RUN/checkpoints/party-R/step-K/: `state.pt`
(its shares of the trained parameters and of the optimizer's state, the step, the DP joint
seed and accountant steps, party 0's losses) and `manifest.json` (the configuration, the
model's fingerprint (mpcft.data.owners.model_fingerprint: its weights; computed at the first
checkpoint or resume), the party's certificate's, the SHA-256 of state.pt). A
checkpoint is written into a temporary folder, fsynced and renamed, so one that exists is
whole; the last KEEP of them are kept. The run then moves every stream to key epoch K
(MPCContext.new_epoch), so a run resumed at step K draws what the uninterrupted run draws:
given the same seeds (tests: insecure_fixed_seeds) it ends with the same parameters, bit for
bit; with fresh seeds (always in production) it is the same run in distribution, and the new
dealer never answers a correlation twice.

Resuming: each party lists the steps it holds whole, the parties take the latest one all of
them hold (an all-gather of those lists and of their fingerprints: public), and each refuses,
in one line, a checkpoint of another configuration, model or certificate. What a checkpoint
reveals: nothing beyond the party's own shares, which it stores as the run's outputs anyway.
"""
import dataclasses
import hashlib
import io
import json
import os
import pathlib
import shutil

import torch

from .config import ConfigError, FinetuneConfig

KEEP = 2                         # checkpoints kept per party
LISTED = 8                       # steps each party announces when the parties agree
# Options that change where or how fast a run goes, not what it computes (a resumed run may differ in
# them); --checkpoint-every is not one: the key epochs begin at its steps.
RUN_ONLY = frozenset({"out", "threads", "resume", "device", "plaintext_baseline",
                      "eval_mpc", "eval_batch_size"})


class CheckpointError(ConfigError):
    """A checkpoint that cannot be resumed from (reported in one line)."""


def computation(config: FinetuneConfig) -> dict:
    """The options that decide what the run computes (every field but RUN_ONLY)."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in RUN_ONLY}


def resumed_config(config: FinetuneConfig, run) -> FinetuneConfig:
    """The configuration of a resumed run: the checkpointed run's, with `config`'s run-only
    options; an option given (different from its default) that differs from the checkpoint's
    is refused, naming it."""
    saved = saved_configuration(run)
    defaults = computation(FinetuneConfig())
    for name, value in computation(config).items():
        if value != defaults[name] and value != saved.get(name):
            flag = "--" + name.replace("_", "-")
            raise CheckpointError(f"--resume {run}: the run was made with {flag} {saved.get(name)!r}, "
                                  f"not {value!r} (leave it out, or start a new run)")
    return dataclasses.replace(config, out=str(run), **{k: saved[k] for k in defaults if k in saved})


def saved_configuration(run) -> dict:
    """The computation options of the checkpointed run in folder `run` (its newest manifest)."""
    manifests = sorted(pathlib.Path(run).glob("checkpoints/party-*/step-*/manifest.json"),
                       key=lambda p: _step_of(p.parent))
    if not manifests:
        raise CheckpointError(f"--resume {run}: no checkpoint there (runs write them every "
                              f"--checkpoint-every steps into RUN/checkpoints/)")
    return json.loads(manifests[-1].read_text())["config"]


def _step_of(folder: pathlib.Path) -> int:
    name = folder.name
    return int(name[5:]) if name.startswith("step-") and name[5:].isdigit() else -1


def file_digest(paths) -> str:
    """SHA-256 over the files (names and contents), in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(pathlib.Path(p) for p in paths):
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def certificate_fingerprint(session) -> str | None:
    """SHA-256 of this party's TLS certificate; None without TLS."""
    cluster = session.config
    if cluster is None or not cluster.tls:
        return None
    return file_digest([cluster.party(session.rank).cert])


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: pathlib.Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class Checkpoints:
    """One party's checkpoints of the run in `out`, made under `identity` ({"config",
    "model", "certificate", "parties", "rank"}: what a resume must match). A value of
    `identity` may be a function of no arguments (the model's fingerprint, which costs a pass
    over its weights): it is called once, when a checkpoint is first written or checked."""

    def __init__(self, out, rank: int, identity: dict):
        self.folder = pathlib.Path(out) / "checkpoints" / f"party-{rank}"
        self._identity = dict(identity)

    @property
    def identity(self) -> dict:
        """The identity, its deferred values computed (once)."""
        for key, value in self._identity.items():
            if callable(value):
                self._identity[key] = value()
        return self._identity

    def save(self, step: int, state: dict) -> pathlib.Path:
        """Write checkpoint `step` atomically (temporary folder, fsync, rename); keep the last KEEP."""
        self.folder.mkdir(parents=True, exist_ok=True)
        final, temporary = self.folder / f"step-{step}", self.folder / f".step-{step}.partial"
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir()
        buffer = io.BytesIO()
        torch.save(state, buffer)
        payload = buffer.getvalue()
        _write_synced(temporary / "state.pt", payload)
        manifest = dict(self.identity, step=step, state_sha256=hashlib.sha256(payload).hexdigest())
        _write_synced(temporary / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode())
        _fsync_dir(temporary)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(temporary, final)
        _fsync_dir(self.folder)
        for old in self.steps()[:-KEEP]:
            shutil.rmtree(self.folder / f"step-{old}", ignore_errors=True)
        return final

    def steps(self) -> list[int]:
        """The steps of this party's whole checkpoints, ascending (partial ones are ignored)."""
        if not self.folder.is_dir():
            return []
        return sorted(step for p in self.folder.iterdir() if (step := _step_of(p)) >= 0
                      and (p / "manifest.json").is_file() and (p / "state.pt").is_file())

    def _read(self, step: int) -> tuple[dict, bytes]:
        """(manifest, state.pt's bytes) of stored step `step` (OSError, ValueError otherwise)."""
        where = self.folder / f"step-{step}"
        manifest = json.loads((where / "manifest.json").read_text())
        if not isinstance(manifest, dict):
            raise ValueError("its manifest is not a JSON object")
        return manifest, (where / "state.pt").read_bytes()

    def verify(self, step: int) -> bool:
        """Whether stored step `step` is whole: its manifest reads and state.pt matches the
        manifest's digest (whose run it is, load checks)."""
        try:
            manifest, payload = self._read(step)
        except (OSError, ValueError):
            return False
        return _state_matches(manifest, payload)

    def load(self, step: int) -> dict:
        """Checkpoint `step`'s state, after checking its manifest against this run's identity
        and its state against the manifest's digest (CheckpointError, one line, otherwise)."""
        where = self.folder / f"step-{step}"
        try:
            manifest, payload = self._read(step)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {where} cannot be read: {exc}") from None
        for key, what in (("parties", "number of parties"), ("rank", "rank"), ("config", "configuration"),
                          ("model", "model (its weights changed)"), ("certificate", "certificate")):
            if manifest.get(key) != self.identity[key]:
                detail = _difference(manifest.get(key), self.identity[key]) if key == "config" else ""
                raise CheckpointError(f"checkpoint {where} was made with another {what}{detail}: "
                                      f"refusing to resume from it")
        if not _state_matches(manifest, payload):
            raise CheckpointError(f"checkpoint {where}: state.pt does not match its manifest (damaged)")
        return torch.load(io.BytesIO(payload), weights_only=True)


def _state_matches(manifest: dict, payload: bytes) -> bool:
    return hashlib.sha256(payload).hexdigest() == manifest.get("state_sha256")


def _difference(saved, current) -> str:
    if not isinstance(saved, dict):
        return ""
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    return "".join(f" (--{k.replace('_', '-')} was {saved.get(k)!r}, now {current.get(k)!r})" for k in changed[:1])


def agree_on_step(session, checkpoints: Checkpoints) -> int:
    """The latest step whose checkpoint every party holds whole (0: none, start afresh). Every
    party announces its newest LISTED steps and a digest of its identity but the rank; parties
    of other configurations or models refuse together. Cost: one all-gather of LISTED + 4 words."""
    mine = checkpoints.steps()[-LISTED:]
    identity = {k: v for k, v in checkpoints.identity.items() if k not in ("rank", "certificate")}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).digest()
    words = torch.frombuffer(bytearray(digest), dtype=torch.int64)
    listed = torch.full((LISTED,), -1, dtype=torch.int64)
    listed[:len(mine)] = torch.tensor(mine, dtype=torch.int64)
    everyone = session.all_gather(torch.cat([words, listed]))
    for rank, theirs in enumerate(everyone):
        if not torch.equal(theirs[:4], words):
            raise CheckpointError(f"party {rank} resumes another run (its configuration or model differs "
                                  f"from party {session.rank}'s)")
    common = set(mine)
    for theirs in everyone:
        common &= {int(s) for s in theirs[4:] if s >= 0}
    return max(common, default=0)


def training_state(step: int, model, optimizer, losses: list, joint_seed: bytes | None) -> dict:
    """What one party's checkpoint holds: its shares of the trained parameters and of the
    optimizer's state, the step, the DP joint seed (the parties' own) and party 0's losses."""
    return {"step": step, "losses": list(losses), "optimizer": optimizer.state_dict(),
            "parameters": {name: p.data.cpu() for name, p in model.named_parameters() if p.requires_grad},
            "joint_seed": None if joint_seed is None else torch.frombuffer(bytearray(joint_seed), dtype=torch.uint8)}


def saved_joint_seed(state: dict | None) -> bytes | None:
    """The DP joint seed a training_state holds (None: none, or no state)."""
    seed = state and state["joint_seed"]
    return None if seed is None else seed.numpy().tobytes()


def restore_training(state: dict, model, optimizer) -> list:
    """Load a training_state into the model and optimizer; returns party 0's losses so far."""
    trained = {name: p for name, p in model.named_parameters() if p.requires_grad}
    saved = state["parameters"]
    if set(saved) != set(trained):
        raise CheckpointError(f"the checkpoint trains {sorted(set(saved) ^ set(trained))[:3]} differently")
    for name, p in trained.items():
        if saved[name].dtype != torch.int64 or tuple(saved[name].shape) != tuple(p.shape):
            raise CheckpointError(f"checkpoint parameter {name} is {saved[name].dtype} "
                                  f"{tuple(saved[name].shape)}, expected int64 {tuple(p.shape)}")
        p.data = saved[name].to(p.data.device)
    try:
        optimizer.load_state_dict(state["optimizer"])
    except ValueError as exc:
        raise CheckpointError(f"checkpoint optimizer state: {exc}") from None
    return list(state["losses"])
