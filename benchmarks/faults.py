"""Fault injection: kill (SIGKILL) or freeze (SIGSTOP) a random party or the dealer of a small
`mpcft finetune` run at a random point after a random checkpoint, then check what users are
promised: every survivor exits non-zero within the step timeout, the launcher names the
process that failed, no process is left behind, every checkpoint on disk is whole, and
`mpcft finetune --resume` ends with the same shares, bit for bit, as an uninterrupted run with
the same (test-only, insecure_fixed_seeds) seeds.

    python -m benchmarks.faults --trials 50          # the table in RESULTS.md
"""
import argparse
import os
import pathlib
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import torch

SEEDS = "5e" * 32
TIMEOUT = 20                                           # seconds per protocol step in these runs
RUN = ["--mode", "head", "--max-train", "48", "--epochs", "2", "--checkpoint-every", "2",
       "--timeout", str(TIMEOUT)]                      # 12 steps, checkpoints at 2, 4, ..., 10


def mpcft(*args):
    env = dict(os.environ, MPCFT_INSECURE_FIXED_SEEDS=SEEDS)
    return subprocess.Popen([sys.executable, "-m", "mpcft.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc, limit=900):
    out, _ = proc.communicate(timeout=limit)
    return proc.returncode, out


def children(pid):
    """{pid: command line} of the processes whose parent is `pid`."""
    found = {}
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found[int(entry.name)] = cmdline
    return found


def running(pid) -> bool:
    """Whether process `pid` still runs (not gone, not a zombie waiting for its parent)."""
    try:
        return (pathlib.Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def shares(out, parties):
    return [torch.load(pathlib.Path(out) / "shares" / f"party-{r}.pt") for r in range(parties)]


def same_shares(a, b) -> bool:
    return all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def reference(folder: pathlib.Path, parties: int):
    """An uninterrupted run's shares."""
    status, out = finish(mpcft("finetune", "--parties", str(parties), "--out", str(folder), *RUN))
    if status != 0:
        raise RuntimeError(f"the uninterrupted run failed:\n{out}")
    return shares(folder, parties)


def whole_checkpoints(run: pathlib.Path, parties: int) -> bool:
    """Every checkpoint folder on disk is whole (Checkpoints.verify: manifest and digest agree);
    partial ones are hidden."""
    from mpcft.finetune.checkpoint import Checkpoints
    stores = [Checkpoints(run, rank, {}) for rank in range(parties)]
    return all(store.verify(step) for store in stores for step in store.steps())


def names_the_failure(output: str, victim: str) -> bool:
    """Whether a launcher or survivor line (not a warning) reports `victim` as failed or silent:
    "rank 1 exited with status -9", "... from party 1 ... timed out", "lost party 1", "dealer ..."."""
    aliases = ["dealer"] if victim == "dealer" else [victim, victim.replace("rank", "party")]
    events = ("exited with status", "timeout", "nothing received", "lost", "failed", "closed", "error")
    return any(any(a in line for a in aliases) and any(e in line.lower() for e in events)
               for line in output.splitlines() if "WARNING" not in line)


def trial(folder: pathlib.Path, parties: int, victim: str, how: int, expected, rng: random.Random) -> dict:
    """One fault: `victim` ("rank R" or "dealer") gets signal `how` after a random checkpoint
    and a random delay; then the run is resumed. Returns the trial's measurements."""
    proc = mpcft("finetune", "--parties", str(parties), "--out", str(folder), *RUN)
    after = rng.choice([2, 4, 6, 8])
    markers = [folder / "checkpoints" / f"party-{r}" / f"step-{after}" for r in range(parties)]
    deadline = time.monotonic() + 600
    while not all(m.is_dir() for m in markers):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the run ended before the fault:\n{proc.communicate()[0]}")
        time.sleep(0.01)
    time.sleep(rng.uniform(0, 0.5))
    targets = [pid for pid, cmd in children(proc.pid).items()
               if (" dealer " in cmd if victim == "dealer" else f"--rank {victim.split()[1]} " in cmd)]
    if len(targets) != 1:
        raise RuntimeError(f"cannot find {victim} among {children(proc.pid)}")
    survivors = [pid for pid in children(proc.pid) if pid != targets[0]]
    os.kill(targets[0], how)
    struck = time.monotonic()
    while any(running(pid) for pid in survivors) and time.monotonic() - struck < TIMEOUT * 10:
        time.sleep(0.05)
    survived = time.monotonic() - struck              # the last survivor's exit
    status, out = finish(proc, TIMEOUT * 10)
    detected = time.monotonic() - struck             # the launcher's exit (it also kills a frozen victim)
    orphans = children(proc.pid)
    for pid in orphans:                                 # never leave one behind, even on failure
        os.kill(pid, signal.SIGKILL)
    whole = whole_checkpoints(folder, parties)
    resumed_status, resumed_out = finish(mpcft("finetune", "--resume", str(folder), "--parties", str(parties)))
    return {"parties": parties, "victim": victim, "signal": signal.Signals(how).name, "after_step": after,
            "status": status, "named": names_the_failure(out, victim), "survivors_s": survived, "detected_s": detected,
            "within_timeout": status != 0 and survived <= TIMEOUT + 10, "orphans": len(orphans),
            "whole_checkpoints": whole, "resumed": resumed_status == 0 and "resuming" in resumed_out,
            "matched": resumed_status == 0 and same_shares(expected, shares(folder, parties)),
            "output": out if status == 0 or not names_the_failure(out, victim) else ""}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10, help="faults to inject (default 10)")
    parser.add_argument("--seed", type=int, default=None, help="choice of victims and moments (default: fresh)")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    results = []
    with tempfile.TemporaryDirectory(prefix="mpcft-faults-") as tmp:
        tmp = pathlib.Path(tmp)
        expected = {n: reference(tmp / f"reference-{n}", n) for n in (2, 3)}
        for number in range(args.trials):
            parties = rng.choice([2, 3])
            victim = rng.choice([f"rank {r}" for r in range(parties)] + ["dealer"])
            how = rng.choice([signal.SIGKILL, signal.SIGSTOP])
            result = trial(tmp / f"trial-{number}", parties, victim, how, expected[parties], rng)
            results.append(result)
            print(f"trial {number + 1}/{args.trials}: {parties} parties, {result['signal']} {victim} after step "
                  f"{result['after_step']}: survivors out in {result['survivors_s']:.1f} s, launcher exit "
                  f"{result['status']} in {result['detected_s']:.1f} s, "
                  f"named {result['named']}, orphans {result['orphans']}, resumed and matched {result['matched']}",
                  flush=True)
    detection = [r["survivors_s"] for r in results]
    print(f"\n| trials | survivors out within the {TIMEOUT} s step timeout (+10 s) | failed process named | "
          "worst survivor exit | median | hangs | orphans | checkpoints whole | resumes that matched |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {len(results)} | {sum(r['within_timeout'] for r in results)} | {sum(r['named'] for r in results)} | "
          f"{max(detection):.1f} s | {statistics.median(detection):.1f} s | "
          f"{sum(not r['within_timeout'] for r in results)} | {sum(r['orphans'] for r in results)} | "
          f"{sum(r['whole_checkpoints'] for r in results)} | {sum(r['matched'] for r in results)} |")
    for r in results:
        if r["output"]:
            print(f"\n{r['signal']} {r['victim']}: the output did not name it:\n{r['output'][-2000:]}")
    for kind in ("SIGKILL", "SIGSTOP"):
        picked = [r for r in results if r["signal"] == kind]
        if picked:
            out = [r["survivors_s"] for r in picked]
            ended = [r["detected_s"] for r in picked]
            print(f"{kind}: {len(picked)} trials; survivors out: median {statistics.median(out):.1f} s, worst "
                  f"{max(out):.1f} s; launcher done (victim killed too): median {statistics.median(ended):.1f} s, "
                  f"worst {max(ended):.1f} s")
    return 0 if all(r["within_timeout"] and r["matched"] and not r["orphans"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
