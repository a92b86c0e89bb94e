"""The design KCO replaces, as a minimal Kopf operator: one daemon per TargetApp
polls its GraphQL URL with a shared aiohttp session every pollingInterval and
diffs the state against the previous poll, logging what changed. It is the
reference side of `cargo bench --bench scale -- --kind url --against-kopf`.
"""

import asyncio
import logging
import os

import aiohttp
import kopf

DEFAULT_QUERY = os.environ.get("KCO_BENCH_QUERY", "{ daemonStatus { syncStatus } }")
SESSION = None


@kopf.on.startup()
async def startup(settings, **_):
    global SESSION
    settings.posting.level = logging.WARNING
    SESSION = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))


@kopf.on.cleanup()
async def cleanup(**_):
    if SESSION is not None:
        await SESSION.close()


@kopf.daemon("operator.kco.local", "v1alpha1", "targetapps")
async def poll(spec, stopped, logger, **_):
    url = spec["graphqlEndpoint"]
    interval = spec.get("pollingInterval", 30)
    query = spec.get("stateQuery") or DEFAULT_QUERY
    last = None
    while not stopped:
        try:
            async with SESSION.post(url, json={"query": query}) as response:
                state = (await response.json()).get("data")
            if last is not None and state != last:
                logger.info("state changed: %s -> %s", last, state)
            last = state
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
            logger.warning("poll of %s failed: %s", url, e)
        await stopped.wait(interval)
