"""What the service tells its operators besides answers: logging (``logs``), tracing (``tracing``), the HTTP
metrics' definitions (``metrics``; the model's are ``app.scoring.metrics``) and the exposition of both
(``exposition``). Importing this package imports nothing.
"""
