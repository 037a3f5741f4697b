"""The HTTP front door: the application wired together (``app``), its routes (``routes``), the edge a request
crosses before and around its route (``edge``), telemetry (``telemetry``), the readiness of all workers
(``readiness``), the OpenAPI shapes (``schemas``), the settings read from the environment (``settings``) and the
uvicorn runner (``server``). The model it serves, and its scoring, hot swap and shadow, are ``app.scoring``'s.
"""
