"""The model registry: architectures register by name, callers create by name.

Registering needs the architecture's module imported, and those import torch, so
this module keeps only names; `mai_train.models` imports the architectures. New
architectures join by decorating a factory with `@register_model` in a module
listed in `mai_train.models`; no caller changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mai.errors import MaiError

_FACTORIES: dict[str, Callable[..., Any]] = {}


class UnknownModelError(MaiError, KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want a sentence
        return str(self.args[0])


def register_model(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register an architecture factory under its function name."""
    if fn.__name__ in _FACTORIES:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _FACTORIES[fn.__name__] = fn
    return fn


def _load_architectures() -> None:
    import mai_train.models  # noqa: F401  (registers the architectures)


def list_models() -> list[str]:
    _load_architectures()
    return sorted(_FACTORIES)


def default_spec(name: str) -> Any:
    """The preprocess spec an architecture is trained with unless told otherwise:
    its factory's `preprocess` attribute, else the CIFAKE recipe (the MAI CNN's)."""
    _load_architectures()
    if name not in _FACTORIES:
        create_model(name)  # raises the error that lists the known names
    from mai.preprocess import CIFAKE_SPEC

    return getattr(_FACTORIES[name], "preprocess", CIFAKE_SPEC)


def create_model(name: str, **kwargs: Any) -> Any:
    """Build an architecture by name (a torch module, uint8 NHWC in, logit out)."""
    _load_architectures()
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown architecture {name!r}; known: {', '.join(sorted(_FACTORIES))}"
        ) from None
    return factory(**kwargs)
