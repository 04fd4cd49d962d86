"""Routes each agent to the engine family its `engine:` key names."""

from __future__ import annotations

import aiohttp

from gateway.config import AgentConfig, ProvidersConfig
from gateway.engines.base import EngineSession
from gateway.engines.openai_realtime import OpenAIRealtimeEngine
from gateway.errors import EngineError


class Engines:
    """An EngineFactory over every configured provider."""

    def __init__(self, providers: ProvidersConfig, http: aiohttp.ClientSession) -> None:
        self._openai = OpenAIRealtimeEngine(providers.openai, http) if providers.openai else None

    async def open(self, agent: AgentConfig, call_id: str) -> EngineSession:
        if agent.engine in ("openai_realtime", "openai_realtime_2"):
            if self._openai is None:
                raise EngineError("providers.openai is not configured")
            return await self._openai.open(agent, call_id)
        raise EngineError(f"unknown engine {agent.engine}")
