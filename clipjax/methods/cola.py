"""cola (being implemented; see its issue)."""

from collections.abc import Callable

from clipjax.methods.base import Method

METHODS: dict[str, Callable[..., Method]] = {}
