"""Command line entry point: `mpcft <command>`.

  mpcft certs --out DIR [--ca-dir CA] -n N [--dealer] [--owner NAME ...] [--host H ...] [--days D]
  mpcft launch -n N [--dealer] [--handler m:f] [--insecure-plaintext] [--timeout S]
               script.py|-m module [args]
  mpcft party --config cluster.toml --rank R script.py|-m module [args]
  mpcft dealer --config cluster.toml [--handler m:f]
  mpcft finetune [--parties N] [fine-tuning options]   (no options: the built-in main job)
  mpcft dp-sweep --epsilons E [E ...] [--parties N] [fine-tuning options]
  mpcft audit [--canaries K] [--canary-repeats R] [--parties N] [fine-tuning options]
  mpcft share-data --certs DIR --name NAME --train my.csv --parties N --out shares/
  mpcft predict [--model DIR | --shares RUN] --text TEXT [--text ...] | --input my.csv [--output out.csv]
  mpcft federated [--clients K] [--rounds R] [--train my.csv] [--partition iid|dirichlet] [--dp ...]
"""
import os

# Before torch and Numba load their OpenMP runtime: idle workers must not spin on cores the
# other parties share (see mpcft.runtime.local.PASSIVE_OPENMP). Before transformers loads:
# models are local folders, the hub is never asked.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import pathlib
import runpy
import signal
import sys

from mpcft.data import DataError, check_data
from mpcft.data.owners import add_arguments as add_owner_arguments
from mpcft.data.owners import write_share_files
from mpcft.encoder import quiet_transformers
from mpcft.finetune.checkpoint import resumed_config
from mpcft.finetune.config import ConfigError, FinetuneConfig, HelpFormatter, add_arguments
from mpcft.finetune.sweep import add_sweep_arguments, run_sweep
from mpcft.federated.flower_app import DEFAULTS as FLOWER_APP_DEFAULTS
from mpcft.federated.handoff import SERVER_IDENTITY
from mpcft.runtime import config as cluster_config
from mpcft.runtime.dealer import DEFAULT_HANDLER, DealerServer
from mpcft.runtime.errors import MPCRuntimeError, failure_report
from mpcft.runtime.launch import launch
from mpcft.runtime.memory import keep_freed_memory
from mpcft.runtime.session import ENV_CLUSTER, ENV_RANK, ENV_WORLD_SIZE
from mpcft.runtime.tls import default_ca_dir, load_ca, make_cert, make_certs


def _program(args):
    """The program to run as ["-m", module, args...] or [script, args...]: everything after
    `-m MODULE` or the script path belongs to it (a leading `--` is dropped)."""
    if args.module:
        return ["-m"] + args.module
    program = args.args[1:] if args.args[:1] == ["--"] else args.args
    if program[:1] == ["-m"] and len(program) > 1:
        return program
    if not program or program[0].startswith("-"):
        raise SystemExit("mpcft: give a script or -m module to run (its own options follow it)")
    return program


def _add_program(parser):
    parser.add_argument("-m", dest="module", nargs=argparse.REMAINDER, metavar="MODULE ...",
                        help="run a module (like python -m) with the arguments that follow it")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="script.py and its arguments")


def cmd_certs(args):
    ca_dir = args.ca_dir or default_ca_dir(args.out)
    make_certs(args.out, args.n, dealer=args.dealer, hosts=args.host, days=args.days, owners=args.owner,
               ca_dir=ca_dir)
    if args.flower_server:
        make_cert(load_ca(ca_dir), SERVER_IDENTITY, args.out, args.host, args.days)
    made = [f"{args.n} parties"] * bool(args.n) + ["the dealer"] * args.dealer
    made += ["the Flower server"] * args.flower_server
    made += [f"owner {name}" for name in args.owner]
    print(f"mpcft certs: certificates for {', '.join(made) or 'nobody'} in {args.out}; "
          f"the CA's private key stays in {ca_dir} (copy it to no host)")
    return 0


def cmd_share_data(args):
    quiet_transformers()
    sealing, paths = write_share_files(args)
    for path in paths:
        print(f"mpcft share-data: wrote {path}")
    print(f"mpcft share-data: sealing {sealing} (parties accept only it with "
          f"--owner-sealing {args.name}={sealing})")
    return 0


ENV_FIXED_SEEDS = "MPCFT_INSECURE_FIXED_SEEDS"   # tests of bit-exact resumption only (hex)


def launch_finetune(config, parties: int, timeout: float, certs=None, fixed_seeds=None) -> int:
    """Local parties and dealer on loopback (mutual TLS), each running mpcft.finetune."""
    return launch(parties, ["-m", "mpcft.finetune", "--config-json", config.to_json()], dealer=True,
                  timeout=timeout, certs=certs, passthrough_rank=0, fixed_seeds=fixed_seeds)


def run_certificates(out, parties: int) -> pathlib.Path:
    """The loopback certificates of a local run, kept in OUT/certs (the CA key in OUT/certs-ca)
    so that a resumed run has the identities its checkpoints were made under."""
    folder = pathlib.Path(out) / "certs"
    names = ["ca", "dealer"] + [f"party-{r}" for r in range(parties)]
    if not all((folder / f"{name}.pem").is_file() for name in names):
        make_certs(folder, parties, dealer=True, hosts=["127.0.0.1"], days=365,
                   ca_dir=default_ca_dir(folder))
    return folder


def cmd_finetune(args):
    config = FinetuneConfig.from_args(args)
    if config.resume:
        config = resumed_config(config, config.resume)
    config.check(args.parties)
    counts = check_data(config, args.parties)
    if config.dp and counts:
        from mpcft.finetune.private import check_noise_range
        check_noise_range(config, sum(counts))
    fixed = os.environ.get(ENV_FIXED_SEEDS)
    return launch_finetune(config, args.parties, args.timeout, args.certs or run_certificates(config.out, args.parties),
                           bytes.fromhex(fixed) if fixed else None)


def cmd_dp_sweep(args):
    return run_sweep(args, launch_finetune)


def cmd_audit(args):
    from mpcft.finetune.audit import run_audit
    return run_audit(args)


def cmd_federated(args):
    from mpcft.federated.simulation import check_options, run
    try:
        check_options(args)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    os.environ.setdefault("OMP_NUM_THREADS", "1")     # one compute thread per client process
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    quiet_transformers()
    return run(args)


def cmd_flower_app(args):
    import tomllib

    from mpcft.federated.flower_app import write_flower_app
    settings = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: give KEY=VALUE")
        try:
            settings[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            settings[key.strip()] = value.strip()          # a bare word: a string
    try:
        path = write_flower_app(args.out, **settings)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    print(f"mpcft flower-app: wrote {path}; run it with `flwr run {args.out} --stream`")
    return 0


def cmd_predict(args):
    from mpcft.finetune.predict import DEFAULT_TIMEOUT, run_predict
    quiet_transformers()
    if args.shares is None:
        return run_predict(args)
    from mpcft.finetune import predict_shared      # imported here: `mpcft party -m` runs it as __main__
    parties = predict_shared.check_request(args)
    common, asker = predict_shared.worker_arguments(args)
    return launch(parties, ["-m", predict_shared.MODULE] + common, rank_arguments={0: asker}, dealer=True,
                  timeout=args.timeout or DEFAULT_TIMEOUT, certs=run_certificates(args.shares, parties),
                  passthrough_rank=0)


def cmd_launch(args):
    return launch(args.n, _program(args), dealer=args.dealer, handler=args.handler,
                  tls=not args.insecure_plaintext, timeout=args.timeout,
                  connect_timeout=args.connect_timeout, certs=args.certs)


def cmd_party(args):
    config = cluster_config.load(args.config)
    config.party(args.rank)
    os.environ[ENV_CLUSTER] = str(config.path)
    os.environ[ENV_RANK] = str(args.rank)
    os.environ[ENV_WORLD_SIZE] = str(config.world_size)
    program = _program(args)
    try:
        if program[0] == "-m":
            sys.argv = [program[1]] + program[2:]
            runpy.run_module(program[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = program
            sys.path.insert(0, os.path.dirname(os.path.abspath(program[0])))
            runpy.run_path(program[0], run_name="__main__")
    except MPCRuntimeError as exc:
        status, line = failure_report(exc)
        print(f"mpcft party {args.rank}: {line}", file=sys.stderr, flush=True)
        exit_at_once(status)
    except SystemExit as exc:                   # the program's own sys.exit(status)
        if exc.code not in (0, None):
            if not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
            exit_at_once(exc.code if isinstance(exc.code, int) else 1)
        raise
    return 0


def exit_at_once(status: int):
    """Ends a failed party or dealer process now (stdio flushed, os._exit): its peers and the
    launcher see it go within the step timeout, not after the interpreter's teardown, whose
    collection of a heap that holds a model takes seconds on a loaded host. Everything a run
    keeps is already on disk (checkpoints are written atomically)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def cmd_dealer(args):
    server = DealerServer(cluster_config.load(args.config), args.handler, threads=args.threads)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    signal.signal(signal.SIGINT, lambda *_: server.stop())
    status = server.run()
    if status:
        exit_at_once(status)
    return status


def certs_arguments(p):
    p.add_argument("--out", required=True, help="folder of the certificates that go to the hosts")
    p.add_argument("--ca-dir", default=None,
                   help="folder of the CA's private key, kept apart from --out and reused when there "
                        "(default: OUT-ca beside OUT)")
    p.add_argument("-n", type=int, default=0, help="number of parties")
    p.add_argument("--owner", action="append", default=[],
                   help="also a certificate owner-NAME for a data owner (repeatable)")
    p.add_argument("--dealer", action="store_true", help="also a certificate for the dealer")
    p.add_argument("--flower-server", action="store_true",
                   help="also a certificate for the Flower server that talks to federated aggregators")
    p.add_argument("--host", action="append", default=[],
                   help="host name or address to put in every certificate (repeatable)")
    p.add_argument("--days", type=int, default=365, help="validity in days")
    p.set_defaults(run=cmd_certs)


def launch_arguments(p):
    p.add_argument("-n", type=int, required=True, help="number of parties")
    p.add_argument("--dealer", action="store_true", help="also start the dealer")
    p.add_argument("--handler", default=None, help=f"dealer handler (default {DEFAULT_HANDLER})")
    p.add_argument("--insecure-plaintext", action="store_true",
                   help="no TLS (INSECURE; benchmarks only)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per protocol step")
    p.add_argument("--connect-timeout", type=float, default=60.0)
    p.add_argument("--certs", default=None, help="certificate folder (default: throw-away)")
    _add_program(p)
    p.set_defaults(run=cmd_launch)


def party_arguments(p):
    p.add_argument("--config", required=True, help="cluster TOML file")
    p.add_argument("--rank", type=int, required=True)
    _add_program(p)
    p.set_defaults(run=cmd_party)


def finetune_arguments(p):
    p.add_argument("--parties", type=int, default=2,
                   help="compute parties (each also a data owner unless --owner-shares)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per protocol step")
    p.add_argument("--certs", default=None,
                   help="certificate folder from `mpcft certs` (needed with --owner-shares; "
                        "default: throw-away certificates)")
    add_arguments(p)
    p.set_defaults(run=cmd_finetune)


def dp_sweep_arguments(p):
    add_sweep_arguments(p)
    p.set_defaults(run=cmd_dp_sweep)


def audit_arguments(p):
    from mpcft.finetune.audit import add_audit_arguments
    add_audit_arguments(p)
    p.set_defaults(run=cmd_audit)


def predict_arguments(p):
    from mpcft.finetune.predict import add_predict_arguments
    add_predict_arguments(p)
    p.set_defaults(run=cmd_predict)


def federated_arguments(p):
    from mpcft.federated.simulation import add_arguments as add_federated_arguments
    add_federated_arguments(p)
    p.set_defaults(run=cmd_federated)


def flower_app_arguments(p):
    p.add_argument("--out", required=True, help="folder of the Flower App")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a run-config value (repeatable): " + ", ".join(f"{k}={v}" for k, v in FLOWER_APP_DEFAULTS.items()))
    p.set_defaults(run=cmd_flower_app)


def share_data_arguments(p):
    add_owner_arguments(p)
    p.set_defaults(run=cmd_share_data)


def dealer_arguments(p):
    p.add_argument("--config", required=True, help="cluster TOML file")
    p.add_argument("--handler", default=DEFAULT_HANDLER, help="module:function")
    p.add_argument("--threads", type=int, default=None, help="torch compute threads")
    p.set_defaults(run=cmd_dealer)


# name: (help, its options' formatter, what adds its options and sets `run`). main adds the
# options of the command asked for only: audit, predict and federated import transformers,
# dp-accounting and Opacus there (and the DP noise check where it runs), so any other command
# refuses a mistake, or prints its help, without loading them.
COMMANDS = {
    "certs": ("create a CA and certificates for parties, dealer and owners", None, certs_arguments),
    "launch": ("run N local parties (and the dealer) on loopback", None, launch_arguments),
    "party": ("run one party of a cluster", None, party_arguments),
    "finetune": ("private fine-tuning with local parties and a dealer", HelpFormatter, finetune_arguments),
    "dp-sweep": ("the privacy-utility curve: fine-tune at several epsilons and without DP, table and plot",
                 None, dp_sweep_arguments),
    "audit": ("train with canaries inserted, then attack the model: membership inference and canary "
              "exposure", HelpFormatter, audit_arguments),
    "predict": ("classify texts with a model that mpcft finetune wrote", HelpFormatter, predict_arguments),
    "federated": ("federated fine-tuning on Flower: K local clients, mpcft parties as the secure aggregator",
                  HelpFormatter, federated_arguments),
    "flower-app": ("write a Flower App (pyproject.toml) that runs SecureFedAvg with mpcft aggregators under "
                   "Flower's SuperLink", HelpFormatter, flower_app_arguments),
    "share-data": ("a data owner seals shares of its data to the parties", None, share_data_arguments),
    "dealer": ("run the dealer of a cluster", None, dealer_arguments),
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="mpcft", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    asked = next((word for word in argv if not word.startswith("-")), None)   # the command word
    for name, (help_text, formatter, add_options) in COMMANDS.items():
        p = commands.add_parser(name, help=help_text, **({"formatter_class": formatter} if formatter else {}))
        if name == asked:      # only the command asked for loads its modules
            add_options(p)
    args = parser.parse_args(argv)
    keep_freed_memory()          # this process; those it starts get PARTY_ENVIRONMENT
    try:
        return args.run(args)
    except MPCRuntimeError as exc:
        print(f"mpcft {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except (DataError, ConfigError) as exc:
        print(f"mpcft {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
