"""Registry of defenses by name: ``create("reverse_sigmoid", beta=0.5, gamma=0.2)``."""

from __future__ import annotations

from typing import Any, TypeVar

from stealproof._names import unknown_name_message
from stealproof.defenses.base import Defense
from stealproof.errors import (
    ConfigError,
    InputValidationError,
    StealproofError,
    UnknownNameError,
)

_T = TypeVar("_T", bound=type[Defense])
_REGISTRY: dict[str, type[Defense]] = {}


def register(cls: _T) -> _T:
    """Class decorator adding a defense to the registry under ``cls.name``."""
    name = cls.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ConfigError(f"a defense named {name!r} is already registered")
    _REGISTRY[name] = cls
    return cls


def get_defense_class(name: str) -> type[Defense]:
    """The class registered under ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError(unknown_name_message("defense", name, available())) from None


def create(name: str, **params: Any) -> Defense:
    """Build the defense registered as ``name`` with keyword parameters."""
    return get_defense_class(name)(**params)


def available() -> list[str]:
    """Registered defense names, sorted."""
    return sorted(_REGISTRY)


def resolve_defense(defense: object, what: str = "defense") -> Defense | None:
    """``None``, a :class:`Defense`, or a registered defense name built with its defaults.

    Anything else is refused with :class:`~stealproof.errors.InputValidationError` naming
    ``what``; an unknown name lists the registered ones, and a defense that needs models
    (``mad``, ``grad2``, ``am``) says how to build it.
    """
    if defense is None or isinstance(defense, Defense):
        return defense
    if isinstance(defense, str):
        try:
            return create(defense)
        except UnknownNameError as e:
            raise UnknownNameError(f"{what}: {e}") from None
        except StealproofError as e:
            raise ConfigError(f"{what}: {e}") from None
    raise InputValidationError(
        f"{what}: expected a Defense, a registered defense name or None, "
        f"got {type(defense).__name__}"
    )
