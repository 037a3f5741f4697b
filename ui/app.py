"""GridWatch UI (minimal): check the backend and score one simulated batch.

Run with ``streamlit run ui/app.py``; the backend URL comes from ``BACKEND_URL`` (default
http://localhost:8000). The full streaming UI is built on top of this page.
"""

from __future__ import annotations

import os

import requests
import streamlit as st

from app.sim import GridSimulator

BACKEND_URL = os.environ.get("BACKEND_URL", "http://localhost:8000")

st.set_page_config(page_title="GridWatch", layout="wide")
st.title("GridWatch")
backend = st.sidebar.text_input("Backend URL", BACKEND_URL)
batch_size = st.sidebar.slider("Batch size", 1, 500, 64)
anomaly_rate = st.sidebar.slider("Anomaly rate", 0.0, 0.5, 0.05)

try:
    health = requests.get(f"{backend}/health", timeout=3)
    if health.ok:
        st.success(f"Backend ready, model {health.json()['model_version']}")
    else:
        st.warning(f"Backend not ready: {health.json().get('reason', health.status_code)}")
except requests.RequestException as error:
    st.error(f"Backend unreachable at {backend}: {error.__class__.__name__}")

if st.button("Generate Batch"):
    batch = GridSimulator(anomaly_rate=anomaly_rate).batch(batch_size)
    records = batch.to_records()
    try:
        answer = requests.post(f"{backend}/predict", json={"readings": records}, timeout=10)
        answer.raise_for_status()
        result = answer.json()
        for record, prediction in zip(records, result["predictions"], strict=True):
            record.update(flagged=prediction["anomaly"], score=round(prediction["score"], 4))
        st.metric("Flagged", f"{result['anomalies']} / {result['total']}")
        st.line_chart([r["voltage"] for r in records])
        st.dataframe(records)
    except requests.RequestException as error:
        st.error(f"Scoring failed: {error}")
