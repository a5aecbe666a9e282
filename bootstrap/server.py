"""The bootstrap service as a local HTTP process, one per region of the local stack.

python -m bootstrap.server --config deploy/local/deployment.toml --region us-east-1 --port 8081

Answers that need AWS are built on a thread pool (boto3 is blocking), answers from the cache on
the event loop. The service's own check of the region's DynamoDB, every second, turns every answer
into 503 within a second of a regional outage (`BootstrapService.check`), which is how simulated
devices see the outage and move to their next endpoint. `/healthz` only reports: it changes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bootstrap.runtime import endpoints_from_env
from bootstrap.service import Answer, BootstrapService
from core import logs
from core.config import load_config

SERVICE = web.AppKey("service", BootstrapService)
POOL = web.AppKey("pool", ThreadPoolExecutor)


def _respond(ans: Answer) -> web.Response:
    return web.Response(
        text=ans.json(), status=ans.status, content_type="application/json", headers=ans.headers
    )


async def bootstrap(request: web.Request) -> web.Response:
    service, thing = request.app[SERVICE], request.match_info["thing"]
    if service.from_cache(thing):  # no I/O: answer here rather than hop to a thread
        return _respond(service.answer(thing))
    return _respond(
        await asyncio.get_running_loop().run_in_executor(request.app[POOL], service.answer, thing)
    )


async def healthz(request: web.Request) -> web.Response:
    ok, body = await asyncio.get_running_loop().run_in_executor(
        request.app[POOL], request.app[SERVICE].health
    )
    return _respond(Answer(200 if ok else 503, body))


async def metrics(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(service: BootstrapService, probe_seconds: float = 1.0, threads: int = 32) -> web.Application:
    app = web.Application()
    app[SERVICE] = service
    app[POOL] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bootstrap")
    app.router.add_get("/v1/bootstrap/{thing}", bootstrap)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)

    async def probe(app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.get_running_loop().run_in_executor(app[POOL], service.check)
                await asyncio.sleep(probe_seconds)

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        app[POOL].shutdown(wait=False, cancel_futures=True)

    app.cleanup_ctx.append(probe)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The device bootstrap service for one region")
    parser.add_argument("--config", required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--cache-ttl", type=float, default=5.0, help="seconds answers' inputs are cached")
    args = parser.parse_args(argv)
    logs.configure()
    cfg = load_config(args.config)
    service = BootstrapService(cfg, args.region, cache_ttl=args.cache_ttl, endpoints=endpoints_from_env())
    logs.get("bootstrap", region=args.region).info("bootstrap service starting", port=args.port)
    web.run_app(build_app(service), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
