"""The second front door: readings that feeders publish to a broker (MQTT into NATS JetStream), scored by the same
core as the HTTP service (``app.scoring``: the model holder, batch scoring and its metrics, hot swap, shadow), one
result per reading published back, nothing lost. ``gridwatch stream`` runs it (``runner``); ``settings`` (what it
reads), ``messages`` (what a message may hold, and why one is refused), ``topology`` (the streams and the durable
consumer, created when missing), ``consumer`` (fetch, score, publish, acknowledge), ``probes`` (``/livez``,
``/health``, ``/metrics``) and ``metrics``. Imports nothing of ``app.serving``. Importing this package imports nothing.
"""
