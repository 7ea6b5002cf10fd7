"""Dense -> MoE upcycling: `convert` maps the weights, `verify` checks the upcycled model
reproduces the dense one, `cli` is `ume upcycle`.

Example:
    >>> from ume.upcycle import upcycle_experiment
    >>> report = upcycle_experiment("runs/dense", "runs/moe8", experts=8, top_k=2)
"""

from ume.upcycle.convert import UpcycleError, upcycle_experiment, upcycle_state_dict

__all__ = ["UpcycleError", "upcycle_experiment", "upcycle_state_dict"]
