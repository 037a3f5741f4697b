"""The HTTP edge: what happens to a request before and around its route. The connection and its bounds
(``connections``), admission (``admission``: content type, bounded body, API key, in-flight limits), body parsing
(``parsing``, ``body_errors``), errors to HTTP answers (``http_errors``), and the ASGI middlewares (``middleware``:
security headers, access log, HTTP metrics, error guard; ``asgi``: their base). Importing this package imports
nothing: uvicorn's supervisor process imports some of these modules and must never import prometheus-client.
"""
