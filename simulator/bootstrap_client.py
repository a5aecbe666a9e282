"""The device's bootstrap fetch: GET /v1/bootstrap/<thing> from each bootstrap URL in order."""

from __future__ import annotations

from urllib.parse import quote

import aiohttp

from simulator.contract import Assignment, ContractError, parse_assignment


class BootstrapClient:
    """Shared by every device of a process (one aiohttp session); the first valid answer wins."""

    def __init__(self, urls: list[str], session: aiohttp.ClientSession, timeout: float = 3):
        self.urls = [u.rstrip("/") for u in urls]
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def fetch(self, thing: str) -> tuple[Assignment | None, list[str]]:
        """The assignment from the first bootstrap URL that answers well, and why the others did not."""
        problems: list[str] = []
        for url in self.urls:
            try:
                async with self.session.get(f"{url}/v1/bootstrap/{quote(thing)}", timeout=self.timeout) as r:
                    if r.status != 200:
                        problems.append(f"{url}: HTTP {r.status}")
                        continue
                    return parse_assignment(await r.json(content_type=None)), problems
            except (aiohttp.ClientError, TimeoutError) as e:
                problems.append(f"{url}: {type(e).__name__}: {e}")
            except (ContractError, ValueError) as e:
                problems.append(f"{url}: bad answer: {e}")
        return None, problems
