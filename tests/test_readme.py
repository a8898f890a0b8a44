"""The docs stay true: the README's Python tour, CLI example and HTTP example run and say what
they show, its set-up commands are what CI runs, and every relative link in the docs resolves."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest

from tca.cli import main as cli_main

from .conftest import ROOT, TINY

README = (ROOT / "README.md").read_text()
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]


def _section(title: str) -> str:
    """The README's ``## title`` section, up to the next ``## `` heading."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else len(README)]


def _blocks(text: str, lang: str) -> list[str]:
    """The bodies of the fenced code blocks of ``text`` opened with ```` ```lang ````."""
    blocks: list[str] = []
    body: list[str] = []
    open_lang: str | None = None
    for line in text.splitlines():
        if open_lang is None and line.startswith("```"):
            open_lang, body = line[3:].strip(), []
        elif open_lang is not None and line.strip() == "```":
            if open_lang == lang:
                blocks.append("\n".join(body))
            open_lang = None
        elif open_lang is not None:
            body.append(line)
    return blocks


def test_python_tour_runs_and_its_comments_are_true(monkeypatch):
    """Every Python block of the tour, in order, in one namespace (random weights offline)."""
    blocks = _blocks(_section("Python API"), "python")
    assert len(blocks) == 3  # one image; patch and encode; stream mode
    code = "\n".join(blocks).replace('pretrained="openai"', 'pretrained="none"')
    monkeypatch.chdir(ROOT)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)  # noqa: S102 - our own documentation
    result, enc, reservoir, r = ns["result"], ns["enc"], ns["reservoir"], ns["r"]
    # the counts the tour's comment promises
    shown = re.search(r"result\.tokens_per_layer\s+# (\[[\d, ]+\])", code)
    assert shown is not None
    schedule = [197] * 3 + [141] * 3 + [100] * 3 + [74] * 3
    assert result.tokens_per_layer == ast.literal_eval(shown.group(1)) == schedule
    assert tuple(result.trace.fate[0, 3].shape) == (196,)  # "(196,) ... after block 3"
    assert result.to_dict()["tokens_per_layer"] == result.tokens_per_layer
    # the lower level: a (1, 3, 224, 224) batch, the same schedule, CLS per block
    assert tuple(ns["pixels"].shape) == (1, 3, 224, 224)
    assert enc.tokens_per_layer == result.tokens_per_layer
    assert tuple(enc.features.shape) == (1, 512) and tuple(enc.cls_tokens.shape) == (1, 12, 768)
    assert enc.trace is not None
    # the stream: two images filed, the corrected prediction over the three labels
    assert reservoir.steps == 2 and r.reservoir is not None
    assert len(r.corrected.probs) == 3


def test_cli_example_is_what_the_command_prints(capsys, monkeypatch):
    """The transcript under "Command line" is the command's output, line for line, except the
    wall-clock times and the (random-weights) probabilities, whose labels must still match."""
    transcript = _blocks(_section("Command line"), "")[0].splitlines()
    assert transcript[0].startswith("$ python -m tca ")
    argv = shlex.split(transcript[0][2:])[3:]
    monkeypatch.chdir(ROOT)
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out.rstrip("\n").splitlines()

    def split(lines: list[str]) -> tuple[list[str], set[str]]:
        header = lines.index(next(l for l in lines if l.startswith("label ")))
        rows = lines[header + 1 : lines.index("", header)]
        rest = lines[: header + 1] + lines[header + 1 + len(rows) :]
        return [l for l in rest if not l.startswith("time: ")], {row.split()[0] for row in rows}

    expected, printed_rest = split(transcript[1:]), split(printed)
    assert printed_rest == expected
    assert expected[1] == {"cat", "dog", "tiger"}
    assert sum(l.startswith("time: ") for l in printed) == 1


@pytest.fixture(scope="module")
def served_app():
    import app as app_module

    demo = app_module.build_demo(TINY, "none")
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **app_module.launch_options())
    try:
        yield url
    finally:
        demo.close()


def test_http_api_example_runs(served_app, monkeypatch):
    """The README's gradio_client example against a served app (the tiny test model)."""
    (code,) = [b for b in _blocks(README, "python") if "gradio_client" in b]
    assert '"http://127.0.0.1:7860/"' in code
    monkeypatch.chdir(ROOT)
    ns: dict = {}
    exec(compile(code.replace("http://127.0.0.1:7860/", served_app), "README.md", "exec"), ns)  # noqa: S102
    result = ns["result"]
    assert result["labels"] == ["cat", "dog", "tiger"]
    assert len(result["condensed"]["probs"]) == 3 and len(result["tokens_per_layer"]) == 12
    assert result["gmacs"]["condensed"] < result["gmacs"]["baseline"]


def test_first_section_has_exactly_two_setup_commands_and_ci_runs_the_second():
    body = README.split("\n---\n", 1)[1]  # after the Spaces front matter
    first = body[: body.index("\n---\n")]
    commands = re.findall(r"```bash\n(.*?)\n```", first, flags=re.S)
    assert commands == ["pip install -r requirements.txt && python app.py", "bash scripts/test.sh"]
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


# ----------------------------------------------------------------------------- links in the docs

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are not links."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file: lower case, punctuation dropped,
    spaces as hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # a "# comment" is no heading
    for title in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(_prose(path.read_text())) if not re.match(r"[a-z]+:", t)]


def test_anchor_rule_matches_github(tmp_path):
    page = tmp_path / "anchors.md"
    page.write_text(
        "# A\n## Keep rate R and rate d\n### Every method at the paper's keep rates (ViT-B/16, "
        "224 px)\n## `predict`\n## Towers: CLIP, SigLIP, and the next one\n## A\n"
    )
    assert anchors(page) == {
        "a",
        "keep-rate-r-and-rate-d",
        "every-method-at-the-papers-keep-rates-vit-b16-224-px",
        "predict",
        "towers-clip-siglip-and-the-next-one",
        "a-1",
    }


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    """Each relative link (and image) points to an existing file, and its #anchor, if any, to a
    heading of that file."""
    broken = []
    for target in relative_links(doc):
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(target)
    assert broken == []


def test_the_docs_link_to_each_other():
    """The README reaches every page of docs/, so none is orphaned."""
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in relative_links(ROOT / "README.md")}
    pages = {p.resolve() for p in (ROOT / "docs").glob("*.md")} | {ROOT / "docs" / "evaluation.md"}
    assert pages - linked == set()
