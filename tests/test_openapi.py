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


def test_the_export_job_form_body_is_what_the_route_takes(client, spec, recorded_runs):
    """POST /api/exports takes form fields too (the web page's form): documented as one flat
    set of the format, the list filters and every option; a real form post queues a job."""
    from app.params import COMMON_EXPORT_OPTIONS, EXPORT_OPTIONS
    from execution_history.exporters import EXPORTERS

    content = spec["paths"]["/api/exports"]["post"]["requestBody"]["content"]
    forms = content["application/x-www-form-urlencoded"]["schema"]["oneOf"]
    bodies = content["application/json"]["schema"]["oneOf"]
    assert len(forms) == len(bodies)
    for form, body in zip(forms, bodies):  # per format: its names, the filters and its options, nothing else
        assert form["properties"]["format"] == body["properties"]["format"] and form["additionalProperties"] is False
        assert set(form["properties"]) == {"format", *body["properties"]["filters"]["properties"],
                                           *body["properties"]["options"]["properties"]}
    csv_form = next(form for form in forms if "csv" in form["properties"]["format"]["enum"])
    assert {"shape", "bom", "raw", *COMMON_EXPORT_OPTIONS} <= set(csv_form["properties"]) <= {
        "format", *bodies[0]["properties"]["filters"]["properties"], *EXPORT_OPTIONS}
    assert set(EXPORTERS) <= {name for form in forms for name in form["properties"]["format"]["enum"]}
    decoded = {"format": "csv", "config": "dada", "shape": "items", "bom": True}  # as OpenAPI decodes the form
    validator = OAS30Validator({**content["application/x-www-form-urlencoded"]["schema"],
                                "components": spec["components"]})
    validator.validate(decoded)
    assert not validator.is_valid({"format": "json", "bom": True})  # a 400: json takes no bom
    response = client.post("/api/exports", data={**decoded, "bom": "true"})
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert job["format"] == "csv" and job["options"]["shape"] == "items" and job["filters"]["config"] == "dada"
