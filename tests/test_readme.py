"""The README stays true: its Python API example runs, its set-up commands are what CI runs."""
from __future__ import annotations

import re

from .conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_python_api_example_runs(monkeypatch):
    section = README[README.index("## Python API"):]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    code = code.replace('pretrained="openai"', 'pretrained="none"')  # no weights offline
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    result = namespace["result"]
    assert result.tokens_per_layer == [197, 197, 197, 141, 141, 141, 100, 100, 100, 74, 74, 74]
    assert namespace["enc"].trace is not None and namespace["reservoir"].steps == 2


def test_first_section_has_exactly_two_setup_commands_and_ci_runs_the_second():
    body = README.split("\n---\n", 1)[1]  # after the Spaces front matter
    first = body[: body.index("\n---\n")]
    commands = re.findall(r"```bash\n(.*?)\n```", first, flags=re.S)
    assert commands == ["pip install -r requirements.txt && python app.py", "bash scripts/test.sh"]
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
