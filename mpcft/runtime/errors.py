"""Errors raised by the party runtime.

Every failure a protocol can see (a peer that crashed, closed its session or sent a bad frame, a
step past its timeout, a refused certificate, a dealer error) is an `MPCRuntimeError`, whose
message names the peer and the step.
"""

# Exit status of a process that stopped only because a peer failed first (a party's session
# lost a peer, the dealer lost a party): `mpcft launch` names the process whose own error
# started it instead.
PEER_FAILED_STATUS = 3


class MPCRuntimeError(RuntimeError):
    """Base class of all runtime errors."""


class PeerError(MPCRuntimeError):
    """A peer crashed, closed its connection or its session, or broke the wire protocol."""


class FrameError(PeerError):
    """A peer sent a malformed, oversized or out-of-sequence frame."""


class MPCTimeoutError(MPCRuntimeError, TimeoutError):
    """A blocking step (connect, send, receive, dealer request) ran past its timeout."""


class CertificateError(MPCRuntimeError):
    """A TLS peer was refused: wrong, expired or missing certificate, or wrong identity."""


class ConfigError(MPCRuntimeError):
    """The cluster file or the environment is inconsistent."""


class DealerError(MPCRuntimeError):
    """The dealer could not answer a request (its handler raised)."""


class PartyFailed(MPCRuntimeError):
    """A party (thread or process) started by `run_threads`/`spawn` failed."""

    def __init__(self, rank, message, details=""):
        super().__init__(f"rank {rank} failed: {message}")
        self.rank = rank
        self.details = details


def failure_report(exc: BaseException) -> tuple[int, str]:
    """How a process that `exc` stopped ends: (exit status, one line for stderr). A plain
    PeerError means only a peer failed: PEER_FAILED_STATUS, so that `mpcft launch` names the
    process whose own error started it; anything else 1."""
    if type(exc) is PeerError:
        return PEER_FAILED_STATUS, f"PeerError: {exc} (stopping: a peer failed first)"
    return 1, f"{type(exc).__name__}: {exc}"
