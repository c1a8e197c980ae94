"""mpcft: secure multi-party computation for private Transformer fine-tuning.

    import mpcft
    with mpcft.init() as session:                 # a process started by `mpcft launch`/`party`
        ctx = mpcft.MPCContext(session)
        x = mpcft.SharedTensor.from_plain(ctx, value, 0, shape=(4,))
"""
from mpcft.protocols.context import MPCContext
from mpcft.runtime import init
from mpcft.tensor import SharedTensor

__all__ = ["MPCContext", "SharedTensor", "init"]
