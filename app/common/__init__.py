"""What the backend, the tools and the UI share, and nothing more: latency statistics, the recorded-data columns and
the reader of the API-key file. Standard library and NumPy only, so the UI's image (no scikit-learn, no
pydantic) can import all of it.
"""
