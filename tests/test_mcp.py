"""The app as an MCP server and its no-image API: a real MCP client (the ``mcp`` package, over
the streamable-HTTP endpoint Gradio serves) lists the tools and calls both on loopback; /flops
gives exactly tca's analytic schedule and GMACs; the uploads-only rule holds for MCP calls. And
the curated examples: a click runs, and the same example again comes from the cache.
Tiny random-weight model."""

from __future__ import annotations

import ast
import asyncio
from typing import Any

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

import app as app_module
from tca.app import tools, uploads
from tca.app.request import from_controls
from tca.config import CondenseConfig
from tca.errors import UserError
from tca.flops import CONVENTION, Geometry, macs_for, saved_percent

TINY = "tca-tiny-ViT"
SCHEDULE = [197] * 3 + [141] * 3 + [100] * 3 + [74] * 3  # R = 0.7 at blocks 3, 6, 9
REFUSED = f"Cannot run: {uploads.REFUSED}"


@pytest.fixture(scope="module")
def served():
    demo = app_module.build_demo(TINY, "none", first_screen=None)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **app_module.launch_options())
    try:
        yield demo, url
    finally:
        demo.close()


def _mcp(url: str, calls: list[tuple[str, dict]]) -> tuple[dict[str, Any], list[Any]]:
    """List the tools, then make ``calls`` in one MCP session: (tools by name, results)."""

    async def session():
        async with streamable_http_client(url + "gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as s:
                await s.initialize()
                listed = (await s.list_tools()).tools
                results = [await s.call_tool(name, args) for name, args in calls]
                return {t.name: t for t in listed}, results

    return asyncio.run(session())


def _text(result) -> str:
    (content,) = result.content
    return content.text


def _expected_flops() -> dict:
    geom = Geometry.from_name(TINY)
    config = CondenseConfig(method="tca", keep_rate=0.7, layers=(3, 6, 9), merge_centers=2)
    base = macs_for(geom, CondenseConfig(method="none"))
    cond = macs_for(geom, config)
    return {
        "model": TINY,
        "method": "tca",
        "keep_rate": 0.7,
        "layers": [3, 6, 9],
        "convention": CONVENTION,
        "tokens_per_layer": SCHEDULE,
        "baseline_tokens_per_layer": [197] * 12,
        "gmacs": {
            "baseline": base.gmacs,
            "condensed": cond.gmacs,
            "saved_percent": saved_percent(base, cond),
            "overhead": cond.overhead / 1e9,
        },
        "layers_detail": [
            {
                "layer": l.layer,
                "tokens_in": l.n_attention,
                "tokens_out": l.n_mlp,
                "gmacs": l.total / 1e9,
            }
            for l in cond.layers
        ],
        "adaptive": False,
    }


def test_mcp_lists_and_calls_both_tools(served, example_image):
    demo, url = served
    uploaded = httpx.post(
        url + "gradio_api/upload", files={"files": ("photo.jpg", example_image.read_bytes())}
    ).json()[0]
    file_url = url + "gradio_api/file="
    listed, (flops, default_flops, classified, path, server_file, other, bad) = _mcp(
        url,
        [
            ("flops", {"model": TINY, "method": "tca", "keep_rate": 0.7, "layers": "3,6,9"}),
            ("flops", {"model": TINY, "method": "tca", "keep_rate": 0.7}),  # default blocks
            ("classify", {"image": file_url + uploaded, "labels": "cat, dog", "model": TINY}),
            ("classify", {"image": str(example_image), "labels": "cat, dog", "model": TINY}),
            (
                "classify",
                {"image": file_url + "/etc/hostname", "labels": "cat, dog", "model": TINY},
            ),
            ("classify", {"image": "https://example.com/cat.png", "labels": "a, b", "model": TINY}),
            ("flops", {"model": TINY, "method": "tca", "keep_rate": 1.5}),
        ],
    )
    assert set(listed) == {"classify", "flops"}
    # described for agents: the tool and every parameter
    f = listed["flops"]
    assert f.description.startswith("Token schedule and compute (GMACs) of token condensation")
    props = f.inputSchema["properties"]
    assert list(props) == ["model", "method", "keep_rate", "layers", "merge_centers"]
    assert props["keep_rate"]["description"].startswith("keep rate R between 0.1 and 1.0")
    assert "tca, evit, tome, tome-paper, ats" in props["method"]["description"]
    c = listed["classify"]
    assert c.description == app_module.API_DESCRIPTION + uploads_hint()
    described = {k: v.get("description", "") for k, v in c.inputSchema["properties"].items()}
    assert list(described) == [
        "image", "labels", "model", "method", "keep_rate", "layers", "merge_centers", "score",
        "templates", "stream",
    ]  # fmt: skip
    assert all(described.values()), described
    assert described["image"].startswith("the image: an uploaded file")
    # /flops: exactly tca's analytic schedule and GMACs
    assert not flops.isError and not default_flops.isError
    assert ast.literal_eval(_text(flops)) == _expected_flops()
    assert ast.literal_eval(_text(default_flops)) == _expected_flops()  # depth 12: 3, 6, 9
    # /classify on an upload named by its URL: runs, and says in which precision
    assert not classified.isError
    answer = ast.literal_eval(_text(classified))
    assert answer["labels"] == ["cat", "dog"] and answer["tokens_per_layer"] == SCHEDULE
    assert answer["precision"] == demo.tca_app.placement.precision
    # the uploads-only rule: a server path, a URL of a server file, any other URL
    assert path.isError and _text(path) == (
        "Invalid file data format, provide a url ('http://...' or 'https://...'). "
        f"Received: {example_image}"
    )
    assert server_file.isError and _text(server_file) == REFUSED
    assert other.isError and _text(other) == REFUSED
    assert (
        bad.isError and _text(bad) == "Cannot run: keep rate R must be between 0.1 and 1.0, got 1.5"
    )


def uploads_hint() -> str:
    """What Gradio's MCP server adds to the description of a tool that takes a file."""
    return (
        " If a user passes a file as an input, use the upload_file_to_gradio tool, if present, to "
        "upload the file to the gradio app and create a Gradio File Input. Then use the returned "
        "path as the input to the tool"
    )


def test_flops_through_the_api(served):
    demo, url = served
    client = Client(url, verbose=False)
    got = client.predict(TINY, "tca", 0.7, "", 2, api_name="/flops")
    assert got == _expected_flops()
    assert got == tools.flops(TINY, "tca", 0.7, "3,6,9", 2)
    with pytest.raises(AppError, match="Cannot run: model: 'ViT-Q-99' is not an open_clip model"):
        client.predict("ViT-Q-99", "tca", 0.7, "", 2, api_name="/flops")
    with pytest.raises(AppError, match="Cannot run: method: unknown 'fast'; choose one of tca, "):
        client.predict(TINY, "fast", 0.7, "", 2, api_name="/flops")
    ats = client.predict(TINY, "ats", 0.7, "", 2, api_name="/flops")
    assert ats["adaptive"] is True  # counts vary per image: these are the budget


def test_served_url_of_an_upload():
    up = "/tmp/gradio/abc/x.png"
    assert uploads.served_path("https://u-space.hf.space/gradio_api/file=" + up) == up
    assert (
        uploads.served_path("http://h/gradio_api/file=/tmp/gradio/a%20b/x.png")
        == "/tmp/gradio/a b/x.png"
    )
    assert uploads.served_path("https://example.com/cat.png") is None
    assert uploads.served_path("/tmp/gradio/abc/x.png") is None  # not a URL
    assert uploads.served_path("ftp://h/gradio_api/file=/x") is None


# ------------------------------------------------------------------ cached examples


def test_examples_run_on_click_and_come_from_the_cache(served, tmp_path):
    demo, url = served
    photo = tmp_path / "mine.png"  # not one of the curated examples
    Image.effect_noise((64, 48), 40).convert("RGB").save(photo)
    app = demo.tca_app
    examples = app_module.examples()
    first, labels = examples[0]
    req = from_controls(first, labels, TINY, "tca", 0.7, "3,6,9", 2, "mean", "single")
    calls = []
    own = app._run

    def counted(*args, **kwargs):
        calls.append(args[0])
        return own(*args, **kwargs)

    app._run = counted
    cached = len(app.example_runs)  # e.g. the MCP test's Run of an example's upload
    try:
        a = app._example_run(req, None)
        b = app._example_run(req, None)  # the same example and settings: no pass
        other = app._example_run(req.with_config(CondenseConfig(keep_rate=0.5)), None)
        upload = from_controls(str(photo), labels, *SETTINGS_TINY)
        app._example_run(upload, None)  # not a curated example's picture: never cached
        app._example_run(upload, None)
    finally:
        app._run = own
    assert len(calls) == 4  # a, other, upload twice
    assert a is not b and a.result.condensed.probs == b.result.condensed.probs
    assert b.result.tokens_per_layer == SCHEDULE
    assert other.result.tokens_per_layer != SCHEDULE
    assert len(app.example_runs) == cached + 2
    # the page: an example's click fills its inputs, then runs (check, classify, show)
    deps = demo.get_config_file()["dependencies"]

    def after(dep: dict) -> list[dict]:
        return [d for d in deps if d.get("trigger_after") == dep["id"]]

    (loaded,) = [d for d in deps if d.get("api_name") == "load_example"]
    (check,) = after(loaded)
    (classify,) = after(check)
    (show,) = after(classify)
    assert [d["api_name"].rstrip("_1") for d in (check, classify, show)] == [
        "check_inputs", "classify", "show_run",
    ]  # fmt: skip
    assert classify["api_visibility"] == "private"  # the API's /classify stays the Run button's
    assert classify["trigger_only_on_success"] and show["trigger_only_on_success"]


SETTINGS_TINY = (TINY, "tca", 0.7, "3,6,9", 2, "mean", "single")


@pytest.mark.parametrize(
    "bad, field",
    [
        (dict(method=[]), "method:"),
        (dict(method=None), "method:"),
        (dict(layers=[]), "layers:"),
        (dict(layers=3), "layers:"),
        (dict(model=[]), "model:"),
        (dict(model="no-such-model"), "model:"),
        (dict(keep_rate=float("nan")), "keep rate R"),
        (dict(keep_rate=[]), "keep rate R"),
        (dict(merge_centers=None), "merge centres K"),
    ],
)
def test_flops_refuses_wrong_values_by_their_field(bad, field):
    """/flops is open to agents: a wrong type or value is a user error naming the field (the
    server's fuzz found a list as the method raising TypeError)."""
    with pytest.raises(UserError) as refused:
        tools.flops(**bad)
    assert str(refused.value).startswith(field), str(refused.value)
