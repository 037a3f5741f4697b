"""The model a worker serves, for any front door: the holder (``holder``), batch scoring with its metrics and drift
(``batch``), the hot swap that follows MODEL_DIR's active version (``hot_swap``), the shadow challenger
(``shadow``), the three put together once (``served``), their metric definitions (``metrics``) and the settings
every front door shares (``settings``).

Imports no web framework (tests/project/test_structure.py holds it to that): the HTTP service is one front door
(``app.serving``), a broker consumer is another. Importing this package imports nothing.
"""
