"""The methods registry: every way of turning a step's verified rollouts into training rows.

A method is one module that registers one :class:`~sirl.methods.base.Method` (its credit function and
what the loop needs to know about it) under its name; ``sirl train --algo NAME`` looks it up here, and
nothing else in sirl compares method names. An unknown name is an error that lists the valid ones (the
shape of verl's ``register_adv_est``).

    @register
    def my_method() -> Method: ...   # in sirl/methods/my_method.py, then one import line below
"""

from sirl.methods.base import METHODS, Method, MethodContext, MethodMemory, get_method, register

# One line per method module; importing it registers its methods.
from sirl.methods import outcome, prime, random_reset, si, si_internal, tree, tree_branch, vine  # noqa: E402,F401

__all__ = ["METHODS", "Method", "MethodContext", "MethodMemory", "get_method", "register"]
