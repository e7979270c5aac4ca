"""The OpenAPI document is valid and describes what the API really answers."""
import pytest
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate

from execution_history.records import RunRecordSchema


@pytest.fixture
def spec(client):
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def test_spec_is_valid_openapi_3(spec):
    validate(spec)
    assert spec["openapi"].startswith("3.")


def test_list_parameters_come_from_the_params_schema(spec, app):
    from app.params import LIST_PARAMS

    documented = {p["name"] for p in spec["paths"]["/api/runs"]["get"]["parameters"]}
    assert documented == set(LIST_PARAMS.fields)
    assert set(spec["components"]["schemas"]["RunRecord"]["properties"]) == set(RunRecordSchema().fields)


def response_validator(spec, name):
    """A validator for a component schema, with $refs resolved against the whole document."""
    schema = {**spec["components"]["schemas"][name], "components": spec["components"]}
    return OAS30Validator(schema)


@pytest.mark.parametrize("url, schema", [
    ("/api/runs?limit=100", "RunList"), ("/api/runs/stats", "Stats"), ("/api/runs?limit=abc", "Error"),
])
def test_responses_match_their_schemas(client, spec, recorded_runs, url, schema):
    response_validator(spec, schema).validate(client.get(url).get_json())


def test_records_match_their_schema(client, spec, recorded_runs):
    validator = response_validator(spec, "RunRecord")
    for execution_id in recorded_runs:
        validator.validate(client.get(f"/api/runs/{execution_id}").get_json())


def test_every_api_route_is_documented(app, spec):
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/"):
            path = rule.rule.replace("<path:execution_id>", "{execution_id}")
            routes.add(path.replace("<execution_id>", "{execution_id}").replace("<fmt>", "{fmt}")
                       .replace("<sequence_number>", "{sequence_number}")
                       .replace("<job_id>", "{job_id}"))
    documented = {path.replace("/csv", "/{fmt}") for path in spec["paths"]}  # csv has paths of its own
    assert routes == documented
