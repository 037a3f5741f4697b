"""GridWatch: real-time anomaly detection on electricity-grid sensor readings.

Packages by job: ``app.detector`` (the model, nothing of HTTP or metrics), ``app.scoring`` (the model a worker
serves, for any front door), ``app.serving`` (the HTTP front door), ``app.tools`` (command line, load generator,
benchmark) and ``app.common`` (what the backend, the tools and the UI share); ``app.sim`` (the simulator) stays
at the top, where the Streamlit UI imports it. Importing this package must stay cheap and free of scikit-learn:
the UI's container image does not ship scikit-learn, and the heavy packages are imported only by the code paths
that need them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gridwatch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

FEATURES: tuple[str, ...] = ("voltage", "current", "frequency")
"""Feature order of every model input row; the API, the simulator and the model all use this order."""
