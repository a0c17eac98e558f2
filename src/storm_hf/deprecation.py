"""Deprecated names kept working for one release."""

import warnings
from collections.abc import Callable


def registration_no_op(name: str) -> Callable[[], None]:
    """The function `name`, which used to register (part of) STORM with transformers: it now only warns, since
    `import storm_hf` (which importing any storm_hf module does first) registers everything (`storm_hf.registration`).
    """

    def no_op() -> None:
        warnings.warn(
            f"`{name}()` is deprecated and does nothing: `import storm_hf` registers STORM with transformers "
            "(storm_hf.registration). It will be removed.",
            DeprecationWarning,
            stacklevel=2,
        )

    no_op.__name__ = no_op.__qualname__ = name
    no_op.__doc__ = "Deprecated, does nothing: `import storm_hf` registers STORM with transformers."
    return no_op
