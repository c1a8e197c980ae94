"""Fault injection: at a random point after a random checkpoint of a small fine-tuning run,

- process faults (`mpcft finetune` on loopback): kill (SIGKILL) or freeze (SIGSTOP) a random
  party or the dealer;
- link faults (the several-hosts form: `mpcft party ... -m mpcft.finetune` per rank and
  `mpcft dealer`, each in its own network namespace, benchmarks.netns): close a random process's
  TCP connections to one peer (`ss -K`: a reset mid-frame), or stall a random host's link
  (link down: silence, no error);

then check what users are promised: every process that is not dead exits non-zero within the
step timeout, a line names the process (or, for a link, either end) that failed, no process
is left behind, every checkpoint on disk is whole, and `--resume` (`mpcft finetune --resume`,
or `mpcft party ... -m mpcft.finetune --resume` on each host) ends with the same shares, bit
for bit, as an uninterrupted run with the same (test-only, insecure_fixed_seeds) seeds.

    python -m benchmarks.faults --trials 50                  # the process faults in RESULTS.md
    python -m benchmarks.faults --trials 20 --faults link    # the link faults (root, iproute2)
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

from benchmarks.netns import Hosts

SEEDS = "5e" * 32
TIMEOUT = 20                                           # seconds per protocol step in these runs
# 24 steps, checkpoints at 2, 4, ..., 22; faults strike after step 2 to 8 (wait_for_checkpoint),
# so at least 16 steps are left: a head-mode step takes a fraction of a second, and a fault that
# came after the last exchange would find nothing left to break
OPTIONS = ["--mode", "head", "--max-train", "48", "--epochs", "4", "--checkpoint-every", "2"]
RUN = OPTIONS + ["--timeout", str(TIMEOUT)]


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


def shares(runs: list):
    """Each party's final shares; runs[r] is party r's run folder."""
    return [torch.load(pathlib.Path(run) / "shares" / f"party-{r}.pt") for r, run in enumerate(runs)]


def same_shares(a, b) -> bool:
    return all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def reference(folder: pathlib.Path, parties: int):
    """An uninterrupted run's shares."""
    status, out = finish(mpcft("finetune", "--parties", str(parties), "--out", str(folder), *RUN))
    if status != 0:
        raise RuntimeError(f"the uninterrupted run failed:\n{out}")
    return shares([folder] * parties)


def whole_checkpoints(runs: list) -> bool:
    """Every checkpoint folder on disk is whole (Checkpoints.verify: manifest and digest agree);
    partial ones are hidden. runs[r] is party r's run folder."""
    from mpcft.finetune.checkpoint import Checkpoints
    stores = [Checkpoints(run, rank, {}) for rank, run in enumerate(runs)]
    return all(store.verify(step) for store in stores for step in store.steps())


def names_the_failure(output: str, *victims: str) -> bool:
    """Whether a launcher or survivor line (not a warning) reports one of `victims` as failed or
    silent: "rank 1 exited with status -9", "... from party 1 ... timed out", "lost party 1",
    "dealer ..."."""
    aliases = [a for v in victims for a in (["dealer"] if v == "dealer" else [v, v.replace("rank", "party")])]
    events = ("exited with status", "timeout", "nothing received", "lost", "failed", "closed", "error")
    return any(any(a in line for a in aliases) and any(e in line.lower() for e in events)
               for line in output.splitlines() if "WARNING" not in line)


def wait_for_checkpoint(runs: list, procs: list, rng: random.Random) -> int:
    """Waits until every party (runs[r]: party r's run folder) has written the checkpoint of a
    random step, then a random moment more; returns the step."""
    after = rng.choice([2, 4, 6, 8])
    markers = [pathlib.Path(run) / "checkpoints" / f"party-{r}" / f"step-{after}" for r, run in enumerate(runs)]
    deadline = time.monotonic() + 600
    while not all(m.is_dir() for m in markers):
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            raise RuntimeError("the run ended before the fault:\n" + "\n".join(p.communicate()[0] for p in procs))
        time.sleep(0.01)
    time.sleep(rng.uniform(0, 0.5))
    return after


def trial(folder: pathlib.Path, parties: int, victim: str, how: int, expected, rng: random.Random) -> dict:
    """One fault: `victim` ("rank R" or "dealer") gets signal `how` after a random checkpoint
    and a random delay; then the run is resumed. Returns the trial's measurements."""
    proc = mpcft("finetune", "--parties", str(parties), "--out", str(folder), *RUN)
    after = wait_for_checkpoint([folder] * parties, [proc], rng)
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
    whole = whole_checkpoints([folder] * parties)
    resumed_status, resumed_out = finish(mpcft("finetune", "--resume", str(folder), "--parties", str(parties)))
    return {"parties": parties, "victim": victim, "signal": signal.Signals(how).name, "after_step": after,
            "status": status, "named": names_the_failure(out, victim), "survivors_s": survived, "detected_s": detected,
            "within_timeout": status != 0 and survived <= TIMEOUT + 10, "orphans": len(orphans),
            "whole_checkpoints": whole, "resumed": resumed_status == 0 and "resuming" in resumed_out,
            "matched": resumed_status == 0 and same_shares(expected, shares([folder] * parties)),
            "output": out if status == 0 or not names_the_failure(out, victim) else ""}


def on_hosts(hosts: Hosts, folder: pathlib.Path, parties: int, args) -> dict:
    """The several-hosts form in `hosts` (party R on host R, the dealer on host `parties`):
    `mpcft party --config cluster.toml --rank R -m mpcft.finetune *args(R)` and `mpcft dealer`.
    Returns {"rank R" / "dealer": process}."""
    from mpcft.runtime import local_cluster
    config = folder / "cluster.toml"
    if not config.exists():                        # a resumed run keeps its certificates and file
        folder.mkdir(parents=True, exist_ok=True)
        local_cluster(folder, parties, dealer=True, hosts=hosts.addresses[:parties + 1],
                      ports=[29500] * parties + [29400], timeout=TIMEOUT, connect_timeout=60,
                      fixed_seeds=bytes.fromhex(SEEDS))
    base = [sys.executable, "-m", "mpcft.cli"]
    procs = {f"rank {r}": hosts.popen(r, base + ["party", "--config", str(config), "--rank", str(r),
                                                "-m", "mpcft.finetune", *args(r)],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(parties)}
    procs["dealer"] = hosts.popen(parties, base + ["dealer", "--config", str(config)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return procs


def finish_all(procs: dict, limit: float) -> dict:
    """{name: (status, output)} once every process has ended (killed past `limit` seconds: a hang)."""
    ended, deadline = {}, time.monotonic() + limit
    for name, proc in procs.items():
        try:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0] + "\n[killed: still running past the limit]"
        ended[name] = (proc.returncode, out)
    return ended


def runs_of(folder: pathlib.Path, parties: int) -> list:
    return [folder / f"run-{r}" for r in range(parties)]


def reference_on_hosts(folder: pathlib.Path, parties: int):
    """An uninterrupted several-hosts run's shares."""
    with Hosts(parties + 1, tag=f"mpref{os.getpid() % 10000}") as hosts:
        ended = finish_all(on_hosts(hosts, folder, parties, lambda r: [*OPTIONS, "--out", str(folder / f"run-{r}")]),
                           900)
    if any(status != 0 for status, _ in ended.values()):
        raise RuntimeError("the uninterrupted run failed:\n" + "\n".join(out for _, out in ended.values()))
    return shares(runs_of(folder, parties))


def link_trial(folder: pathlib.Path, parties: int, victim: str, how: str, expected, rng: random.Random) -> dict:
    """One link fault on the several-hosts form: "close" destroys `victim`'s TCP connections to a
    random peer (ss -K), "stall" takes `victim`'s host link down; then every process must end
    non-zero within the step timeout, and `--resume` on each host must give `expected`."""
    names = [f"rank {r}" for r in range(parties)] + ["dealer"]
    runs = runs_of(folder, parties)
    with Hosts(parties + 1, tag=f"mpflt{os.getpid() % 10000}") as hosts:
        procs = on_hosts(hosts, folder, parties, lambda r: [*OPTIONS, "--out", str(runs[r])])
        after = wait_for_checkpoint(runs, list(procs.values()), rng)
        host = names.index(victim)
        if how == "close":
            peers = [n for n in names if n != victim and not (victim == "dealer" and n == "dealer")]
            peer = rng.choice(peers)
            links = hosts.close_links(host, hosts.addresses[names.index(peer)])
            failed = (victim, peer)
        else:
            hosts.set_link(host, up=False)
            peer, links, failed = None, 1, (victim,)
        struck, exits = time.monotonic(), {}
        while len(exits) < len(procs) and time.monotonic() - struck < TIMEOUT * 10:
            exits.update({name: round(time.monotonic() - struck, 1) for name, p in procs.items()
                          if name not in exits and p.poll() is not None})
            time.sleep(0.05)
        survived = time.monotonic() - struck
        ended = finish_all(procs, 5)
        orphans = hosts.pids()
        if how == "stall":
            hosts.set_link(host, up=True)
        whole = whole_checkpoints(runs)
        resumed = finish_all(on_hosts(hosts, folder, parties, lambda r: ["--resume", str(runs[r])]), 900)
    output = "\n".join(f"[{name}] {line}" for name, (_, out) in ended.items() for line in out.splitlines())
    resumed_ok = all(status == 0 for status, _ in resumed.values()) and "resuming" in resumed["rank 0"][1]
    named = names_the_failure(output, *failed)
    return {"parties": parties, "victim": victim + (f" -> {peer}" if peer else ""), "signal": how,
            "after_step": after, "status": max(abs(status) for status, _ in ended.values()), "links": links,
            "named": named, "survivors_s": survived, "detected_s": survived, "exits": exits,
            "within_timeout": all(status != 0 for status, _ in ended.values()) and survived <= TIMEOUT + 10,
            "orphans": len(orphans), "whole_checkpoints": whole, "resumed": resumed_ok,
            "matched": resumed_ok and same_shares(expected, shares(runs)),
            "output": output if not named or not resumed_ok else ""}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10, help="faults to inject (default 10)")
    parser.add_argument("--seed", type=int, default=None, help="choice of victims and moments (default: fresh)")
    parser.add_argument("--faults", choices=("process", "link", "all"), default="process",
                        help="process: SIGKILL/SIGSTOP on loopback; link: close/stall in network namespaces "
                             "(root); all: both (default process)")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    kinds = {"process": [signal.SIGKILL, signal.SIGSTOP], "link": ["close", "stall"]}
    kinds = kinds[args.faults] if args.faults != "all" else kinds["process"] + kinds["link"]
    results = []
    with tempfile.TemporaryDirectory(prefix="mpcft-faults-") as tmp:
        tmp = pathlib.Path(tmp)
        expected = {}
        for number in range(args.trials):
            parties = rng.choice([2, 3])
            victim = rng.choice([f"rank {r}" for r in range(parties)] + ["dealer"])
            how = rng.choice(kinds)
            if isinstance(how, str):
                if ("hosts", parties) not in expected:
                    expected["hosts", parties] = reference_on_hosts(tmp / f"reference-hosts-{parties}", parties)
                result = link_trial(tmp / f"trial-{number}", parties, victim, how, expected["hosts", parties], rng)
            else:
                if parties not in expected:
                    expected[parties] = reference(tmp / f"reference-{parties}", parties)
                result = trial(tmp / f"trial-{number}", parties, victim, how, expected[parties], rng)
            results.append(result)
            print(f"trial {number + 1}/{args.trials}: {parties} parties, {result['signal']} {result['victim']} after step "
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
            print(f"\n{r['signal']} {r['victim']}: not named, or the resume failed:\n{r['output'][-2000:]}")
    for kind in ("SIGKILL", "SIGSTOP", "close", "stall"):
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
