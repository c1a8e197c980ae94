"""The fine-tuning worker, one party's process: `python -m mpcft.finetune`.

`mpcft finetune` starts one per party (with the dealer) and passes the run as
`--config-json JSON` (a FinetuneConfig); under `mpcft launch` or `mpcft party` it takes the
same options as `mpcft finetune`. It sets this process's threads, loads models offline, gets
its session from mpcft.runtime.init(), trains, and prints the summary at rank 0. A user's or
a peer's error ends it with one line on stderr and a non-zero status
(mpcft.runtime.errors.failure_report).
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # before transformers loads: the model is local

import argparse
import sys

from mpcft.data import DataError
from mpcft.encoder import quiet_transformers
from mpcft.kernels.threads import set_compute_threads
from mpcft.runtime import init
from mpcft.runtime.errors import MPCRuntimeError, failure_report
from mpcft.runtime.session import ENV_RANK

from .checkpoint import resumed_config
from .config import ConfigError, FinetuneConfig, HelpFormatter, add_arguments
from .outputs import print_summary
from .trainer import TrainingDiverged, train


def parse(argv=None) -> FinetuneConfig:
    """The run's config from `--config-json` or from the options."""
    parser = argparse.ArgumentParser(prog="python -m mpcft.finetune", formatter_class=HelpFormatter,
                                     description="Private fine-tuning of a pretrained BERT-family "
                                                 "classifier under MPC (`mpcft finetune`).")
    parser.add_argument("--config-json", metavar="JSON",
                        help="the whole run as FinetuneConfig JSON (how `mpcft finetune` starts its "
                             "workers), instead of the options below")
    add_arguments(parser)
    args = parser.parse_args(argv)
    options = FinetuneConfig.from_args(args)
    if args.config_json is None:
        return options
    if options != FinetuneConfig():
        parser.error("--config-json replaces the other options: give one or the other")
    try:
        return FinetuneConfig.from_json(args.config_json)
    except ValueError as exc:
        parser.error(f"--config-json: {exc}")


def main(argv=None) -> int:
    config = parse(argv)
    set_compute_threads(config.threads)    # the parties of one host share its cores
    quiet_transformers()
    try:
        if config.resume:
            config = resumed_config(config, config.resume)
        with init() as session:
            config.check(session.world_size)
            summary = train(session, config)
    except (MPCRuntimeError, DataError, TrainingDiverged, ConfigError) as exc:
        status, line = failure_report(exc)
        print(f"mpcft party {os.environ.get(ENV_RANK)}: {line}", file=sys.stderr, flush=True)
        return status
    if summary is not None:
        print_summary(summary, config.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
