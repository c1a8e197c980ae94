"""Cluster file: who the parties and the dealer are, where they listen, and their certificates.

Example (`cluster.toml`; relative paths are relative to the file's folder)::

    [cluster]
    timeout = 60               # seconds any one protocol step (send, receive, dealer request) may take
    connect_timeout = 60       # seconds to set up all connections, in any start order
    tls = true                 # false = INSECURE plaintext, for benchmarks only (loud warning)
    ca = "certs/ca.pem"        # the CA that signed every certificate below
    max_frame_bytes = 4294967296   # larger incoming frames are refused
    max_buffered_bytes = 4294967296   # received bytes a connection holds unread before it stops
                                      # reading (backpressure); an empty inbox always takes a frame
    dealer_idle_timeout = 3600  # seconds the dealer waits for a party's next request (parties may
                                # compute for minutes between requests), then drops that party
    # insecure_fixed_seeds = "<64 hex digits>"   # TESTS ONLY: every seed derived from this public
                                # value instead of drawn (reproducible runs; INSECURE, loud warning)

    [[party]]
    rank = 0
    host = "10.0.0.1"          # address the other parties connect to
    port = 29500
    bind = "0.0.0.0"           # optional: listening address (default: host)
    cert = "certs/party-0.pem" # certificate with common name "party-0"
    key = "certs/party-0-key.pem"

    [[party]]
    rank = 1
    host = "10.0.0.2"
    port = 29500
    cert = "certs/party-1.pem"
    key = "certs/party-1-key.pem"

    [dealer]                   # optional
    host = "10.0.0.9"
    port = 29400
    cert = "certs/dealer.pem"  # common name "dealer"
    key = "certs/dealer-key.pem"

Ranks must be 0..n-1 (n >= 2). Each process only needs its own key; the file may list them all.
"""
import dataclasses
import pathlib
import threading
import tomllib

from mpcft.kernels import derive_seed

from .errors import ConfigError

DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_FRAME_BYTES = 1 << 32
DEFAULT_MAX_BUFFERED_BYTES = 1 << 32
DEFAULT_DEALER_IDLE_TIMEOUT = 3600.0


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One process of the cluster: a party (rank >= 0) or the dealer (rank None)."""
    rank: int | None
    host: str
    port: int
    cert: pathlib.Path | None = None
    key: pathlib.Path | None = None
    bind: str | None = None

    @property
    def identity(self):
        """Common name its certificate must carry."""
        return "dealer" if self.rank is None else f"party-{self.rank}"

    @property
    def name(self):
        """How error messages name it."""
        return "dealer" if self.rank is None else f"party {self.rank}"


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    parties: tuple
    dealer: Endpoint | None = None
    ca: pathlib.Path | None = None
    tls: bool = True
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float = DEFAULT_TIMEOUT
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    path: pathlib.Path | None = None
    max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES
    dealer_idle_timeout: float = DEFAULT_DEALER_IDLE_TIMEOUT
    insecure_fixed_seeds: bytes | None = None

    @property
    def world_size(self):
        return len(self.parties)

    def party(self, rank):
        if not 0 <= rank < self.world_size:
            raise ConfigError(f"rank {rank} is not in the cluster (world size {self.world_size})")
        return self.parties[rank]

    def __post_init__(self):
        if self.world_size < 2:
            raise ConfigError(f"a cluster needs at least 2 parties, got {self.world_size}")
        if [p.rank for p in self.parties] != list(range(self.world_size)):
            raise ConfigError(f"party ranks must be 0..{self.world_size - 1}, got "
                              f"{[p.rank for p in self.parties]}")
        if self.timeout <= 0 or self.connect_timeout <= 0 or self.dealer_idle_timeout <= 0:
            raise ConfigError("timeouts must be positive")
        if self.max_frame_bytes <= 0 or self.max_buffered_bytes <= 0:
            raise ConfigError("max_frame_bytes and max_buffered_bytes must be positive")
        if self.insecure_fixed_seeds is not None and len(self.insecure_fixed_seeds) != 32:
            raise ConfigError("insecure_fixed_seeds must be 64 hex digits (32 bytes)")
        if self.tls:
            endpoints = self.parties + ((self.dealer,) if self.dealer else ())
            missing = [e.name for e in endpoints if e.cert is None or e.key is None]
            if self.ca is None or missing:
                raise ConfigError("tls = true needs `ca` and a cert and key for "
                                  + (", ".join(missing) or "every endpoint"))


def fixed_seed(fixed_seeds: bytes, *labels) -> bytes:
    """The seed labelled `labels` (("pair", i, j), ("dealer", r)) of a cluster with
    insecure_fixed_seeds: public to whoever reads the cluster file."""
    return derive_seed(fixed_seeds, "insecure-fixed-seed", *labels)


def _brief(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def load(path):
    """Read and check a cluster TOML file: ConfigError, naming the file and the entry, for
    anything it cannot use (unreadable, not UTF-8, not TOML, a value of the wrong type or
    out of range)."""
    path = pathlib.Path(path).resolve()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:   # TOMLDecodeError and bad UTF-8 are
        raise ConfigError(f"cannot read cluster file {path}: {exc}") from None   # ValueErrors
    base = path.parent

    def bad(what, value, wanted):
        raise ConfigError(f"{path}: {what} must be {wanted}, got {_brief(value)}")

    def table(value, what):
        return value if isinstance(value, dict) else bad(what, value, "a table")

    def integer(value, what, least, greatest):
        if type(value) is not int or not least <= value <= greatest:
            bad(what, value, f"an integer in [{least}, {greatest}]")
        return value

    def seconds(value, what):
        if type(value) not in (int, float) or not 0 < value <= threading.TIMEOUT_MAX:
            bad(what, value, "a positive number of seconds")
        return float(value)

    def text(value, what):
        if not isinstance(value, str) or not value or "\0" in value:
            bad(what, value, "a non-empty string")
        return value

    def file(value, what):
        if value is None:
            return None
        try:
            return (base / text(value, what)).resolve()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: {what}: {exc}") from None

    def endpoint(entry, what, party=True):
        entry = table(entry, what)
        unknown = set(entry) - {"rank", "host", "port", "cert", "key", "bind"}
        if unknown:
            raise ConfigError(f"{path}: unknown keys {sorted(unknown)} in {what}")
        missing = [k for k in ("rank", "host", "port")[0 if party else 1:] if k not in entry]
        if missing:
            raise ConfigError(f"{path}: {what} lacks {', '.join(missing)}")
        rank = integer(entry["rank"], f"{what} rank", 0, 1 << 20) if party else None
        bind = entry.get("bind")
        return Endpoint(rank, text(entry["host"], f"{what} host"),
                        integer(entry["port"], f"{what} port", 1, 65535),
                        file(entry.get("cert"), f"{what} cert"), file(entry.get("key"), f"{what} key"),
                        None if bind is None else text(bind, f"{what} bind"))

    cluster = table(data.get("cluster", {}), "[cluster]")
    unknown = set(cluster) - {"timeout", "connect_timeout", "tls", "ca", "max_frame_bytes",
                              "max_buffered_bytes", "dealer_idle_timeout", "insecure_fixed_seeds"}
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)} in [cluster]")
    fixed = cluster.get("insecure_fixed_seeds")
    if fixed is not None:
        try:
            fixed = bytes.fromhex(fixed)
        except (TypeError, ValueError):
            bad("[cluster] insecure_fixed_seeds", fixed, "64 hex digits")
    entries = data.get("party", [])
    if not isinstance(entries, list):
        bad("[[party]]", entries, "an array of tables")
    parties = sorted((endpoint(p, f"[[party]] #{i}") for i, p in enumerate(entries)),
                     key=lambda e: e.rank)
    dealer = endpoint(data["dealer"], "[dealer]", party=False) if "dealer" in data else None
    tls = cluster.get("tls", True)
    if type(tls) is not bool:
        bad("[cluster] tls", tls, "true or false")

    def option(key, default, check, *bounds):
        return check(cluster[key], f"[cluster] {key}", *bounds) if key in cluster else default

    values = (tuple(parties), dealer, file(cluster.get("ca"), "[cluster] ca"), tls,
              option("timeout", DEFAULT_TIMEOUT, seconds),
              option("connect_timeout", DEFAULT_TIMEOUT, seconds),
              option("max_frame_bytes", DEFAULT_MAX_FRAME_BYTES, integer, 1, 1 << 62), path,
              option("max_buffered_bytes", DEFAULT_MAX_BUFFERED_BYTES, integer, 1, 1 << 62),
              option("dealer_idle_timeout", DEFAULT_DEALER_IDLE_TIMEOUT, seconds), fixed)
    try:
        return ClusterConfig(*values)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def dump(config, path):
    """Write `config` as a cluster TOML file (absolute certificate paths)."""
    def entry(e):
        lines = [f'host = "{e.host}"', f"port = {e.port}"]
        lines += [f'{k} = "{v}"' for k, v in (("bind", e.bind), ("cert", e.cert), ("key", e.key))
                  if v is not None]
        return lines

    out = ["[cluster]", f"timeout = {config.timeout}", f"connect_timeout = {config.connect_timeout}",
           f"tls = {str(config.tls).lower()}", f"max_frame_bytes = {config.max_frame_bytes}",
           f"max_buffered_bytes = {config.max_buffered_bytes}",
           f"dealer_idle_timeout = {config.dealer_idle_timeout}"]
    if config.ca is not None:
        out.append(f'ca = "{config.ca}"')
    if config.insecure_fixed_seeds is not None:
        out.append(f'insecure_fixed_seeds = "{config.insecure_fixed_seeds.hex()}"')
    for p in config.parties:
        out += ["", "[[party]]", f"rank = {p.rank}"] + entry(p)
    if config.dealer is not None:
        out += ["", "[dealer]"] + entry(config.dealer)
    pathlib.Path(path).write_text("\n".join(out) + "\n")
    return pathlib.Path(path)
