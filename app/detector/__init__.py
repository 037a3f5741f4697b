"""The anomaly detector: the IsolationForest model, its artifact on disk, the compiled forest that scores it, the
drift statistics and the evaluation.

It knows nothing of HTTP, Prometheus or OpenTelemetry (a test proves it), so the service, the command line and
the benchmark use it alike. Importing this package is free: each module imports what it needs.
"""
