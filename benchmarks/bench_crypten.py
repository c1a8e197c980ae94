"""CrypTen 0.4.1 measured in this run, on mpcft's benchmark workloads, when it is installed.

    python -m benchmarks.bench_crypten [--parties 2 3] [--repeat 3] [--only multiply ...]
        [--crypten-venv DIR] [--crypten-compat DIR]

CrypTen lives in its own virtual environment (--crypten-venv, else $MPCFT_CRYPTEN_VENV,
else /tmp/peers/crypten/venv; built by ../shared/peers/crypten/setup_venv.sh) beside the
directory holding crypten_compat.py (--crypten-compat, else ../shared/peers/crypten from the
repository root). Where either is missing, one line says that the CrypTen column is skipped
and why, and `crypten_figures` returns None.

Each measurement launches benchmarks/crypten_worker.py under CrypTen's python: one process
per party plus CrypTen's trusted third party (TTP provider; its default TFP generates every
triple in every party), gloo over tcp://127.0.0.1, one compute thread each. Figures: the
median of --repeat runs after a warm-up, timed at every party after a barrier (seconds: the
slowest party's median); bytes and rounds of one run as CrypTen's communicator counts them:
each communicator call is one round, and bytes are 8 per element logged per call -- a send
or a recv logs its tensor, an all_reduce twice its tensor (sent plus received), a broadcast
or reduce (P-1) times at the root -- so for 2 parties an opening counts what a party sends
plus what it receives. Party 0 also logs its requests to the TTP (3 rounds each) and the
triples the TTP sends it; the tables use the other parties' counts (party-to-party traffic, as
mpcft's counts leave out the dealer's). mpcft's `MB/party` counts only what a party sends.
"""
import argparse
import functools
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from benchmarks.timing import error_cell, markdown_table

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKER = pathlib.Path(__file__).resolve().with_name("crypten_worker.py")
DEFAULT_VENV = pathlib.Path("/tmp/peers/crypten/venv")
DEFAULT_COMPAT = REPO.parent / "shared" / "peers" / "crypten"
VENV_VARIABLE = "MPCFT_CRYPTEN_VENV"
WORKLOADS = {  # worker's name: what it computes (the shapes of mpcft's harnesses)
    "multiply": "multiply 10^6",
    "multiply-wide": "multiply 10^6, x and y in [-1024, 1024)",
    "matmul": "matmul 1024x1024 @ 1024x1024",
    "softmax": "softmax 8x12x128x128",
    "block": "BERT block fwd+bwd (256, 4 heads, 1024, seq 64, batch 4)",
}


class CryptenRunFailed(RuntimeError):
    """A CrypTen party or its TTP failed or ran past the time limit."""


@dataclass(frozen=True)
class CryptenInstall:
    python: pathlib.Path
    compat: pathlib.Path
    version: str


@functools.lru_cache(maxsize=None)
def locate_crypten(venv=None, compat=None) -> CryptenInstall | None:
    """CrypTen's interpreter and compat directory (crypten's installed version read there); None
    (after printing the one line saying why the CrypTen column is skipped) when absent."""
    venv = pathlib.Path(venv or os.environ.get(VENV_VARIABLE) or DEFAULT_VENV)
    compat = pathlib.Path(compat or DEFAULT_COMPAT)
    python = venv / "bin" / "python"
    reason = None
    if not python.exists():
        reason = (f"no CrypTen venv at {venv} (build it with bash {DEFAULT_COMPAT}/setup_venv.sh {venv}, "
                  f"or pass --crypten-venv DIR / set {VENV_VARIABLE})")
    elif not (compat / "crypten_compat.py").exists():
        reason = f"no crypten_compat.py in {compat} (pass --crypten-compat DIR)"
    else:
        try:
            probe = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('crypten'))"],
                                   env=_worker_env(compat), capture_output=True, text=True, timeout=60)
        except OSError as error:
            reason = f"{python} does not run: {error}"
        else:
            if probe.returncode != 0:
                reason = f"crypten is not installed in {venv}"
    if reason:
        print(f"CrypTen column skipped: {reason}", flush=True)
        return None
    return CryptenInstall(python, compat, probe.stdout.strip())


def _worker_env(compat, **variables):
    """The environment of a CrypTen process: only crypten_compat's directory on PYTHONPATH
    (nothing of this repository), one OpenMP thread, gloo on the loopback interface."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHONPATH=str(compat), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo",
               **{k: str(v) for k, v in variables.items()})
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path) -> str:
    lines = pathlib.Path(path).read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no output"


def run_crypten(install, workload, parties, repeat, timeout=1800) -> dict:
    """Launch `parties` CrypTen parties and the TTP on `workload`; their figures combined."""
    with tempfile.TemporaryDirectory(prefix="mpcft-crypten-") as tmp:
        common = dict(WORLD_SIZE=parties, RENDEZVOUS=f"tcp://127.0.0.1:{_free_port()}", DISTRIBUTED_BACKEND="gloo")
        commands = {rank: [str(install.python), str(WORKER), "--workload", workload, "--repeat", str(repeat),
                           "--out", f"{tmp}/rank{rank}.json"] for rank in range(parties)}
        commands["ttp"] = [str(install.python), str(WORKER), "--ttp"]
        procs = {}
        try:
            for role, command in commands.items():
                rank = parties if role == "ttp" else role
                with open(f"{tmp}/{role}.log", "w") as log:
                    procs[role] = subprocess.Popen(command, env=_worker_env(install.compat, RANK=rank, **common),
                                                   stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
            deadline = time.monotonic() + timeout
            for role, proc in procs.items():
                try:
                    code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise CryptenRunFailed(f"CrypTen {workload}, {parties} parties: {role} ran past {timeout} s")
                if code != 0:
                    raise CryptenRunFailed(f"CrypTen {workload}, {parties} parties: {role} exited {code}: "
                                           f"{_tail(f'{tmp}/{role}.log')}")
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        figures = [json.loads(pathlib.Path(f"{tmp}/rank{rank}.json").read_text()) for rank in range(parties)]
    medians = [statistics.median(f["seconds"]) for f in figures]
    return {"workload": workload, "parties": parties, "crypten_version": install.version,
            "seconds": max(medians), "seconds_by_rank": medians,
            "bytes_per_party": max(f["bytes"] for f in figures[1:]), "bytes_by_rank": [f["bytes"] for f in figures],
            "rounds": max(f["rounds"] for f in figures[1:]), "rounds_by_rank": [f["rounds"] for f in figures],
            "max_error": figures[0]["max_error"], "off_by_more_than_one": figures[0]["off_by_more_than_one"]}


def crypten_figures(workload, parties, repeat, venv=None, compat=None) -> dict | None:
    """CrypTen's figures for `workload` (a key of WORKLOADS) with `parties` parties, measured
    now: seconds (slowest party's median), bytes_per_party and rounds (CrypTen's counts at the
    parties other than 0, i.e. without TTP traffic; the largest), max_error (against float64
    torch) and off_by_more_than_one (how many results miss by more than 1), with per-rank lists
    (party 0's counts with its TTP traffic); None (and one printed line, once) when CrypTen is
    not installed. Raises CryptenRunFailed if a run fails."""
    install = locate_crypten(venv, compat)
    return None if install is None else run_crypten(install, workload, parties, repeat)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parties", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--crypten-venv", help=f"CrypTen's virtual environment (default ${VENV_VARIABLE} "
                                               f"or {DEFAULT_VENV})")
    parser.add_argument("--crypten-compat", help=f"directory of crypten_compat.py (default {DEFAULT_COMPAT})")
    args = parser.parse_args()
    if locate_crypten(args.crypten_venv, args.crypten_compat) is None:
        return
    rows = []
    for workload in args.only:
        for n in args.parties:
            try:
                f = crypten_figures(workload, n, args.repeat, args.crypten_venv, args.crypten_compat)
            except CryptenRunFailed as failure:
                sys.exit(str(failure))
            rows.append([WORKLOADS[workload], n, f"{f['seconds']:.3f}", f"{f['bytes_per_party'] / 1e6:.1f}",
                         f["rounds"], error_cell(f["max_error"], f["off_by_more_than_one"])])
            print(rows[-1], flush=True)
    print(f"\nCrypTen {f['crypten_version']}, TTP provider, gloo over loopback TCP (no TLS)\n")
    print(markdown_table(["workload", "parties", "CrypTen s", "CrypTen MB/party (its count)",
                          "CrypTen rounds (its count)", "max error"], rows))


if __name__ == "__main__":
    main()
