"""Party runtime: sessions, transports (in-memory, TCP with mutual TLS), dealer, launcher.

    from mpcft.runtime import Session, run_threads, spawn
    def protocol(session, x):
        return session.all_gather(x)
    run_threads(protocol, 3, torch.arange(4))       # threads, in-memory
    spawn(protocol, 3, torch.arange(4))             # processes, loopback TCP + TLS

Programs started with `mpcft launch` or `mpcft party` get their session from `init()`.
"""
from .comm import CommSnapshot, CommStats, Counts
from .config import ClusterConfig, Endpoint
from .config import load as load_config
from .dealer import DEFAULT_HANDLER, DealerServer, DealerService
from .errors import (CertificateError, ConfigError, DealerError, FrameError, MPCRuntimeError,
                     MPCTimeoutError, PartyFailed, PeerError)
from .local import free_ports, local_cluster, run_threads, spawn
from .session import Session, init
from .tls import make_ca, make_cert, make_certs

__all__ = [
    "CertificateError", "ClusterConfig", "CommSnapshot", "CommStats", "ConfigError", "Counts",
    "DEFAULT_HANDLER", "DealerError", "DealerServer", "DealerService", "Endpoint", "FrameError",
    "MPCRuntimeError", "MPCTimeoutError", "PartyFailed", "PeerError", "Session", "free_ports", "init",
    "load_config", "local_cluster", "make_ca", "make_cert", "make_certs", "run_threads", "spawn",
]
