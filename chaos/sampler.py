"""What the checker sees through a run: every second, each region's bootstrap answer for every device
(read from the region's own table, and built by the bootstrap service's own logic) and whether the
deployment entity answers `state`.

A sample is plain JSON (`Sample.as_dict`), so the checker also runs over synthetic ones.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from bootstrap.service import BootstrapService, _groups_matter, scan_records
from chaos.stack import RunStack
from core.aws import AwsClients, all_items
from core.errors import is_not_found

READ_SECONDS = 10.0  # a region read slower than this counts as unreadable for that sample


@dataclass
class Sample:
    t: float  # seconds since the fault phase started (negative before, during the warm-up)
    phase: str  # faults | settle
    worker_up: bool  # a worker ran all through the sample (a query needs one)
    tables: dict[str, dict[str, list] | None] = field(
        default_factory=dict
    )  # region -> thing -> [epoch, primary]
    errors: dict[str, str] = field(default_factory=dict)  # region -> why it could not be read
    asked_state: bool = True  # a sample of `state` (the sampler takes tables and state apart)
    state: dict[str, Any] | None = None  # epoch, active, in_flight; None when `state` did not answer
    state_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Sampler:
    def __init__(self, stack: RunStack, things: list[str]):
        self.stack, self.things = stack, things
        self.aws = AwsClients(stack.cfg)
        self.services = {
            r: BootstrapService(stack.cfg, r, cache_ttl=0, aws=self.aws) for r in stack.cfg.regions
        }
        self.samples: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        self.phase = "faults"
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=len(self.services), thread_name_prefix="chaos-sampler")
        self._reads: dict[str, asyncio.Future] = {}

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def start(self) -> None:
        self._task = asyncio.create_task(self._forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _forever(self) -> None:
        """Tables and `state` on loops of their own: a query that hangs must not thin the tables."""
        await asyncio.gather(self._every_second(self.sample), self._every_second(self.sample_state))

    async def _every_second(self, take) -> None:
        while True:
            begun = time.monotonic()
            self.samples.append((await take()).as_dict())
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - begun)))

    def ordered(self) -> list[dict[str, Any]]:
        return sorted(self.samples, key=lambda s: s["t"])

    async def sample(self) -> Sample:
        """Each region's answers, read at once."""
        s = Sample(t=self.now(), phase=self.phase, worker_up=self.stack.worker_up, asked_state=False)
        reads = {r: self._read(r) for r in self.services}
        results = await asyncio.gather(*reads.values(), return_exceptions=True)
        for region, got in zip(reads, results, strict=True):
            if isinstance(got, BaseException):
                s.tables[region], s.errors[region] = None, f"{type(got).__name__}: {got}"[:200]
            else:
                s.tables[region] = got
        return s

    async def sample_state(self) -> Sample:
        """Whether the entity answers `state`, and with which epoch."""
        s = Sample(t=self.now(), phase=self.phase, worker_up=self.stack.worker_up)
        changes = self.stack.worker_changes
        try:
            s.state = await self._state()
        except Exception as e:
            s.state_error = f"{type(e).__name__}: {e}"[:200]
        s.worker_up = s.worker_up and self.stack.worker_changes == changes  # up all through the query
        return s

    async def _read(self, region: str) -> dict[str, list]:
        """One region's answers, on a thread of the sampler's own; a read still running from an
        earlier sample (a region in outage can take botocore's retries) is not started again."""
        running = self._reads.get(region)
        if running is not None and not running.done():
            raise TimeoutError("the previous read has not returned")
        loop = asyncio.get_running_loop()
        self._reads[region] = future = loop.run_in_executor(self._pool, self.answers, region)
        return await asyncio.wait_for(asyncio.shield(future), READ_SECONDS)

    async def _state(self) -> dict[str, Any]:
        st = await self.stack.state()
        if st is None:
            raise RuntimeError("state answered None")
        in_flight = st.in_flight.cutover_id if st.in_flight else None
        return {"epoch": st.epoch, "active": st.active_region, "in_flight": in_flight}

    def answers(self, region: str) -> dict[str, list]:
        """What region's bootstrap service would answer each device now: [epoch, primary]."""
        svc = self.services[region]
        ddb = self.aws.dynamodb(region)
        try:
            records = scan_records(ddb, self.stack.cfg.bootstrap_table)
        except Exception as e:
            if not is_not_found(e):
                raise
            records = {}  # never flipped: the config's primary at epoch 0
        out: dict[str, list] = {}
        for thing in self.things:
            groups: list[str] = []
            if _groups_matter(records):  # only a group scope newer than the default can change it
                iot = self.aws.iot(region)
                found = all_items(iot, "list_thing_groups_for_thing", "thingGroups", thingName=thing)
                groups = [g["groupName"] for g in found]
            answer = svc.contract(thing, {}, records, groups)
            primary = next(e["region"] for e in answer["endpoints"] if e["primary"])
            out[thing] = [answer["epoch"], primary]
        return out
