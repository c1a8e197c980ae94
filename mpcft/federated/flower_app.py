"""The Flower App's project file: the components of mpcft.federated.app and their run configuration.

Written by `mpcft flower-app --out DIR --set KEY=VALUE ...`; `flwr run DIR` builds the app from
it (its own code is mpcft, installed on every host, so the app carries no code and no
dependencies to install).
"""
import json
import pathlib

DEFAULTS = {"aggregators": "127.0.0.1:9200,127.0.0.1:9201", "certs": "certs", "num-server-rounds": 5,
            "fraction-train": 1.0, "min-clients": 2, "min-available-clients": 2, "weighting": "examples",
            "weight-cap": 0, "expected-weight": 0.0,
            "secret-counts": False, "clipping-norm": 0.0, "noise-multiplier": 0.0, "dp-noise": "dealer",
            "local-noise-multiplier": 0.0, "local-max-grad-norm": 1.0, "delta": 1e-5,
            "labels": "negative,neutral,positive", "text-column": "sentence", "label-column": "label",
            "mode": "lora", "seq-len": 64, "local-epochs": 1, "batch-size": 16, "lr": 1e-3, "seed": 0,
            "test": "", "out": "runs/flower", "timeout": 600.0}

PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "1.0.0"
dependencies = []          # mpcft is installed beside Flower on every host

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "mpcft"

[tool.flwr.app.components]
serverapp = "mpcft.federated.app:server_app"
clientapp = "mpcft.federated.app:client_app"

[tool.flwr.app.config]
{config}
"""


def check_settings(values: dict) -> None:
    """ValueError (one line) for DP and weighting settings the ServerApp or the clients would
    refuse only once the run has started."""
    from .aggregation import WEIGHTINGS, check_capped
    from .local_dp import check_local_dp
    from .updates import FRAC_BITS
    try:
        if values["weighting"] not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {values['weighting']!r}")
        if values["weighting"] == "capped":
            check_capped(values["weight-cap"], float(values["clipping-norm"]), int(values["min-available-clients"]),
                         FRAC_BITS)
        if float(values["local-noise-multiplier"]):
            check_local_dp(float(values["local-noise-multiplier"]), float(values["local-max-grad-norm"]))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Flower App settings: {str(exc).replace('--', '')}") from None


def write_flower_app(folder, name: str = "mpcft-fedavg", **config) -> pathlib.Path:
    """DIR/pyproject.toml of a Flower App running these components with `config` (DEFAULTS'
    keys, underscores for dashes) over the defaults. Returns the file's path."""
    values = dict(DEFAULTS)
    for key, value in config.items():
        key = key.replace("_", "-")
        if key not in DEFAULTS:
            raise ValueError(f"unknown Flower App setting {key!r} (known: {', '.join(DEFAULTS)})")
        values[key] = value
    check_settings(values)
    lines = "\n".join(f"{key} = {json.dumps(value)}" for key, value in values.items())
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pyproject.toml"
    path.write_text(PYPROJECT.format(name=name, config=lines), "utf-8")
    return path
