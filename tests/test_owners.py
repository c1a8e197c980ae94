"""Data owners outside the compute parties: sealed share files, and fine-tuning on them."""
import csv
import json
import subprocess
import sys

import pytest
import torch

from mpcft import data as datasets
from mpcft.kernels.prg import fresh_seed
from mpcft.protocols.sharing import seeded_share, split_seeded
from mpcft.runtime import tls
from mpcft.runtime.envelope import SealedFileError, open_sealed, seal


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    out = tmp_path_factory.mktemp("certs")
    tls.make_certs(out, 3, dealer=True, owners=["clinic"])
    tls.make_certs(out, 0, dealer=False, owners=["bank"])          # added later, same CA
    return out


def sealed(certs, rank=1, payload=b"secret payload", owner="clinic"):
    return seal(payload, {"owner": owner, "rank": rank}, certs / f"party-{rank}.pem",
                certs / f"owner-{owner}.pem", certs / f"owner-{owner}-key.pem")


def test_sealed_file_round_trip_reveals_payload_to_its_recipient_only(certs):
    blob = sealed(certs)
    assert b"secret payload" not in blob
    header, payload, owner = open_sealed(blob, certs / "party-1-key.pem", certs / "ca.pem", "party-1")
    assert payload == b"secret payload" and owner == "owner-clinic" and header["recipient"] == "party-1"
    with pytest.raises(SealedFileError, match="sealed for 'party-1', not 'party-2'"):
        open_sealed(blob, certs / "party-2-key.pem", certs / "ca.pem", "party-2")
    header, payload, owner = open_sealed(sealed(certs, owner="bank"), certs / "party-1-key.pem",
                                         certs / "ca.pem", "party-1")
    assert owner == "owner-bank"


@pytest.mark.parametrize("where", [20, 200, -200, -5])
def test_sealed_file_altered_anywhere_is_refused(certs, where):
    blob = bytearray(sealed(certs))
    blob[where] ^= 1
    with pytest.raises(SealedFileError):
        open_sealed(bytes(blob), certs / "party-1-key.pem", certs / "ca.pem", "party-1")


def test_sealed_file_refused_when_truncated_or_not_from_a_certified_owner(certs, tmp_path):
    blob = sealed(certs)
    with pytest.raises(SealedFileError, match="truncated"):
        open_sealed(blob[:-90], certs / "party-1-key.pem", certs / "ca.pem", "party-1")
    with pytest.raises(SealedFileError, match="not an mpcft sealed file"):
        open_sealed(b"garbage" * 10, certs / "party-1-key.pem", certs / "ca.pem", "party-1")
    # signed by a compute party, not an owner
    party_signed = seal(b"x", {"owner": "party-0"}, certs / "party-1.pem", certs / "party-0.pem",
                        certs / "party-0-key.pem")
    with pytest.raises(SealedFileError, match="not a data owner"):
        open_sealed(party_signed, certs / "party-1-key.pem", certs / "ca.pem", "party-1")
    # an owner certified by another CA
    tls.make_certs(tmp_path, 0, dealer=False, owners=["mallory"])
    foreign = seal(b"x", {"owner": "mallory"}, certs / "party-1.pem", tmp_path / "owner-mallory.pem",
                   tmp_path / "owner-mallory-key.pem")
    with pytest.raises(SealedFileError, match="not from the cluster CA"):
        open_sealed(foreign, certs / "party-1-key.pem", certs / "ca.pem", "party-1")


def test_owner_refuses_a_party_certificate_from_another_ca(certs, tmp_path):
    tls.make_certs(tmp_path, 2, dealer=False)
    with pytest.raises(tls.CertificateError, match="not issued by the CA"):
        tls.verify_party_certificate(tmp_path / "party-1.pem", certs / "ca.pem", 1)
    with pytest.raises(tls.CertificateError, match="not party-0"):
        tls.verify_party_certificate(certs / "party-1.pem", certs / "ca.pem", 0)


@pytest.mark.parametrize("parties", [2, 3, 5])
def test_seeded_split_adds_up_and_other_shares_come_from_seeds(parties):
    value = torch.randint(-2**62, 2**62, (4, 9), dtype=torch.int64)
    seeds = [fresh_seed() for _ in range(parties - 1)]
    first = split_seeded(value, seeds, "train/features")
    others = [seeded_share(s, "train/features", value.shape) for s in seeds]
    assert torch.equal(first + sum(others), value)
    assert not torch.equal(seeded_share(seeds[0], "test/features", value.shape), others[0])


def write_csv(path, texts, labels, names):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence", "label"])
        writer.writerows((t, names[l]) for t, l in zip(texts, labels))


@pytest.mark.timeout(900)
def test_finetune_on_share_files_from_two_owners(tmp_path):
    """Two owners seal shares of their data (one with a held-out part) to 2 parties, which
    train LoRA on them over TLS and evaluate the held-out part under MPC."""
    certs = tmp_path / "certs"
    subprocess.run([sys.executable, "-m", "mpcft.cli", "certs", "--out", str(certs), "-n", "2", "--dealer",
                    "--owner", "clinic", "--owner", "bank"], check=True, capture_output=True)
    texts, labels, names = datasets.builtin_dataset(size=60)
    write_csv(tmp_path / "clinic.csv", texts[:20], labels[:20], names)
    write_csv(tmp_path / "bank.csv", texts[20:60], labels[20:60], names)
    common = ["--mode", "lora", "--layers", "1", "--seq-len", "16", "--parties", "2", "--certs", str(certs),
              "--out", str(tmp_path / "shares"), "--labels", ",".join(names)]
    for name, extra in (("clinic", []), ("bank", ["--test-fraction", "0.4"])):
        done = subprocess.run([sys.executable, "-m", "mpcft.cli", "share-data", "--name", name,
                               "--train", str(tmp_path / f"{name}.csv")] + common + extra,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "mpcft share-data: sealing " in done.stdout
    files = sorted(p.name for p in (tmp_path / "shares").iterdir())
    assert files == ["bank.party-0.mpcft", "bank.party-1.mpcft", "clinic.party-0.mpcft", "clinic.party-1.mpcft"]
    assert (tmp_path / "shares" / "bank.party-1.mpcft").stat().st_size < 4000    # a seed, not data
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "mpcft.cli", "finetune", "--certs", str(certs), "--owner-shares",
         str(tmp_path / "shares"), "--mode", "lora", "--layers", "1", "--seq-len", "16", "--out", str(out)],
        capture_output=True, text=True, timeout=850)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data_owners"] == 2 and summary["train_examples"] == 20 + 24
    assert 0.0 <= summary["mpc_accuracy"] <= 1.0 and (out / "model").exists()
    # the same files with the wrong mode are refused with a clear error
    done = subprocess.run(
        [sys.executable, "-m", "mpcft.cli", "finetune", "--certs", str(certs), "--owner-shares",
         str(tmp_path / "shares"), "--mode", "top", "--layers", "2", "--out", str(tmp_path / "bad")],
        capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "made for 1 MPC layers" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
