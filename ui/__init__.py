"""The Streamlit UI of GridWatch. Imports ``app.sim`` (NumPy only) and talks to the backend over HTTP."""
