"""Sealings of owners' share files: a fresh id per `share-data` run, bound under the owner's
signature and the encryption; parties holding files of two sealings refuse to train."""
import argparse
import csv
import shutil
import struct
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mpcft import data as datasets
from mpcft.data import owners
from mpcft.runtime import run_threads, tls
from mpcft.runtime.envelope import SealedFileError, open_sealed, seal


@pytest.fixture(scope="module")
def sealings(tmp_path_factory):
    """The same data of owner clinic sealed twice to 2 parties: (certs, [(id, folder)] old, new)."""
    root = tmp_path_factory.mktemp("sealings")
    certs = tls.make_certs(root / "certs", 2, dealer=True, owners=["clinic", "bank"])
    texts, labels, names = datasets.builtin_dataset(size=8)
    with open(root / "clinic.csv", "w", newline="") as f:
        csv.writer(f).writerows([["sentence", "label"]] + [[t, names[l]] for t, l in zip(texts, labels)])
    parser = argparse.ArgumentParser()
    owners.add_arguments(parser)
    made = []
    for run in ("old", "new"):
        args = parser.parse_args(["--train", str(root / "clinic.csv"), "--certs", str(certs), "--name", "clinic",
                                  "--mode", "head", "--seq-len", "16", "--labels", ",".join(names),
                                  "--out", str(root / run)])
        sealing, paths = owners.write_share_files(args)
        made.append((sealing, paths[0].parent))
    return certs, made


def open_file(certs, folder, rank):
    return open_sealed((folder / f"clinic.party-{rank}.mpcft").read_bytes(), certs / f"party-{rank}-key.pem",
                       certs / "ca.pem", f"party-{rank}")


def load(certs, folder, rank, pins=None):
    header = open_file(certs, folder, rank)[0]
    return owners.load_owner_shares([folder / f"clinic.party-{rank}.mpcft"], rank, 2, certs / f"party-{rank}-key.pem",
                                    certs / "ca.pem", header["frac_bits"], header["model"], pins)


def test_every_sealing_has_a_fresh_id_in_all_its_files(sealings):
    certs, [(old, old_dir), (new, new_dir)] = sealings
    assert old != new and len(old) == len(new) == 32
    for sealing, folder in sealings[1]:
        assert [open_file(certs, folder, r)[0]["sealing"] for r in (0, 1)] == [sealing, sealing]


def signed_part(blob):
    """The bytes of a sealed file that its signature covers (see mpcft.runtime.envelope)."""
    pos = 8
    for length_format, fixed in (("<I", 0), ("<I", 65 + 12), ("<Q", 0)):
        size = struct.calcsize(length_format)
        pos += size + struct.unpack(length_format, blob[pos:pos + size])[0] + fixed
    return blob[:pos]


def test_a_sealing_id_cannot_be_swapped_even_by_re_signing(sealings):
    """An old file relabelled with the new id: the signature breaks; re-signed with the owner's
    key the encryption still refuses it (the header is its associated data)."""
    certs, [(old, old_dir), (new, _)] = sealings
    blob = (old_dir / "clinic.party-1.mpcft").read_bytes()
    assert blob.count(old.encode()) == 1
    relabelled = blob.replace(old.encode(), new.encode())
    with pytest.raises(SealedFileError, match="bad signature"):
        open_sealed(relabelled, certs / "party-1-key.pem", certs / "ca.pem", "party-1")
    body = signed_part(relabelled)
    owner_key = serialization.load_pem_private_key((certs / "owner-clinic-key.pem").read_bytes(), None)
    signature = owner_key.sign(body, ec.ECDSA(hashes.SHA256()))
    resigned = body + struct.pack("<H", len(signature)) + signature
    with pytest.raises(SealedFileError, match="cannot decrypt"):
        open_sealed(resigned, certs / "party-1-key.pem", certs / "ca.pem", "party-1")


def gathered_problem(session, listings):
    try:
        owners.check_same_files(session, listings[session.rank])
    except SealedFileError as exc:
        return str(exc)
    return None


def test_parties_holding_two_sealings_refuse_with_one_line(sealings):
    certs, [(old, old_dir), (new, new_dir)] = sealings
    mixed = [load(certs, new_dir, 0), load(certs, old_dir, 1)]
    problems = run_threads(gathered_problem, 2, mixed)
    want = (f"owner 'clinic': the parties hold files of different sealings: party 0 holds sealing {new} "
            f"but party 1 holds {old}; ask the owner for one set of files")
    assert problems == [want, want]
    assert run_threads(gathered_problem, 2, [load(certs, new_dir, 0), load(certs, new_dir, 1)]) == [None, None]
    assert run_threads(gathered_problem, 2, [load(certs, new_dir, 0), []]) == [
        "owner 'clinic': party 0 holds its files but party 1 holds none; give every party its file of one sealing"] * 2


def test_owner_sealing_pins_refuse_withdrawn_sealings(sealings):
    certs, [(old, old_dir), (new, new_dir)] = sealings
    assert load(certs, new_dir, 1, {"clinic": new})[0].header["sealing"] == new
    with pytest.raises(SealedFileError, match=f"sealing {old} is withdrawn: only sealing {new}"):
        load(certs, old_dir, 1, {"clinic": new})
    with pytest.raises(SealedFileError, match=r"names owner\(s\) \['bank'\]"):
        load(certs, new_dir, 0, {"bank": new})
    assert owners.sealing_pins([owners.sealing_pin(f"clinic={new}")]) == {"clinic": new}
    for bad in ("clinic", f"={new}", "clinic=3f2a", f"clinic={new.upper()}"):
        with pytest.raises(argparse.ArgumentTypeError):
            owners.sealing_pin(bad)


def test_files_without_the_owner_usage_or_a_sealing_id_are_refused(sealings, tmp_path):
    certs, _ = sealings
    tls.make_cert(tls.load_ca(tls.default_ca_dir(certs)), "owner-clinic", tmp_path)     # TLS usages only
    blob = seal(b"x", {"owner": "clinic", "rank": 0}, certs / "party-0.pem", tmp_path / "owner-clinic.pem",
                tmp_path / "owner-clinic-key.pem")
    with pytest.raises(SealedFileError, match="lacks the data-owner usage"):
        open_sealed(blob, certs / "party-0-key.pem", certs / "ca.pem", "party-0")
    header = {"owner": "clinic", "rank": 0, "parties": 2, "frac_bits": 20, "model": "m"}
    (tmp_path / "clinic.party-0.mpcft").write_bytes(seal(b"x", header, certs / "party-0.pem",
                                                         certs / "owner-clinic.pem", certs / "owner-clinic-key.pem"))
    with pytest.raises(SealedFileError, match="made without a sealing id"):
        owners.load_owner_shares([tmp_path], 0, 2, certs / "party-0-key.pem", certs / "ca.pem", 20, "m")


@pytest.mark.timeout(300)
def test_real_parties_given_files_of_two_sealings_stop_before_training(sealings, tmp_path):
    """Party 0 gets the new sealing's file, party 1 the old one's: `mpcft finetune` stops
    every party with one line naming the owner and both sealings, no traceback, no outputs."""
    certs, [(old, old_dir), (new, new_dir)] = sealings
    mixed = tmp_path / "shares"
    mixed.mkdir()
    shutil.copy(new_dir / "clinic.party-0.mpcft", mixed)
    shutil.copy(old_dir / "clinic.party-1.mpcft", mixed)
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "mpcft.cli", "finetune", "--certs", str(certs), "--owner-shares",
                           str(mixed), "--mode", "head", "--seq-len", "16", "--timeout", "60", "--out", str(out)],
                          capture_output=True, text=True, timeout=280)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    refusals = [line for line in output.splitlines() if "different sealings" in line]
    assert refusals, output
    for line in refusals:
        assert line.endswith(f"owner 'clinic': the parties hold files of different sealings: party 0 holds "
                             f"sealing {new} but party 1 holds {old}; ask the owner for one set of files")
    assert "Traceback" not in output and not out.exists()
