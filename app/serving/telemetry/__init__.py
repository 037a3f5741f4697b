"""What the service tells its operators besides answers: logging (``logs``), tracing (``tracing``) and the
metrics exposition (``exposition``). Metric definitions live beside what they measure (``app.scoring.metrics``,
``app.serving.edge.http_metrics``). Importing this package imports nothing.
"""
