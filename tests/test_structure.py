"""The package's structure: no import cycle, argument parsing only in the CLI, one user-error base
class (a user error is one line and exit 2; a bug keeps its traceback), one home per constant."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib
import torch

import tca
from tca import cli, errors
from tca.config import DEFAULT_LAYERS, DEFAULT_LAYERS_TEXT, format_layers, parse_layers, split_list
from tca.models import APP_MODELS, SUPPORTED_MODELS

from .conftest import ROOT

PACKAGE = ROOT / "tca"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """tca module -> the tca modules it imports (relative or absolute, at any depth)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                candidates = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {c for c in candidates if c in modules and c != name}
    return graph


def test_no_import_cycle_between_modules():
    graph = _imports()
    assert "tca.cli" in graph["tca.__main__"] and "tca.eval" in graph["tca.cli.evaluate"]
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if n.startswith(m + ".") or m.startswith(n + "."):
                continue  # a package and its own modules (re-exports), not a cycle of concepts
            assert state.get(n) != 1, f"import cycle: {' -> '.join(path + [n])}"
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def _gradio_importers() -> set[str]:
    out = set()
    for p in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            if any(n == "gradio" or n.startswith("gradio.") for n in names):
                out.add(_module_name(p))
    return out


def test_import_layering_core_never_imports_the_app():
    """The layers: the core (``tca`` outside ``tca.app``) never imports ``tca.app``; only
    ``tca.app`` (and app.py, outside the package) may import gradio."""
    graph = _imports()
    assert "tca.app.runs" in graph and "tca.pipeline" in graph["tca.app.runs"]  # the walk works
    core = {m for m in graph if m != "tca.app" and not m.startswith("tca.app.")}
    assert len(core) > 30
    leaks = {
        m: sorted(d for d in deps if d == "tca.app" or d.startswith("tca.app."))
        for m, deps in graph.items()
        if m in core
    }
    assert {m: d for m, d in leaks.items() if d} == {}
    assert {m for m in _gradio_importers() if not m.startswith("tca.app")} == set()


def test_argument_parsing_lives_only_in_the_cli():
    users = sorted(
        _module_name(p)
        for p in PACKAGE.rglob("*.py")
        if "argparse" in p.read_text() and "cli" not in p.relative_to(PACKAGE).parts
    )
    assert users == []
    importers = sorted(
        m for m, deps in _imports().items() if "tca.cli" in deps and not m.startswith("tca.cli.")
    )
    assert importers == ["tca.__main__"]


def test_every_user_error_class_derives_from_user_error():
    names = [n for n in errors.__all__ if n != "UserError"]
    assert {"ConfigError", "EvalError", "CliError", "UnknownModelError"} <= set(names)
    assert all(issubclass(getattr(errors, n), errors.UserError) for n in names)
    assert tca.ConfigError is errors.ConfigError and tca.ImageError is errors.ImageError


def test_user_error_is_one_line_and_exit_2(capsys):
    code = cli.main(["flops", "--model", "ViT-Q-99"])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err == "error: unknown open_clip model 'ViT-Q-99'\n"


@pytest.mark.parametrize(
    "bug", [ValueError("a bug"), FileNotFoundError("a bug"), KeyError("a bug")]
)
def test_a_bug_is_not_swallowed_as_a_user_error(monkeypatch, capsys, bug):
    def broken(*args, **kwargs):
        raise bug

    monkeypatch.setattr(cli.predict, "saved_percent", broken)
    with pytest.raises(type(bug), match="a bug"):
        cli.main(["flops", "--json"])
    assert "error:" not in capsys.readouterr().err


def test_cli_device_option_is_checked(capsys, example_image):
    code = cli.main(["predict", str(example_image), "--labels", "a,b", "--device", "not-a-device"])
    assert code == 2
    assert capsys.readouterr().err == (
        "error: --device 'not-a-device' is not a torch device (e.g. cpu, cuda, cuda:1)\n"
    )
    assert cli.common.parse_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(errors.CliError, match="CUDA is not available"):
            cli.common.parse_device("cuda")


def test_layers_have_one_text_form():
    assert DEFAULT_LAYERS_TEXT == format_layers(DEFAULT_LAYERS) == "3,6,9"
    assert parse_layers(DEFAULT_LAYERS_TEXT) == DEFAULT_LAYERS
    assert split_list(" a, b;c,, ") == ["a", "b", "c"]
    parser = cli.build_parser()
    for argv in (["predict", "x.jpg", "--labels", "a,b"], ["flops"], ["eval", "data"]):
        assert parser.parse_args(argv).layers == DEFAULT_LAYERS_TEXT


def test_one_model_list():
    assert SUPPORTED_MODELS[:4] == tuple(APP_MODELS.values())
    assert SUPPORTED_MODELS[3] == "ViT-B-16-SigLIP2"
    assert SUPPORTED_MODELS[4:] == ("ViT-B-32", "ViT-B-16", "ViT-L-14")
    from tca.app import runs

    assert runs.APP_MODELS is APP_MODELS


def test_version_and_dependencies_have_one_home():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "dependencies" not in project["project"]
    dynamic = project["tool"]["setuptools"]["dynamic"]
    assert dynamic == {
        "version": {"attr": "tca.__version__"},
        "dependencies": {"file": ["requirements.txt"]},
    }
    assert tca.__version__.count(".") == 2
