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
import tomllib

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
        if self.tls:
            endpoints = self.parties + ((self.dealer,) if self.dealer else ())
            missing = [e.name for e in endpoints if e.cert is None or e.key is None]
            if self.ca is None or missing:
                raise ConfigError("tls = true needs `ca` and a cert and key for "
                                  + (", ".join(missing) or "every endpoint"))


def load(path):
    """Read and check a cluster TOML file."""
    path = pathlib.Path(path).resolve()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read cluster file {path}: {exc}") from None
    base = path.parent

    def file(value):
        return None if value is None else (base / value).resolve()

    def endpoint(entry, rank, what):
        unknown = set(entry) - {"rank", "host", "port", "cert", "key", "bind"}
        if unknown:
            raise ConfigError(f"{path}: unknown keys {sorted(unknown)} in {what}")
        try:
            return Endpoint(rank, str(entry["host"]), int(entry["port"]), file(entry.get("cert")),
                            file(entry.get("key")), entry.get("bind"))
        except KeyError as exc:
            raise ConfigError(f"{path}: {what} lacks {exc}") from None

    cluster = data.get("cluster", {})
    unknown = set(cluster) - {"timeout", "connect_timeout", "tls", "ca", "max_frame_bytes",
                              "max_buffered_bytes", "dealer_idle_timeout"}
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)} in [cluster]")
    parties = sorted((endpoint(p, int(p.get("rank", -1)), f"[[party]] #{i}")
                      for i, p in enumerate(data.get("party", []))), key=lambda e: e.rank)
    dealer = endpoint(data["dealer"], None, "[dealer]") if "dealer" in data else None
    return ClusterConfig(
        tuple(parties), dealer, file(cluster.get("ca")), bool(cluster.get("tls", True)),
        float(cluster.get("timeout", DEFAULT_TIMEOUT)),
        float(cluster.get("connect_timeout", DEFAULT_TIMEOUT)),
        int(cluster.get("max_frame_bytes", DEFAULT_MAX_FRAME_BYTES)), path,
        int(cluster.get("max_buffered_bytes", DEFAULT_MAX_BUFFERED_BYTES)),
        float(cluster.get("dealer_idle_timeout", DEFAULT_DEALER_IDLE_TIMEOUT)))


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
    for p in config.parties:
        out += ["", "[[party]]", f"rank = {p.rank}"] + entry(p)
    if config.dealer is not None:
        out += ["", "[dealer]"] + entry(config.dealer)
    pathlib.Path(path).write_text("\n".join(out) + "\n")
    return pathlib.Path(path)
