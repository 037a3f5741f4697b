"""GridWatch: real-time anomaly detection on electricity-grid sensor readings.

Importing this package must stay cheap and free of scikit-learn: the Streamlit UI imports ``app.sim`` and its
container image does not ship scikit-learn. Heavy modules (``app.model``, ``app.api``) are imported only by the
code paths that need them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gridwatch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

FEATURES: tuple[str, ...] = ("voltage", "current", "frequency")
"""Feature order of every model input row; the API, the simulator and the model all use this order."""
