"""Routes each agent to the engine family its `engine:` key names."""

from __future__ import annotations

import aiohttp

from gateway.audio import AudioFormat
from gateway.config import AnyAgentConfig, OpenAIAgentConfig, ProvidersConfig
from gateway.engines.base import EngineSession
from gateway.engines.elevenlabs import ElevenLabsEngine
from gateway.engines.openai_realtime import OpenAIRealtimeEngine
from gateway.errors import EngineError


class Engines:
    """An EngineFactory over every configured provider."""

    def __init__(self, providers: ProvidersConfig, http: aiohttp.ClientSession) -> None:
        self._openai = OpenAIRealtimeEngine(providers.openai, http) if providers.openai else None
        self._elevenlabs = ElevenLabsEngine(providers.elevenlabs, http) if providers.elevenlabs else None

    async def open(self, agent: AnyAgentConfig, call_id: str, carrier_format: AudioFormat) -> EngineSession:
        if isinstance(agent, OpenAIAgentConfig):
            if self._openai is None:
                raise EngineError("providers.openai is not configured")
            return await self._openai.open(agent, call_id, carrier_format)
        if self._elevenlabs is None:
            raise EngineError("providers.elevenlabs is not configured")
        return await self._elevenlabs.open(agent, call_id, carrier_format)
