"""A real FastAPI app (as Gradio runs on) behind tca.app.limits' middlewares, served by uvicorn on
loopback: ``python -m tests.limits_app PORT [MAX_BODY_BYTES]``. Used by tests/test_request_limits.py in
a subprocess, so its memory is its own. ``/stats`` says how many body bytes the app itself has
read, which shows a refused body never reached it."""

from __future__ import annotations

import logging
import sys

import uvicorn
from fastapi import FastAPI, Request

from tca.app.limits import MAX_BODY_BYTES, BodyLimit, UploadBudget, UploadLimit

api = FastAPI()
READ = {"bytes": 0, "requests": 0}


@api.post("/echo")
async def echo(request: Request) -> dict:
    body = await request.body()
    READ["bytes"] += len(body)
    READ["requests"] += 1
    return {"n": len(body)}


@api.post("/json")
async def json_body(payload: dict) -> dict:  # FastAPI parses (and would hold) the whole body
    READ["requests"] += 1
    return {"keys": sorted(payload)}


@api.post("/gradio_api/upload")
async def upload(request: Request) -> dict:
    body = await request.body()
    READ["bytes"] += len(body)
    READ["requests"] += 1
    return {"n": len(body)}


@api.get("/stats")
async def stats() -> dict:
    return dict(READ)


def build(max_body: int = MAX_BODY_BYTES) -> BodyLimit:
    budget = UploadBudget(burst_bytes=8 * 2**20, rate_bytes_per_s=1.0, total_bytes=20 * 2**20)
    return BodyLimit(UploadLimit(api, budget, behind_proxy=True), max_body)


if __name__ == "__main__":
    port = int(sys.argv[1])
    max_body = int(sys.argv[2]) if len(sys.argv) > 2 else MAX_BODY_BYTES
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    uvicorn.run(build(max_body), host="127.0.0.1", port=port, log_level="warning")
