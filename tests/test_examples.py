"""The shipped example configs validate with just the environment variables they document."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from gateway.config import ElevenLabsAgentConfig, OpenAIAgentConfig, load_config
from gateway.errors import ConfigError

CONFIG = Path(__file__).resolve().parent.parent / "config"
FULL_ENV = {
    "PUBLIC_URL": "https://gw.example.com",
    "OPENAI_API_KEY": "sk-x",
    "TWILIO_ACCOUNT_SID": "AC1",
    "TWILIO_AUTH_TOKEN": "t",
    "TELNYX_API_KEY": "KEY1",
    "TELNYX_PUBLIC_KEY": base64.b64encode(bytes(32)).decode(),
    "ELEVENLABS_API_KEY": "xi",
    "ELEVENLABS_AGENT_ID": "agent_1",
}


class TestFullExample:
    def test_full_example_validates(self) -> None:
        """config/agents.full.yaml loads with its documented variables: both carriers and engine families."""
        config = load_config(CONFIG / "agents.full.yaml", env=FULL_ENV)
        assert config.carriers.twilio is not None
        assert config.carriers.telnyx is not None
        assert isinstance(config.agents["receptionist"], OpenAIAgentConfig)
        support = config.agents["support"]
        assert isinstance(support, ElevenLabsAgentConfig)
        assert support.agent_id == "agent_1"
        assert config.server.admin_token is None  # GATEWAY_ADMIN_TOKEN unset: /calls stays off

    @pytest.mark.parametrize("missing", sorted(FULL_ENV))
    def test_each_variable_is_required(self, missing: str) -> None:
        """Leaving out any documented variable is a config error that names it."""
        env = {k: v for k, v in FULL_ENV.items() if k != missing}
        with pytest.raises(ConfigError) as error:
            load_config(CONFIG / "agents.full.yaml", env=env)
        assert any(missing in problem for problem in error.value.problems)
