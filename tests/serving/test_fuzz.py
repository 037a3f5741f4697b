"""Bad input, generated: schemathesis against the service's own OpenAPI schema, hypothesis against the parser.

Every operation gets schema-valid and schema-violating requests; each answer must be no 5xx, a status code the
schema documents, a body and content type matching the schema, and a 4xx for invalid data. The same runs once
against the open API and once with an API key, where requests without the key must be refused.
"""

from __future__ import annotations

import atexit
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from app import FEATURES
from app.detector.model import Detector, ModelConfig
from app.detector.training import train_model
from app.serving.app import create_app
from app.serving.edge.http_errors import BatchTooLargeError, InvalidReadingsError
from app.serving.edge.parsing import parse_readings
from app.serving.settings import Settings

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
EXAMPLES_PER_OPERATION = 80
"""14 operations (the 9 of /v2 included) x 80 examples x 2 schemas: about 2,200 generated requests per run."""
REJECTIONS = ["400", "401", "403", "404", "405", "406", "408", "409", "413", "415", "422", "428", "429"]
"""What counts as refusing schema-violating data: schemathesis' defaults plus our documented 408 (slow body) and
413 (a batch over MAX_BATCH, or a body over MAX_BODY_BYTES), which the API contract fixes."""
API_KEY = "s3cret"


def fuzz_config(**extra: object) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "generation": {"mode": "all", "max-examples": EXAMPLES_PER_OPERATION},
            "checks": {"negative_data_rejection": {"expected-statuses": REJECTIONS}},
            **extra,
        }
    )


# schemathesis reads the schema when this module is imported, so the app it fuzzes is built here, with a small
# model trained in memory (a few tenths of a second); the scoring path is the same as with the default model.
_MODEL_DIR = Path(tempfile.mkdtemp(prefix="gridwatch-fuzz-"))
atexit.register(shutil.rmtree, _MODEL_DIR, ignore_errors=True)
_DETECTOR = train_model(ModelConfig(n_estimators=20, max_samples=512, train_samples=2_000), _MODEL_DIR / "m.joblib")


def fuzzed_schema(config: SchemathesisConfig, **overrides: object) -> schemathesis.BaseSchema:
    settings = Settings(model_dir=_MODEL_DIR, model_name="m.joblib", train_if_missing=False, max_batch=50, **overrides)
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(settings, detector=_DETECTOR), config=config)


open_schema = fuzzed_schema(fuzz_config())
# The key is schemathesis' configured credential: it sends it, and its ignored_auth check also tries without it.
keyed_schema = fuzzed_schema(fuzz_config(headers={"X-API-Key": API_KEY}), api_key=API_KEY)


@open_schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_open_api_answers_every_generated_request_as_documented(case):
    case.call_and_validate(checks=CHECKS)


@keyed_schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_keyed_api_answers_every_generated_request_as_documented(case):
    case.call_and_validate(checks=[*CHECKS, ignored_auth])


# --- the parser, by hypothesis ----------------------------------------------------------------------------------

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
)
json_value = st.recursive(
    json_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
)
reading_like = st.dictionaries(st.sampled_from([*FEATURES, "timestamp", "sensor_id"]), json_value, max_size=5)


def parse_outcome(body: object) -> np.ndarray | InvalidReadingsError | BatchTooLargeError:
    try:
        return parse_readings(json.dumps(body).encode(), FEATURES, max_batch=4)
    except (InvalidReadingsError, BatchTooLargeError) as error:
        return error


@settings(max_examples=400, deadline=None)
@given(body=st.one_of(json_value, st.fixed_dictionaries({"readings": st.lists(reading_like | json_value, max_size=5)})))
def test_any_json_document_is_parsed_or_refused_with_a_located_error(body):
    """Whatever JSON arrives, the parser returns an array or one of its two named errors; nothing else escapes."""
    outcome = parse_outcome(body)
    if isinstance(outcome, InvalidReadingsError):
        assert outcome.errors
        assert all(entry["loc"][0] == "body" and entry["msg"] for entry in outcome.errors)
    elif isinstance(outcome, BatchTooLargeError):
        assert "MAX_BATCH=4" in str(outcome)
    else:
        assert outcome.shape == (len(body["readings"]), len(FEATURES))
        assert np.isfinite(outcome).all()


finite = st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True)


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.tuples(finite, finite, finite), min_size=1, max_size=20))
def test_any_finite_floats_are_accepted_exactly(rows):
    """Huge, tiny, negative, subnormal: a finite JSON number arrives in the array unchanged."""
    body = json.dumps({"readings": [dict(zip(FEATURES, row, strict=True)) for row in rows]}).encode()
    X = parse_readings(body, FEATURES, max_batch=100)
    np.testing.assert_array_equal(X, np.array(rows, dtype=np.float64))


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.tuples(finite, finite, finite), min_size=1, max_size=10),
    bad=st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", '"1.5"', "true", "null", "[]", "{}"]),
    where=st.integers(min_value=0),
    feature=st.sampled_from(FEATURES),
)
def test_a_non_finite_or_non_number_value_is_named_by_row_and_field(rows, bad, where, feature):
    row = where % len(rows)
    readings = [json.dumps(dict(zip(FEATURES, values, strict=True))) for values in rows]
    readings[row] = readings[row].replace(f'"{feature}": {json.dumps(rows[row][FEATURES.index(feature)])}',
                                          f'"{feature}": {bad}', 1)  # fmt: skip
    with pytest.raises(InvalidReadingsError) as caught:
        parse_readings(('{"readings": [' + ", ".join(readings) + "]}").encode(), FEATURES, max_batch=100)
    assert caught.value.errors[0]["loc"] == ["body", "readings", row, feature]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(finite, finite, finite), min_size=1, max_size=8))
def test_scores_of_any_finite_input_are_finite_and_agree_with_flags(detector: Detector, rows):
    flags, scores = detector.predict_batch(np.array(rows, dtype=np.float64))
    assert all(math.isfinite(score) for score in scores)
    np.testing.assert_array_equal(flags, scores > 0)
