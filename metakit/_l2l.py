"""Import learn2learn without the deprecation banner that its `gym` dependency prints."""

import contextlib
import io
import warnings

with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import learn2learn  # noqa: F401  (re-exported)

__all__ = ["learn2learn"]
