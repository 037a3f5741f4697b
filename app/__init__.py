"""GridWatch: real-time anomaly detection on electricity-grid sensor readings.

Three packages by job: ``app.detector`` (the model, nothing of HTTP), ``app.serving`` (the HTTP service) and
``app.tools`` (command line, load generator, benchmark); ``app.sim`` (the simulator) stays at the top, where the
Streamlit UI imports it. Importing this package must stay cheap and free of scikit-learn: the UI's container image
does not ship scikit-learn, and the heavy packages are imported only by the code paths that need them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gridwatch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

FEATURES: tuple[str, ...] = ("voltage", "current", "frequency")
"""Feature order of every model input row; the API, the simulator and the model all use this order."""
