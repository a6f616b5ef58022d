"""The policy file's JSON Schema, generated from the pydantic model and shipped as a file.

``netpolicy schema`` prints ``policy.schema.json`` as it is: asking the model costs the start-up
of pydantic's BaseModel machinery and building every model class (0.34 s of process wall against
0.08 s for the file). ``tests/unit/test_schema_file.py`` fails when the file and
``Policy.model_json_schema()`` differ; ``python -m netpolicy.model.schema`` rewrites the file.
"""

from __future__ import annotations

import json
import os

SCHEMA_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "policy.schema.json")


def schema_text() -> str:
    """The schema as ``netpolicy schema`` prints it, read from the shipped file."""
    with open(SCHEMA_FILE, encoding="utf-8") as fh:
        return fh.read()


def generated_schema_text() -> str:
    """The schema the model gives now, in the file's layout."""
    from netpolicy.model.policy import Policy

    return json.dumps(Policy.model_json_schema(), indent=2) + "\n"


if __name__ == "__main__":
    with open(SCHEMA_FILE, "w", encoding="utf-8") as out:
        out.write(generated_schema_text())
