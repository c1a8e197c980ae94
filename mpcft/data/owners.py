"""Sealed share files of data owners that are not compute parties: `mpcft share-data` writes
them, the parties open and check them (the batches they hold: mpcft.data.sources.OwnersData).

An owner (a hospital, a bank) tokenizes its labelled texts, runs the frozen bottom of the
public encoder on them locally and secret-shares the result among the n compute parties:
features, padding masks and one-hot labels, for a training part and an optional held-out
part. Parties 1..n-1 each get a 32-byte seed and expand their shares themselves; party 0
gets the data minus those (protocols.sharing.split_seeded). Each party's part is sealed to
it (mpcft.runtime.envelope): encrypted to its certificate, signed by the owner's, both
issued by the cluster CA (`mpcft certs --owner NAME`). The parties then train on the union
of the owners' shares and evaluate under MPC on the held-out parts.

What a party learns from a file: the public header (owner, example counts, shapes, label
names, model fingerprint, sealing id) and its own share, which is uniformly random.

Every run of `share-data` is one sealing with a fresh random id, written into the signed
header of each of its files (also the associated data of their encryption). Before training
the parties compare, per owner, which sealing they hold, so files of two sealings never mix;
`--owner-sealing NAME=ID` makes a party accept only that sealing of owner NAME (withdrawing
the others).
"""
import argparse
import dataclasses
import hashlib
import io
import json
import math
import os
import pathlib
import secrets

import torch

from mpcft.encoder import default_model_path, frozen_features, load_encoder
from mpcft.kernels import FixedPoint
from mpcft.kernels.prg import SEED_BYTES, fresh_seed
from mpcft.nn import MODES, mpc_layer_count
from mpcft.protocols.sharing import seeded_share, split_seeded
from mpcft.runtime.envelope import OWNER_PREFIX, SealedFileError, open_sealed, seal
from mpcft.runtime.errors import CertificateError, FrameError
from mpcft.runtime.frames import tensor_json
from mpcft.runtime.tls import verify_party_certificate

from .files import read_labelled, split

PARTS = ("train", "test")
SUFFIX = ".mpcft"


def model_fingerprint(encoder) -> str:
    """SHA-256 of the encoder's weights: owners and parties must run the same model."""
    digest = hashlib.sha256()
    for name, tensor in encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def file_name(owner: str, rank: int) -> str:
    return f"{owner}.party-{rank}{SUFFIX}"


def _tensors(header: dict, part: str) -> dict:
    """Names and shapes of a part's shared tensors."""
    count = header["counts"][part]
    shapes = {"features": [count] + header["feature_shape"],
              "labels": [count, len(header["labels"])]}
    if header["mpc_layers"]:
        shapes["masks"] = [count, header["seq_len"]]
    return shapes


# ----- the owner --------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", required=True, help="this owner's CSV/TSV of labelled texts")
    parser.add_argument("--text-column", default="sentence")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--labels", default=None,
                        help="comma-separated label names in id order, the same for every owner "
                             "(default: the file's labels, sorted)")
    parser.add_argument("--test-fraction", type=float, default=0.0,
                        help="keep this fraction as a held-out part, evaluated under MPC")
    parser.add_argument("--seed", type=int, default=0, help="public seed of the train/test split")
    parser.add_argument("--model", default=None, help="local model folder (default: all-MiniLM-L6-v2)")
    parser.add_argument("--mode", choices=MODES, default="lora")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--parties", type=int, default=2, help="number of compute parties")
    parser.add_argument("--certs", required=True,
                        help="certificate folder: ca.pem, party-R.pem, owner-NAME.pem and its key")
    parser.add_argument("--name", required=True, help="this owner's name (certificate owner-NAME)")
    parser.add_argument("--out", default="shares", help="folder for the sealed files")


def write_share_files(args) -> tuple[str, list[pathlib.Path]]:
    """Share this owner's data among args.parties parties: one sealed file per party, all of
    one new sealing. Returns (sealing id, file paths); the id is public."""
    certs = pathlib.Path(args.certs)
    owner_cert, owner_key = certs / f"{OWNER_PREFIX}{args.name}.pem", certs / f"{OWNER_PREFIX}{args.name}-key.pem"
    if not owner_cert.exists() or not owner_key.exists():
        raise CertificateError(f"no certificate for owner {args.name!r} in {certs} "
                               f"(make one with `mpcft certs --out {certs} --owner {args.name}`)")
    recipients = [verify_party_certificate(certs / f"party-{r}.pem", certs / "ca.pem", r)
                  for r in range(args.parties)]
    labels = args.labels.split(",") if args.labels else None
    texts, label_ids, names = read_labelled(args.train, args.text_column, args.label_column, labels)
    if args.test_fraction:
        train_idx, test_idx = split(len(texts), args.test_fraction, args.seed)
    else:
        train_idx, test_idx = list(range(len(texts))), []
    tokenizer, encoder = load_encoder(args.model or default_model_path())
    count = mpc_layer_count(args.mode, encoder.config.num_hidden_layers, args.layers)
    fp = FixedPoint()
    plain = {}
    for part, idx in zip(PARTS, (train_idx, test_idx)):
        features, masks = frozen_features(encoder, tokenizer, [texts[i] for i in idx], args.seq_len, count)
        onehot = torch.nn.functional.one_hot(torch.tensor([label_ids[i] for i in idx], dtype=torch.int64),
                                             len(names)).double()
        plain[f"{part}/features"] = fp.encode(features)
        plain[f"{part}/labels"] = fp.encode(onehot)
        if count:
            plain[f"{part}/masks"] = masks.to(torch.int64)
    sealing = secrets.token_hex(16)
    header = {"owner": args.name, "sealing": sealing, "parties": args.parties,
              "model": model_fingerprint(encoder), "mpc_layers": count, "seq_len": args.seq_len,
              "frac_bits": fp.frac_bits, "labels": names,
              "counts": {"train": len(train_idx), "test": len(test_idx)},
              "feature_shape": list(plain["train/features"].shape[1:])}
    seeds = [fresh_seed() for _ in range(args.parties - 1)]
    first = {name: split_seeded(value, seeds, name) for name, value in plain.items()}
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for rank, recipient in enumerate(recipients):
        if rank == 0:
            buffer = io.BytesIO()
            torch.save(first, buffer)
            payload = buffer.getvalue()
        else:
            payload = seeds[rank - 1]
        path = out / file_name(args.name, rank)
        path.write_bytes(seal(payload, dict(header, rank=rank), recipient, owner_cert, owner_key))
        paths.append(path)
    return sealing, paths


# ----- the compute parties ------------------------------------------------------------------------
@dataclasses.dataclass
class OwnerShares:
    """One owner's data as this party's shares: {part: {features, masks?, labels}}."""
    owner: str
    header: dict
    parts: dict

    def count(self, part: str) -> int:
        return self.header["counts"][part]


# header field -> its JSON type (bool is not an int here)
HEADER_TYPES = {"owner": str, "sealing": str, "parties": int, "rank": int, "model": str,
                "mpc_layers": int, "seq_len": int, "frac_bits": int, "labels": list,
                "counts": dict, "feature_shape": list}


def _header_problem(header: dict) -> str | None:
    """Why a (signed) header cannot be used, or None: every field is checked before use, since
    an owner's mistake or malice must end in a refusal, not in a crash."""
    if "sealing" not in header:
        return "made without a sealing id (by an older mpcft): ask the owner to seal again"
    for field, kind in HEADER_TYPES.items():
        value = header.get(field)
        if type(value) is not kind:
            return f"header field {field!r} is {repr(value)[:60]}, expected a JSON {kind.__name__}"
    counts, shape, labels = header["counts"], header["feature_shape"], header["labels"]
    if set(counts) != set(PARTS) or not all(type(n) is int and n >= 0 for n in counts.values()):
        return f"header counts {counts!r:.80} are not {{train, test}} example counts"
    if not 1 <= len(shape) <= 3 or not all(type(d) is int and d > 0 for d in shape):
        return f"header feature shape {shape!r:.80} is not 1 to 3 positive sizes"
    if not labels or not all(isinstance(label, str) for label in labels):
        return f"header labels {labels!r:.80} are not label names"
    if header["mpc_layers"] < 0 or header["seq_len"] <= 0:
        return f"header mpc_layers {header['mpc_layers']}, seq_len {header['seq_len']}"
    return None


def share_bytes(header: dict) -> int:
    """Bytes of the shares a (checked) header declares, what opening its file allocates; a part
    of no examples counts as one, since torch's strides of its empty tensors must fit all the same."""
    return sum(8 * math.prod(max(d, 1) for d in shape)
               for part in PARTS for shape in _tensors(header, part).values())


def default_max_share_bytes() -> int:
    """This machine's physical memory: share files declaring more can never be loaded."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 1 << 40


def share_files(paths, rank: int) -> list[pathlib.Path]:
    """The files for party `rank` among `paths` (files, or folders holding `*.party-R.mpcft`)."""
    found = []
    for path in map(pathlib.Path, paths):
        found += sorted(path.glob(f"*.party-{rank}{SUFFIX}")) if path.is_dir() else [path]
    if not found:
        raise SealedFileError(f"no share files for party {rank} in {[str(p) for p in paths]}")
    return found


def sealing_pin(text: str) -> str:
    """`text`, an `--owner-sealing NAME=ID` argument, after checking its form."""
    owner, _, sealing = text.partition("=")
    if not owner or len(sealing) != 32 or any(c not in "0123456789abcdef" for c in sealing):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=ID, ID the 32 hex digits "
                                         f"that `mpcft share-data` printed")
    return text


def sealing_pins(texts) -> dict:
    """{owner: sealing id} of `--owner-sealing` arguments (checked by sealing_pin)."""
    return dict(text.split("=", 1) for text in texts or ())


def load_owner_shares(paths, rank: int, world_size: int, key, ca, frac_bits: int,
                      fingerprint: str, pins: dict | None = None,
                      max_bytes: int | None = None) -> list[OwnerShares]:
    """Open, check and expand this party's share files, one per owner, sorted by owner name.
    `pins` {owner: sealing id}: accept only that sealing of those owners. A file whose header
    declares more than `max_bytes` of shares (default: this machine's memory) is refused
    before anything is allocated for them."""
    pins = pins or {}
    max_bytes = default_max_share_bytes() if max_bytes is None else max_bytes
    owners = {}
    for path in share_files(paths, rank):
        header, payload, identity = open_sealed(path.read_bytes(), key, ca, f"party-{rank}", str(path))
        problem = _header_problem(header)
        if problem:
            raise SealedFileError(f"{path}: {problem}")
        if share_bytes(header) > max_bytes:
            raise SealedFileError(f"{path}: the header declares {share_bytes(header)} bytes of shares, "
                                  f"more than the {max_bytes} this party can hold")
        problems = []
        if identity != OWNER_PREFIX + header["owner"]:
            problems.append(f"signed by {identity} but names owner {header['owner']!r}")
        if header["owner"] in pins and header["sealing"] != pins[header["owner"]]:
            problems.append(f"sealing {header['sealing']} is withdrawn: only sealing {pins[header['owner']]} "
                            f"of owner {header['owner']!r} is accepted (--owner-sealing)")
        if header["rank"] != rank or header["parties"] != world_size:
            problems.append(f"made for party {header['rank']} of {header['parties']}, "
                            f"this is party {rank} of {world_size}")
        if header["frac_bits"] != frac_bits:
            problems.append(f"fixed point f={header['frac_bits']}, the parties use f={frac_bits}")
        if header["model"] != fingerprint:
            problems.append("made with another model than the parties' (weights differ)")
        if header["owner"] in owners:
            problems.append(f"a second file from owner {header['owner']!r}")
        if problems:
            raise SealedFileError(f"{path}: " + "; ".join(problems))
        if rank == 0:
            try:
                stored = torch.load(io.BytesIO(payload), weights_only=True)
            except Exception as exc:  # noqa: BLE001 - whatever the unpickler raises: a refusal
                raise SealedFileError(f"{path}: unreadable shares ({type(exc).__name__})") from None
            if not isinstance(stored, dict):
                raise SealedFileError(f"{path}: the shares are not a dict of tensors")
            get = lambda part, name, shape: stored.get(f"{part}/{name}")
        elif len(payload) != SEED_BYTES:
            raise SealedFileError(f"{path}: holds {len(payload)} bytes, not a {SEED_BYTES}-byte seed")
        else:
            get = lambda part, name, shape: seeded_share(payload, f"{part}/{name}", shape)
        parts = {part: {name: get(part, name, shape) for name, shape in _tensors(header, part).items()}
                 for part in PARTS}
        for part in PARTS:
            for name, shape in _tensors(header, part).items():
                share = parts[part][name]
                if not isinstance(share, torch.Tensor) or share.dtype != torch.int64:
                    raise SealedFileError(f"{path}: {part}/{name} is missing or not an int64 tensor")
                if list(share.shape) != shape:
                    raise SealedFileError(f"{path}: {part}/{name} has shape {list(share.shape)}, "
                                          f"the header says {shape}")
        owners[header["owner"]] = OwnerShares(header["owner"], header, parts)
    unused = sorted(set(pins) - set(owners))
    if unused:
        raise SealedFileError(f"--owner-sealing names owner(s) {unused}, but party {rank} holds no file "
                              f"of theirs")
    result = [owners[name] for name in sorted(owners)]
    first = result[0].header
    for other in result[1:]:
        for field in ("labels", "mpc_layers", "seq_len", "feature_shape"):
            if other.header[field] != first[field]:
                raise SealedFileError(f"owners {result[0].owner!r} and {other.owner!r} disagree on "
                                      f"{field}: {first[field]} vs {other.header[field]}")
    return result


def check_same_files(session, owners: list[OwnerShares]) -> None:
    """Compare with every other party (two rounds) which owners' files each holds, of which
    sealing and with which public header; reveals only those. SealedFileError naming the first
    owner on which two parties differ."""
    listings = _all_gather_json(session, {o.owner: {"sealing": o.header["sealing"],
                                                    "public": _public_digest(o.header)} for o in owners})
    for rank, listing in enumerate(listings):
        if not isinstance(listing, dict) or not all(
                isinstance(entry, dict) and set(entry) == {"sealing", "public"}
                and all(isinstance(v, str) for v in entry.values()) for entry in listing.values()):
            raise FrameError(f"comparing share files: party {rank} sent a malformed listing")
    for owner in sorted(set().union(*listings)):
        problem = _disagreement(owner, listings)
        if problem:
            raise SealedFileError(f"owner {owner!r}: {problem}")


MAX_LISTING_BYTES = 1 << 20


def _all_gather_json(session, value) -> list:
    """Every party's JSON-encodable `value`, by rank: their lengths, then the padded encodings.
    FrameError if a party announces more than MAX_LISTING_BYTES or sends something but JSON."""
    blob = json.dumps(value, sort_keys=True).encode()
    lengths = [int(n) for n in session.all_gather(torch.tensor([len(blob)]))]
    if not all(0 < n <= MAX_LISTING_BYTES for n in lengths):
        raise FrameError(f"comparing share files: the parties announced listings of {lengths} bytes "
                         f"(at most {MAX_LISTING_BYTES})")
    padded = torch.zeros(max(lengths), dtype=torch.uint8)
    padded[:len(blob)] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    return [tensor_json(t[:n], f"party {rank}")
            for rank, (t, n) in enumerate(zip(session.all_gather(padded), lengths))]


def _public_digest(header: dict) -> str:
    """SHA-256 of what all parties' files of one sealing share: the header minus rank and recipient."""
    public = {k: v for k, v in header.items() if k not in ("rank", "recipient")}
    return hashlib.sha256(json.dumps(public, sort_keys=True).encode()).hexdigest()


def _disagreement(owner: str, listings: list[dict]) -> str | None:
    """How the parties' `listings` (by rank) differ on `owner`'s files, or None."""
    holders = [rank for rank, listing in enumerate(listings) if owner in listing]
    if len(holders) < len(listings):
        lacking = min(set(range(len(listings))) - set(holders))
        return (f"party {holders[0]} holds its files but party {lacking} holds none; "
                f"give every party its file of one sealing")
    first = listings[0][owner]
    for rank, listing in enumerate(listings[1:], 1):
        if listing[owner]["sealing"] != first["sealing"]:
            return (f"the parties hold files of different sealings: party 0 holds sealing {first['sealing']} "
                    f"but party {rank} holds {listing[owner]['sealing']}; ask the owner for one set of files")
        if listing[owner]["public"] != first["public"]:
            return (f"parties 0 and {rank} hold files of sealing {first['sealing']} whose public headers "
                    f"differ; ask the owner for one set of files")
    return None

