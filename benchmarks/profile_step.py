"""Where the time of an MPC training step goes, per operation and per kind of wait.

    python -m benchmarks.profile_step [--parties 2] [--repeat 2] [--workload block lora]

Workloads (as benchmarks/bench_block.py runs them: spawned parties over mutual TLS, a
CorrelationDealer at one thread, one compute thread per party, a warm-up step, then `repeat`
measured steps that prefetch their dealer correlations):
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
walk, dealer prefetch requests. One line per party splits its whole step the same way.
"""
import argparse
import sys

from benchmarks.bench_block import block_model, block_step, training_step
from benchmarks.timing import markdown_table, one_compute_thread
from mpcft.protocols.context import MPCContext
from mpcft.protocols.correlations import CorrelationDealer
from mpcft.runtime import Counts, spawn

STEP = "step"
OUTSIDE = "(outside operations)"
WORKLOADS = {"block": "BERT block 256/4 heads, seq 64, batch 4, fwd+bwd",
             "lora": "MiniLM LoRA step, 1 MPC layer, batch 8, seq 64"}


def party_profile(session, workload, repeat, encoder):
    """A warm-up step, then `repeat` steps in region "step": the median step's counts (a
    CommSnapshot difference)."""
    one_compute_thread()
    ctx = MPCContext(session)
    step = block_step(ctx, block_model()) if workload == "block" else training_step(ctx, encoder, "lora", 1)
    step()                       # warm-up: compiles kernels, records the dealer plan to prefetch
    runs = []
    for _ in range(repeat):
        before = session.comm.snapshot()
        with session.comm.region(STEP):
            step()
        runs.append(session.comm.snapshot() - before)
    runs.sort(key=lambda run: run.region(STEP).seconds)
    return runs[(len(runs) - 1) // 2]


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
        runs = spawn(party_profile, args.parties, workload, args.repeat, encoder,
                     dealer_handler=CorrelationDealer, dealer_threads=1, timeout=3600)
        slowest = max(range(args.parties), key=lambda rank: runs[rank].region(STEP).seconds)
        print(f"\n### {WORKLOADS[workload]}, {args.parties} parties: rank 0, median of "
              f"{args.repeat} measured step(s)\n")
        print(table(runs[0]))
        print()
        for rank, run in enumerate(runs):
            mark = " (slowest)" if rank == slowest else ""
            print(f"- rank {rank}{mark}: {split(run)}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
