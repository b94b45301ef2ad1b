"""batchsend: bulk email campaigns that survive crashes without emailing anyone twice."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("batchsend")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

USER_AGENT = f"batchsend/{__version__}"

__all__ = ["USER_AGENT", "__version__"]
