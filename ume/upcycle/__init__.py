"""Dense -> MoE upcycling: `convert` maps the weights, `verify` checks the upcycled model
reproduces the dense one, `cli` is `ume upcycle`.

Example:
    >>> from ume.upcycle import upcycle_experiment
    >>> report = upcycle_experiment("runs/dense", "runs/moe8", experts=8, top_k=2)
"""

import sys as _sys
import types as _types

from ume.upcycle.convert import UpcycleError, upcycle_experiment, upcycle_state_dict

__all__ = ["UpcycleError", "upcycle_experiment", "upcycle_state_dict"]


# `ume.upcycle(model, ...)` is the public any-model function (ume/upcycle/any_model.py,
# re-exported by ume/api.py) and `ume.upcycle` is also this package (Python binds a subpackage
# as an attribute of its parent on import, which would hide a function of the same name), so
# the package itself is made callable. It calls down into its own module, never up into ume.api.
class _CallablePackage(_types.ModuleType):
    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
        """Same as ume.upcycle.any_model.upcycle: see its docstring."""
        from ume.upcycle.any_model import upcycle

        return upcycle(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallablePackage
