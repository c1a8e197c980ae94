"""One party's view of an MPC computation.

MPCContext bundles what the protocol functions need and nothing global: the party's session
(rank, world size, exchanges with the other parties), the fixed-point codec, the source of
dealer correlations, and pairwise PRGs for inputs. Several contexts can live in one process.
"""
import torch

from mpcft.kernels import DEFAULT_FRACTIONAL_BITS, PRG, FixedPoint, derive_seed

from .cost import check_opening
from .sources import CorrelationSource, DealerCorrelations


class MPCContext:
    """device: where shares live (default CPU). With "cuda", correlations and input shares
    are drawn on the CPU (the same AES streams) and moved there; the session moves opened
    values through pinned host memory; ring products run on the GPU (kernels.digit_matmul).

    opening: how shares are opened to all (sharing.open_, open_many, open_low, binary.open_bits),
    the same at every party. "all" (default): each party sends its share to the n-1 others, 1
    round, (n-1) N elements sent per party. "king": reduce-scatter then all-gather: party j
    receives chunk j (of n) of every share, sums and returns it, 2 rounds, 2 (n-1) ceil(N / n)
    elements; fewer bytes from 3 parties on, one more round per opening. Both reveal exactly
    the opened values, bit for bit the same in both. A cost formula `c` of "all" mode
    becomes c.with_opening("king") (protocols/cost.py)."""

    def __init__(self, session, *, frac_bits: int = DEFAULT_FRACTIONAL_BITS,
                 correlations: CorrelationSource | None = None, device=None, opening: str = "all"):
        check_opening(opening)
        self.opening = opening
        self.session = session
        self.device = torch.device(device or "cpu")
        self.rank = session.rank
        self.world_size = session.world_size
        self.fp = FixedPoint(frac_bits)
        self.correlations = correlations if correlations is not None else DealerCorrelations(session)
        self._pair_prgs: dict[tuple[int, int], PRG] = {}
        self.epoch = 0

    @property
    def frac_bits(self) -> int:
        return self.fp.frac_bits

    def public(self, value, shape=None, frac_bits: int | None = None) -> torch.Tensor:
        """This party's share of the public `value` (a number, array or tensor) encoded with
        `frac_bits` fractional bits (default f; 0 for integers): the encoding at party 0,
        zeros elsewhere, on this context's device (expanded to `shape` when given)."""
        fp = self.fp if frac_bits is None else FixedPoint(frac_bits)
        value = value if isinstance(value, torch.Tensor) else torch.as_tensor(value, dtype=torch.float64)
        encoded = fp.encode(value).to(self.device)
        if shape is not None:
            encoded = encoded.expand(shape).contiguous()
        return encoded if self.rank == 0 else torch.zeros_like(encoded)

    def input_prg(self, owner: int, holder: int) -> PRG:
        """The PRG from which `holder` draws its share of `owner`'s inputs (one of them is us).

        Seeded from the pair's secret seed and the key epoch, so owner and holder draw the same stream.
        """
        if self.rank not in (owner, holder) or owner == holder:
            raise ValueError(f"party {self.rank} holds no input stream for pair ({owner}, {holder})")
        key = (owner, holder)
        if key not in self._pair_prgs:
            peer = holder if self.rank == owner else owner
            self._pair_prgs[key] = PRG(derive_seed(self.session.pair_seed(peer), "input", owner, holder,
                                                            self.epoch))
        return self._pair_prgs[key]

    def step(self, name: str = "step"):
        """`with ctx.step("train"):` one unit of repeating work (a training step, an evaluation
        batch): the correlation source may prepare it, e.g. ask the dealer ahead for the
        requests of the last step of that name (protocols/sources.py)."""
        return self.correlations.step(name)

    def new_epoch(self, epoch: int) -> None:
        """Move every stream of this party to key epoch `epoch`, between steps and at every party
        at the same point (a checkpoint): input and correlation streams restart from keys bound
        to the epoch, so a run resumed there draws what an uninterrupted one draws, and the
        dealer, which refuses earlier epochs, never answers a correlation twice."""
        self.correlations.new_epoch(epoch)
        self.epoch = epoch
        self._pair_prgs.clear()

    def correlation(self, kind: str, **params):
        """This party's shares of the next correlation of `kind` (a correlations.Correlation)."""
        correlation = self.correlations.get(kind, **params)
        if self.device.type == "cpu":
            return correlation
        return correlation.to(self.device)
