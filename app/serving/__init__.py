"""The HTTP service: the FastAPI app and its routes (``app``), the model holder and inference (``inference``),
request parsing and checks (``parsing``, ``protocol``), errors to HTTP (``errors``), metrics, logs, tracing, the
settings read from the environment, and the uvicorn runner (``server``).
"""
