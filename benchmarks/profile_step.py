"""Where the time of an MPC training step goes, per operation and per kind of wait.

    python -m benchmarks.profile_step [--parties 2] [--repeat 2] [--workload block lora]

Workloads (as benchmarks/bench_block.py runs them: spawned parties over mutual TLS, a
CorrelationDealer at one thread, one compute thread per party, timing.WARMUP_STEPS warm-up
steps, then `repeat` measured steps that prefetch their dealer correlations):
- block: a BERT block (hidden 256, 4 heads, seq 64, batch 4, every weight trained), forward
  and backward;
- lora: one MiniLM LoRA fine-tuning step (1 MPC layer, batch 8, seq 64): forward, cross
  entropy, backward, SGD.

Each measured step runs in the comm region "step"; every differentiable operation's forward
and backward and the optimizer step have their own regions inside it (mpcft.runtime.comm).
For the median measured step (the lower one for an even count) of rank 0, the table lists the
outermost operation regions, sorted by seconds: calls, wall seconds, share of the step, and
that time split into compute (what is left), sends to peers (serialising, TLS, socket
buffers), waits for peers' data, waits for the dealer's replies and PRG expansion of
correlations; then megabytes sent, rounds and dealer megabytes received. "(outside
operations)" is the step's time in no operation region: module glue in Python, autograd's
walk, dealer prefetch requests. One line per party splits its whole step the same way. A
last line gives each party's CPU seconds per step and, on Linux, what the machine's other
processes used beside them (the dealer, the kernel's loopback traffic): with three processes on
two cores, a step's wall time follows the machine's CPU, not one party's.
"""
import argparse
import os
import sys
import time

from benchmarks.bench_block import block_model, block_step, training_step
from benchmarks.timing import WARMUP_STEPS, markdown_table, one_compute_thread
from mpcft.protocols.context import MPCContext
from mpcft.protocols.correlations import CorrelationDealer
from mpcft.runtime import Counts, spawn

STEP = "step"
OUTSIDE = "(outside operations)"
WORKLOADS = {"block": "BERT block 256/4 heads, seq 64, batch 4, fwd+bwd",
             "lora": "MiniLM LoRA step, 1 MPC layer, batch 8, seq 64"}


def party_profile(session, workload, repeat, encoder):
    """WARMUP_STEPS warm-up steps, then `repeat` steps in region "step": the median step's counts (a
    CommSnapshot difference), and (wall s, this process's CPU s, the machine's busy CPU s or
    None) per step over all of them."""
    one_compute_thread()
    ctx = MPCContext(session)
    step = block_step(ctx, block_model()) if workload == "block" else training_step(ctx, encoder, "lora", 1)
    for _ in range(WARMUP_STEPS):   # compiles kernels, records the dealer plan, fills its work ahead
        step()
    runs = []
    cpu, busy, start = time.process_time(), machine_busy_seconds(), time.perf_counter()
    for _ in range(repeat):
        before = session.comm.snapshot()
        with session.comm.region(STEP):
            step()
        runs.append(session.comm.snapshot() - before)
    wall, cpu, busy = time.perf_counter() - start, time.process_time() - cpu, _minus(machine_busy_seconds(), busy)
    runs.sort(key=lambda run: run.region(STEP).seconds)
    return runs[(len(runs) - 1) // 2], (wall / repeat, cpu / repeat, None if busy is None else busy / repeat)


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores have spent busy since boot (Linux /proc/stat), None elsewhere."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")    # less idle and iowait


def _minus(after, before):
    return None if after is None or before is None else after - before


def cpu_line(cpu_figures) -> str:
    """Each party's CPU per step and what the machine's other processes (the dealer, the kernel's
    network work) used beside them, from every measured step (not only the median one)."""
    wall = max(w for w, _, _ in cpu_figures)
    parties = [c for _, c, _ in cpu_figures]
    line = (f"- CPU per step over all measured steps (wall {wall:.2f} s): "
            + ", ".join(f"rank {r} {c:.2f} s" for r, c in enumerate(parties)))
    busy = cpu_figures[0][2]
    if busy is not None:
        line += (f"; the dealer, the kernel and the rest {busy - sum(parties):.2f} s; "
                 f"{busy / wall:.2f} of {os.cpu_count()} cores busy")
    return line


def operations(run) -> dict:
    """{operation: Counts} of the outermost regions inside "step", plus the step's time outside them."""
    ops = {name.split("/", 1)[1]: counts for name, counts in run.regions.items()
           if name.startswith(STEP + "/") and name.count("/") == 1 and counts.calls}
    inside = sum(ops.values(), Counts())
    ops[OUTSIDE] = run.region(STEP) - inside
    ops[OUTSIDE].calls = 0
    return ops


def table(run) -> str:
    ops, step = operations(run), run.region(STEP)
    rows = []
    for name, c in sorted(ops.items(), key=lambda item: -item[1].seconds) + [("step total", step)]:
        rows.append([name, c.calls or "", f"{c.seconds:.3f}", f"{100 * c.seconds / step.seconds:.1f}",
                     f"{c.compute_seconds:.3f}", f"{c.send_seconds:.3f}", f"{c.wait_seconds:.3f}",
                     f"{c.dealer_wait_seconds:.3f}", f"{c.prg_seconds:.3f}", f"{c.bytes_sent / 1e6:.1f}",
                     c.rounds, f"{c.dealer_bytes_received / 1e6:.1f}"])
    return markdown_table(["region", "calls", "s", "% of step", "compute s", "send s", "wait s",
                           "dealer wait s", "PRG s", "MB sent", "rounds", "dealer MB received"], rows)


def split(run) -> str:
    """The step's seconds split: compute in operations, sends, waits, PRG, time outside operations."""
    ops, step = operations(run), run.region(STEP)
    outside = ops.pop(OUTSIDE)
    compute = sum(c.compute_seconds for c in ops.values())
    parts = [("compute in operations", compute), ("send", step.send_seconds),
             ("wait for peers", step.wait_seconds), ("dealer wait", step.dealer_wait_seconds),
             ("PRG", step.prg_seconds), ("outside operations", outside.compute_seconds)]
    return f"{step.seconds:.2f} s = " + " + ".join(
        f"{name} {seconds:.2f} s ({100 * seconds / step.seconds:.0f} %)" for name, seconds in parts)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parties", type=positive, default=2)
    parser.add_argument("--repeat", type=positive, default=2)
    parser.add_argument("--workload", nargs="+", choices=sorted(WORKLOADS), default=["block", "lora"])
    args = parser.parse_args()
    if args.parties < 2:
        sys.exit("profile_step: --parties must be at least 2")
    encoder = None
    if "lora" in args.workload:
        from mpcft.encoder import default_model_path, load_encoder, quiet_transformers
        quiet_transformers()
        _, encoder = load_encoder(default_model_path())
    for workload in args.workload:
        results = spawn(party_profile, args.parties, workload, args.repeat, encoder,
                        dealer_handler=CorrelationDealer, dealer_threads=1, timeout=3600)
        runs = [run for run, _ in results]
        slowest = max(range(args.parties), key=lambda rank: runs[rank].region(STEP).seconds)
        print(f"\n### {WORKLOADS[workload]}, {args.parties} parties: rank 0, median of "
              f"{args.repeat} measured step(s)\n")
        print(table(runs[0]))
        print()
        for rank, run in enumerate(runs):
            mark = " (slowest)" if rank == slowest else ""
            print(f"- rank {rank}{mark}: {split(run)}")
        print(cpu_line([figures for _, figures in results]))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
