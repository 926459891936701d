"""The methods registry: every way of turning a step's verified rollouts into training rows.

A method is one module that registers one :class:`~sirl.methods.base.Method` (its credit function and
what the loop needs to know about it) under its name; ``sirl train --algo NAME`` looks it up here, and
nothing else in sirl compares method names. An unknown name is an error that lists the valid ones (the
shape of verl's ``register_adv_est``). Its settings class, the config section ``method.<name>``, is in
:mod:`sirl.methods.settings` with its name, the registry's light half: the config reads it without
importing any method (or torch); the method modules are imported on the first use of the registry.

    @register
    def my_method() -> Method: ...   # in sirl/methods/my_method.py, then one import line in load()
"""

from sirl.methods.settings import SETTINGS

__all__ = ["METHODS", "SETTINGS", "Method", "MethodContext", "MethodMemory", "get_method", "load", "register"]
_REGISTRY = ("METHODS", "Method", "MethodContext", "MethodMemory", "get_method", "register")


def load() -> None:
    """Import every method module; importing one registers its methods. One line per method module."""
    from sirl.methods import outcome, prime, random_reset, si, si_internal, tree, tree_branch, vine  # noqa: F401


def __getattr__(name: str):
    """The registry's objects (sirl.methods.base), with every method registered, on first use."""
    if name in _REGISTRY:
        load()
        from sirl.methods import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
