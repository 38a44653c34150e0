"""The `impl` attribute of the bundled detection models (DensePose R-CNN, UPSNet)."""
from __future__ import annotations

from fastops._library import check_impl


class ImplChoice:
    """Mixin: `model.impl` ("auto", "cpp", "triton" or "reference") is checked on assignment, then handed to the
    model's `_use_impl(value)`, which points its op modules at it."""

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        self._impl = check_impl(value)
        self._use_impl(value)

    def _use_impl(self, value: str) -> None:
        raise NotImplementedError
