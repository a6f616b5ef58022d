"""``netpolicy schema`` prints a file generated from the model; the file must be the model's."""

import json
import subprocess
import sys

from netpolicy.model.policy import Policy
from netpolicy.model.schema import SCHEMA_FILE, generated_schema_text, schema_text


def test_the_shipped_file_is_the_models_schema() -> None:
    assert schema_text() == generated_schema_text(), (
        f"{SCHEMA_FILE} is stale: run `python -m netpolicy.model.schema` after changing the model")


def test_schema_command_prints_the_models_schema() -> None:
    proc = subprocess.run([sys.executable, "-m", "netpolicy", "schema"], capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout) == Policy.model_json_schema()
    assert proc.stdout == json.dumps(Policy.model_json_schema(), indent=2) + "\n"
