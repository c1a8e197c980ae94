"""Party programs for protocol tests: module-level so that `spawn` can run them in processes.

Inputs are passed to every party for convenience, but only the owner's copy is ever read
(others hand None to the protocols), exactly as real data owners would.
"""
import functools
import operator

from mpcft.protocols import beaver, fixed, sharing
from mpcft.protocols.context import MPCContext
from mpcft.protocols.truncation import truncate
from mpcft.tensor import SharedTensor, cat, stack



def owned(ctx, value, owner):
    return SharedTensor.from_plain(ctx, value if ctx.rank == owner else None, owner,
                                   shape=value.shape)


def measured(session, fn):
    """Run fn(); return its result and the (rounds, bytes_sent) it cost this party."""
    before = session.comm.snapshot()
    out = fn()
    delta = session.comm.snapshot() - before
    return out, (delta.rounds, delta.bytes_sent)


def all_operations(session, x, y, w, b, device=None):
    """Every SharedTensor operation on x (party 0's), y (party n-1's), public w and b."""
    ctx = MPCContext(session, device=device)
    n = session.world_size
    X, Y = owned(ctx, x, 0), owned(ctx, y, n - 1)
    out, costs = {}, {}
    out["add"] = (X + Y).reveal()
    out["sub"] = (X - Y).reveal()
    out["neg"] = (-X).reveal()
    out["add_public"] = (X + b).reveal()
    out["rsub_public"] = (b - X).reveal()
    out["mul_int"] = (X * 3).reveal()
    out["mul_public"] = (X * w[0]).reveal()
    prod, costs["mul"] = measured(session, lambda: X * Y)
    out["mul"] = prod.reveal()
    out["mul_broadcast"] = (X * Y[:1]).reveal()
    out["square"] = X.square().reveal()
    out["matmul_public"] = (X @ w.T).reveal()
    out["rmatmul_public"] = (w @ X.T).reveal()
    mm, costs["matmul"] = measured(session, lambda: X @ Y.T)
    out["matmul"] = mm.reveal()
    out["sum0"] = X.sum(0).reveal()
    out["sum_all"] = X.sum().reveal()
    out["mean1"] = X.mean(1, keepdim=True).reveal()
    out["div"] = (X / 4.0).reveal()
    out["reshape_t"] = X.reshape(-1, 2).transpose(0, 1).reveal()
    out["index"] = X[1:3, ::2].reveal()
    out["cat"] = cat([X, Y], 1).reveal()
    out["stack"] = stack([X, Y]).permute(1, 0, 2).reveal()
    out["unsqueeze_expand"] = X[0].unsqueeze(0).expand(3, -1).reveal()
    out["reveal_to_last"] = X.reveal_to(n - 1)
    announced = SharedTensor.from_plain(ctx, x if ctx.rank == 1 else None, owner=1)
    out["announced_shape"] = announced.reveal()
    _, costs["open"] = measured(session, lambda: X.reveal())
    _, costs["truncate"] = measured(session, lambda: truncate(ctx, X.share))
    _, costs["share"] = measured(session, lambda: owned(ctx, x, 0))
    return out, costs


def batched_attention(session, q, k, device=None):
    """Shared x shared batched product of attention shape, q from party 0, k from party 1."""
    ctx = MPCContext(session, device=device)
    Q, K = owned(ctx, q, 0), owned(ctx, k, 1)
    scores, cost = measured(session, lambda: Q @ K)
    return scores.reveal(), cost


def fixed_matmuls(session, x, y, device=None):
    """fixed.matmul and sharing.open_many on x (party 0's) and y (party n-1's): revealed, with costs."""
    ctx = MPCContext(session, device=device)
    X, Y = owned(ctx, x, 0), owned(ctx, y, session.world_size - 1)
    product, cost = measured(session, lambda: fixed.matmul(ctx, X.share, Y.share))
    opened, open_cost = measured(session, lambda: sharing.open_many(ctx, [product, X.share]))
    return [ctx.fp.decode(t) for t in opened], cost, open_cost


def truncation_trials(session, x_ring, bits, device=None):
    """Share ring values held by party 0, truncate, open: the raw ring outputs."""
    ctx = MPCContext(session, device=device)
    share = sharing.share(ctx, x_ring if ctx.rank == 0 else None, 0, x_ring.shape)
    return sharing.open_(ctx, truncate(ctx, share, bits))


def ring_products(session, x_ring, y_ring, batched, device=None):
    """Exact ring Beaver products (no truncation) and their measured costs."""
    ctx = MPCContext(session, device=device)
    n = session.world_size
    xs = sharing.share(ctx, x_ring if ctx.rank == 0 else None, 0, x_ring.shape)
    ys = sharing.share(ctx, y_ring if ctx.rank == n - 1 else None, n - 1, y_ring.shape)
    op = beaver.matmul if batched else beaver.mul
    z, cost = measured(session, lambda: op(ctx, xs, ys))
    return sharing.open_(ctx, z), cost



def products_with_grads(session, x_ring, y_ring, g_ring, grad_x, grad_y):
    """beaver.MatmulWithGrads of x (party 0's) and y (party n-1's), backward on g (party 0's):
    the opened x @ y, g y^T, x^T g (None where not asked) and the measured costs."""
    ctx = MPCContext(session)
    n = session.world_size
    xs = sharing.share(ctx, x_ring if ctx.rank == 0 else None, 0, x_ring.shape)
    ys = sharing.share(ctx, y_ring if ctx.rank == n - 1 else None, n - 1, y_ring.shape)
    gs = sharing.share(ctx, g_ring if ctx.rank == 0 else None, 0, g_ring.shape)
    product, forward = measured(session, lambda: beaver.MatmulWithGrads(ctx, xs, ys, grad_x, grad_y))
    grads, backward = measured(session, lambda: product.backward(gs))
    return ([sharing.open_(ctx, t) if t is not None else None for t in (product.out, *grads)],
            forward, backward)


def masked_factor_products(session, x_ring, y_ring, z_ring):
    """beaver.MaskedFactor of x (party 0's) times y and z (party n-1's) and squared: the opened
    x y, x^2, x z and each use's measured cost."""
    ctx = MPCContext(session)
    n = session.world_size
    xs = sharing.share(ctx, x_ring if ctx.rank == 0 else None, 0, x_ring.shape)
    ys, zs = (sharing.share(ctx, t if ctx.rank == n - 1 else None, n - 1, t.shape) for t in (y_ring, z_ring))
    factor = beaver.MaskedFactor(ctx, xs, [y_ring.shape, z_ring.shape], square=True)
    results = [measured(session, use) for use in (lambda: factor.times(ys), factor.square, lambda: factor.times(zs))]
    return [sharing.open_(ctx, t) for t, _ in results], [cost for _, cost in results]


def masked_factor_transcript(session, x, y, z):
    """Every party's view of a MaskedFactor of x (party 0's) with y and z (party 1's), squared."""
    recording = RecordingSession(session)
    ctx = MPCContext(recording)
    X, Y, Z = owned(ctx, x, 0), owned(ctx, y, 1), owned(ctx, z, 1)
    start = len(recording.received)
    factor = beaver.MaskedFactor(ctx, X.share, [y.shape, z.shape], square=True)
    factor.times(Y.share), factor.square(), factor.times(Z.share)
    return [t.reshape(-1) for t in recording.received[start:]]


def product_grads_transcript(session, x, y, g):
    """Every party's view of a MatmulWithGrads of x (party 0's) and y (party 1's) and its backward
    on g (party 0's)."""
    recording = RecordingSession(session)
    ctx = MPCContext(recording)
    X, Y, G = owned(ctx, x, 0), owned(ctx, y, 1), owned(ctx, g, 0)
    start = len(recording.received)
    beaver.MatmulWithGrads(ctx, X.share, Y.share, True, True).backward(G.share)
    return [t.reshape(-1) for t in recording.received[start:]]


class RecordingSession:
    """A session proxy that keeps every tensor this party receives from others (its view)."""

    def __init__(self, session):
        self._session = session
        self.received = []

    def __getattr__(self, name):
        return getattr(self._session, name)

    def all_gather(self, tensor):
        out = self._session.all_gather(tensor)
        self.received += [t for r, t in enumerate(out) if r != self._session.rank]
        return out

    def gather(self, tensor, root):
        out = self._session.gather(tensor, root)
        if out is not None:
            self.received += [t for r, t in enumerate(out) if r != self._session.rank]
        return out

    def broadcast(self, tensor, root):
        out = self._session.broadcast(tensor, root)
        if root != self._session.rank:
            self.received.append(out)
        return out

    def exchange(self, tensors):
        out = self._session.exchange(tensors)
        self.received += list(out.values())
        return out


def transcript(session, x, y, opening="all"):
    """Party 0 inputs x, party 1 inputs y; multiply, matmul, truncate, powers; every party's view."""
    from mpcft.protocols import fixed
    recording = RecordingSession(session)
    ctx = MPCContext(recording, opening=opening)
    X = owned(ctx, x, 0)
    Y = owned(ctx, y, 1)
    X * Y
    X @ Y.T
    X.square()
    fixed.powers(ctx, X.share, 4, 5)
    return [t.reshape(-1) for t in recording.received]


def gate_transcript(session, x, y):
    """A SignGate on [x < 0] truncating y << 20: every party's view of the truncation round
    (the comparison's own openings are low bytes of uniform values, tested apart)."""
    from mpcft.protocols.comparison import SignGate
    recording = RecordingSession(session)
    ctx = MPCContext(recording)
    X, Y = owned(ctx, x, 0), owned(ctx, y, 1)
    gate = SignGate(ctx, X.share, 32, [20])
    start = len(recording.received)
    gate.truncate([Y.share << 20])
    return [t.reshape(-1) for t in recording.received[start:]]


def select_times_transcript(session, x, y):
    """A Select on [x < 0] (x party 0's) multiplying y (party 1's) later: every party's view
    of the times() round."""
    from mpcft.protocols.comparison import Select
    recording = RecordingSession(session)
    ctx = MPCContext(recording)
    X, Y = owned(ctx, x, 0), owned(ctx, y, 1)
    select = Select(ctx, X.share, 32, later=1)
    start = len(recording.received)
    select.times(Y.share)
    return [t.reshape(-1) for t in recording.received[start:]]


def select_times(session, x, ys, resolution_bits):
    """Select of party 0's x with len(ys) later products by party n-1's ys: the opened bit,
    each y [x < 0] (ring units) and the measured cost of each times()."""
    from mpcft.protocols.comparison import Select
    ctx = MPCContext(session)
    X = owned(ctx, x, 0)
    select = Select(ctx, X.share, 32, resolution_bits=resolution_bits, later=len(ys))
    products, costs = [], []
    for y in ys:
        Y = owned(ctx, y, session.world_size - 1)
        product, cost = measured(session, lambda: select.times(Y.share))
        products.append(sharing.open_(ctx, product))
        costs.append(cost)
    return sharing.open_(ctx, select.bit), products, costs


def threshold_scale(session, x, v, thresholds, shifts):
    """comparison.ThresholdScale of party 0's x, truncating party n-1's v (raw ring values):
    the opened below, x_below (decoded), the scaled v (ring) and the measured cost."""
    from mpcft.protocols.comparison import ThresholdScale
    ctx = MPCContext(session)
    X, V = owned(ctx, x, 0), owned(ctx, v, session.world_size - 1)
    scale, first = measured(session, lambda: ThresholdScale(ctx, X.share, thresholds, 32, shifts))
    out, second = measured(session, lambda: scale.truncate(V.share))
    cost = (first[0] + second[0], first[1] + second[1])
    return (sharing.open_(ctx, scale.below), ctx.fp.decode(sharing.open_(ctx, scale.x_below)),
            sharing.open_(ctx, out), cost)


def threshold_scale_transcript(session, x, v):
    """Every party's view of a ThresholdScale's truncation round (x party 0's, v party 1's)."""
    from mpcft.protocols.comparison import ThresholdScale
    recording = RecordingSession(session)
    ctx = MPCContext(recording)
    X, V = owned(ctx, x, 0), owned(ctx, v, 1)
    scale = ThresholdScale(ctx, X.share, [1.0, 4.0], 32, [20, 21, 23])
    start = len(recording.received)
    scale.truncate(V.share << 20)
    return [t.reshape(-1) for t in recording.received[start:]]


def coarse_sign_transcript(session, x, bits, resolution_bits):
    """The first round of a coarse select_negative of x (party 0's): every party's view, as
    the low 16 bits of each value's masked, shifted share (open_low's bytes: the opened
    width, bits - resolution_bits + 1, is 17 to 24 here) and the x - a openings."""
    from mpcft.protocols.comparison import select_negative
    recording = RecordingSession(session)
    ctx = MPCContext(recording)
    X = owned(ctx, x, 0)
    start = len(recording.received)
    select_negative(ctx, X.share, bits, resolution_bits=resolution_bits)
    first, numel = recording.received[start], x.numel()
    low = first[:3 * numel].reshape(numel, 3)[:, :2].contiguous()      # 3 bytes a value
    return [low.reshape(-1), first[3 * numel:]]


def signs_with_digits(session, x, bits, digit_bits):
    """sign_bit and select_negative with the given digit width: opened results and sign_bit's cost."""
    from mpcft.protocols import comparison
    ctx = MPCContext(session)
    X = owned(ctx, x, 0)
    s, cost = measured(session, lambda: comparison.sign_bit(ctx, X.share, bits, digit_bits))
    negative, _ = comparison.select_negative(ctx, X.share, bits, digit_bits)
    return sharing.open_(ctx, s), ctx.fp.decode(sharing.open_(ctx, negative)), cost


def many_ands(session, words, monomials):
    """binary.and_products on XOR shares of `words` [K, W] dealt by party 0: the opened products
    and their cost."""
    from mpcft.kernels import PRG, fresh_seed
    from mpcft.protocols import binary
    ctx = MPCContext(session)
    share = PRG(fresh_seed()).ring(words.shape)                 # XOR shares: party 0 holds the rest
    others = session.all_gather(share)
    mine = functools.reduce(operator.xor, others, words) ^ share if session.rank == 0 else share
    z, cost = measured(session, lambda: binary.and_products(ctx, mine, monomials))
    return binary.open_bits(ctx, z), cost


def coarse_maxima(session, x, y, bits, resolution_bits):
    """Coarse select_negative's bit, maximum and max_along (ring units, opened) and max_along's cost."""
    from mpcft.protocols import comparison
    ctx = MPCContext(session)
    X, Y = owned(ctx, x, 0), owned(ctx, y, session.world_size - 1)
    _, s = comparison.select_negative(ctx, X.share - Y.share, bits, resolution_bits=resolution_bits)
    top = comparison.maximum(ctx, X.share, Y.share, bits, resolution_bits)
    best, cost = measured(session, lambda: comparison.max_along(ctx, X.share, -1, bits, resolution_bits))
    return [sharing.open_(ctx, v) for v in (s, top, best)], cost


def activations(session, x):
    """GELU with its derivative and tanh of x (party 0's), decoded."""
    from mpcft.protocols import activations as A
    ctx = MPCContext(session)
    X = owned(ctx, x, 0).share
    dec = lambda s: ctx.fp.decode(sharing.open_(ctx, s))
    gelu, grad = A.gelu(ctx, X, with_grad=True)
    return dec(gelu), dec(grad), dec(A.tanh(ctx, X))


def count_reciprocal(session, counts, most):
    """count_reciprocal of integer counts (party 0's): the opened values and the cost."""
    from mpcft.protocols.reciprocal import count_reciprocal as reciprocal_of_counts
    ctx = MPCContext(session)
    k = SharedTensor.from_plain(ctx, counts if ctx.rank == 0 else None, 0, tuple(counts.shape), frac_bits=0)
    inverse, cost = measured(session, lambda: reciprocal_of_counts(ctx, k.share, most))
    return ctx.fp.decode(sharing.open_(ctx, inverse)), cost


def products(ctx, x, y):
    X, Y = owned(ctx, x, 0), owned(ctx, y, 1)
    return [(X * Y).reveal(), (X @ Y.T).reveal(), X.square().reveal()]


def record_plan(session, x, y):
    """Run with the dealer and record the correlation plan."""
    from mpcft.protocols.sources import DealerCorrelations, RecordingCorrelations
    recorder = RecordingCorrelations(DealerCorrelations(session))
    out = products(MPCContext(session, correlations=recorder), x, y)
    return out, recorder.plan


def run_offline(session, x, y, folder):
    """Run from pre-generated correlation files, with no dealer at all."""
    from mpcft.protocols.sources import FileCorrelations
    files = FileCorrelations(f"{folder}/party-{session.rank}.corr", session.rank)
    return products(MPCContext(session, correlations=files), x, y)


GATES = [10, 5]   # SignGate's shifts in `comparisons`: y << 10 and x truncated by them


def comparisons(session, x, y, bits, device=None):
    """sign, relu, maximum and max_along on fixed-point inputs; raw ring results and costs."""
    from mpcft.protocols import comparison
    ctx = MPCContext(session, device=device)
    X, Y = owned(ctx, x, 0), owned(ctx, y, session.world_size - 1)
    out, costs = {}, {}
    s, costs["sign"] = measured(session, lambda: comparison.sign_bit(ctx, X.share, bits))
    out["sign"] = sharing.open_(ctx, s)
    r, costs["relu"] = measured(session, lambda: comparison.relu(ctx, X.share, bits))
    out["relu"] = ctx.fp.decode(sharing.open_(ctx, r))
    out["maximum"] = ctx.fp.decode(sharing.open_(ctx, comparison.maximum(ctx, X.share, Y.share, bits)))
    m, costs["max_along"] = measured(session, lambda: comparison.max_along(ctx, X.share, -1, bits))
    out["max_along"] = ctx.fp.decode(sharing.open_(ctx, m))
    out["max_dim0"] = ctx.fp.decode(sharing.open_(ctx, comparison.max_along(ctx, X.share, 0, bits)))
    lo, hi = clamp_bounds(x)
    c, costs["clamp"] = measured(session, lambda: comparison.clamp(ctx, X.share, lo, hi, bits))
    out["clamp"] = ctx.fp.decode(sharing.open_(ctx, c))
    t = threshold_values(x)
    (below, x_below), costs["below"] = measured(session, lambda: comparison.below_thresholds(ctx, X.share, t, bits))
    out["below"], out["x_below"] = sharing.open_(ctx, below), ctx.fp.decode(sharing.open_(ctx, x_below))
    gate, costs["gate"] = measured(session, lambda: comparison.SignGate(ctx, X.share, bits, GATES))
    gated, costs["gate_truncate"] = measured(session, lambda: gate.truncate([Y.share << GATES[0], X.share]))
    out["gate_bit"] = sharing.open_(ctx, gate.bit)
    out["gated"] = [sharing.open_(ctx, g) for g in gated]
    return out, costs


def threshold_values(x):
    """Public thresholds across x's range, an encoded x among them."""
    scale = x.abs().max().item()
    return [-scale / 2, 0.0, x.reshape(-1)[5].item(), scale / 4]


def clamp_bounds(x):
    """Public clamp bounds inside x's range, so that values fall on both sides of each."""
    scale = x.abs().max().item()
    return -scale / 3, scale / 2


WIDE_INV_SQRT = (384 * 1e-4, 384 * 1e4, 44)     # LayerNorm's inv_sqrt range and width, d = 384


def nonlinear(session, inputs, device=None):
    """Every non-linear function on its own input (party 0's); decoded outputs and costs."""
    from mpcft.protocols import activations, exponential, layernorm, reciprocal, softmax
    ctx = MPCContext(session, device=device)
    shared = {name: owned(ctx, value, 0).share for name, value in inputs.items()}
    dec = lambda s: ctx.fp.decode(sharing.open_(ctx, s))
    out, rounds = {}, {}

    def run(name, fn):
        result, rounds[name] = measured(session, fn)
        out[name] = [dec(t) for t in result] if isinstance(result, tuple) else dec(result)

    run("exp", lambda: exponential.exp(ctx, shared["exp"]))
    run("exp_clamped", lambda: exponential.exp(ctx, shared["exp_wide"], clamp=True))
    run("reciprocal", lambda: reciprocal.reciprocal(ctx, shared["reciprocal"]))
    run("inv_sqrt", lambda: reciprocal.inv_sqrt(ctx, shared["inv_sqrt"]))
    run("reciprocal_many", lambda: reciprocal.reciprocal(ctx, shared["reciprocal_many"]))
    for name in ("inv_sqrt_wide", "inv_sqrt_wide_many"):
        run(name, lambda: reciprocal.inv_sqrt(ctx, shared[name], *WIDE_INV_SQRT, multiplier=384 ** 0.5))
    run("log", lambda: reciprocal.log(ctx, shared["log"]))
    run("gelu", lambda: activations.gelu(ctx, shared["gelu"], with_grad=True))
    run("tanh", lambda: activations.tanh(ctx, shared["gelu"]))
    run("sigmoid", lambda: activations.sigmoid(ctx, shared["gelu"]))
    run("softmax", lambda: softmax.softmax(ctx, shared["softmax"]))
    run("softmax_masked", lambda: softmax.softmax(ctx, shared["softmax"], mask=inputs["mask"]))
    secret_mask = sharing.share(ctx, inputs["mask"].long() if ctx.rank == 0 else None, 0, inputs["mask"].shape)
    run("softmax_secret_mask", lambda: softmax.softmax(ctx, shared["softmax"], clamp=True, shared_mask=secret_mask))
    y = softmax.softmax(ctx, shared["softmax"])
    run("softmax_backward", lambda: softmax.softmax_backward(ctx, y, shared["softmax_grad"]))
    run("layernorm", lambda: layernorm.layernorm(ctx, shared["layernorm"]))
    xhat, rstd = layernorm.layernorm(ctx, shared["layernorm"])
    run("layernorm_backward", lambda: layernorm.layernorm_backward(ctx, shared["layernorm_grad"], xhat, rstd))
    run("cross_entropy", lambda: softmax.cross_entropy(ctx, shared["logits"], shared["labels"], with_loss=True))
    return out, rounds


def tensor_nonlinear(session, x, device=None):
    """The SharedTensor surface of the non-linear protocols."""
    ctx = MPCContext(session, device=device)
    X = owned(ctx, x, 0)
    P = owned(ctx, x.abs() + 0.5, 0)
    return {"relu": X.relu().reveal(), "max": X.max(0).reveal(), "lt_zero": X.lt_zero().reveal(),
            "exp": (X - 3).exp().reveal(), "reciprocal": P.reciprocal().reveal(),
            "rsqrt": P.rsqrt().reveal(), "log": P.log().reveal(), "gelu": X.gelu().reveal(),
            "tanh": X.tanh().reveal(), "sigmoid": X.sigmoid().reveal(),
            "softmax": X.softmax(0).reveal()}


def powers_program(session, x, degree, device=None):
    """fixed.powers of party 0's x (given at 2f bits, truncated by f): decoded powers and the
    measured cost."""
    from mpcft.kernels import FixedPoint
    from mpcft.protocols import fixed
    ctx = MPCContext(session, device=device)
    X = owned(ctx, x, 0)
    (out, _), cost = measured(session, lambda: fixed.powers(ctx, X.share << ctx.frac_bits, ctx.frac_bits, degree))
    scales = [ctx.fp] + [FixedPoint(2 * ctx.frac_bits)] * (degree - 1)
    return [fp.decode(sharing.open_(ctx, p)) for fp, p in zip(scales, out)], cost


def fused_truncations(session, xs, bits, pairs, device=None):
    """FusedTruncations on party 0's ring values xs[i] (one round each, in index order): the
    opened truncations, the opened products of every pair and the measured cost."""
    from mpcft.protocols.truncation import FusedTruncations
    ctx = MPCContext(session, device=device)
    shares = [sharing.share(ctx, x if ctx.rank == 0 else None, 0, x.shape) for x in xs]
    def run():
        fused = FusedTruncations(ctx, xs[0].shape, bits, pairs)
        return [fused.truncate({i: s})[0] for i, s in enumerate(shares)], [fused.product(i, j) for i, j in pairs]
    (ys, prods), cost = measured(session, run)
    return [sharing.open_(ctx, y) for y in ys], [sharing.open_(ctx, p) for p in prods], cost


def prefetching(session, x, y, device=None):
    """Steps that ask the dealer ahead for the last plan of their name (ctx.step): a first
    "product" step (nothing to prefetch), one as predicted, a wrong guess before an "other"
    step (its answers wait for their layouts), the same products outside any step (they use
    them), then a prefetch that is never used (drained at close). Also returns how many
    answers party 0 holds ahead after each phase."""
    ctx = MPCContext(session, device=device)
    source = ctx.correlations
    X, Y = owned(ctx, x, 0), owned(ctx, y, 1)
    pending = []
    with ctx.step("product"):
        first = (X * Y + X.square()).reveal()
    pending.append(source.pending_prefetch)
    with ctx.step("product"):                             # as predicted
        pending.append(source.pending_prefetch)           # asked for at the step's start
        again = (X * Y + X.square()).reveal()
    pending.append(source.pending_prefetch)
    source.prefetch(source.last_plan("product"))             # a wrong guess: it waits for its layouts
    with ctx.step("other"):
        other = (X @ Y.T).reveal()
    pending.append(source.pending_prefetch)
    later = (X * Y + X.square()).reveal()                 # the waiting answers are used
    pending.append(source.pending_prefetch)
    with ctx.step("product"):
        pass                                              # prefetched, never used: drained at close
    return first, again, other, later, pending if session.rank == 0 else None


def nested_steps(session):
    """The error of a step started inside another."""
    ctx = MPCContext(session)
    with ctx.step("outer"):
        try:
            with ctx.step("inner"):
                pass
        except RuntimeError as exc:
            return str(exc)
