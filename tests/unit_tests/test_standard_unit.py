"""langchain-tests' ChatModelUnitTests for the server chat model (no network)."""

from __future__ import annotations

from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_multillm import ChatAzureOpenAI, ChatDeepSeek, ChatTGI, ChatVLLMServer


class TestChatVLLMServerUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatVLLMServer]:
        return ChatVLLMServer

    @property
    def chat_model_params(self) -> dict:
        return {"model": "smollm2", "base_url": "http://127.0.0.1:9/v1"}

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        return (
            {"VLLM_BASE_URL": "http://127.0.0.1:9/v1", "VLLM_API_KEY": "env-key"},
            {"model": "smollm2"},
            {"base_url": "http://127.0.0.1:9/v1", "api_key": "env-key"},
        )


class TestChatTGIUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatTGI]:
        return ChatTGI

    @property
    def chat_model_params(self) -> dict:
        return {"model": "smollm2", "base_url": "http://127.0.0.1:9"}

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        return (
            {"TGI_BASE_URL": "http://127.0.0.1:9", "HF_TOKEN": "env-key"},
            {"model": "smollm2"},
            {"base_url": "http://127.0.0.1:9", "api_key": "env-key"},
        )


class TestChatDeepSeekUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatDeepSeek]:
        return ChatDeepSeek

    @property
    def chat_model_params(self) -> dict:
        return {"model": "deepseek-chat", "api_key": "sk-test", "base_url": "http://127.0.0.1:9"}

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        return (
            {"DEEPSEEK_API_KEY": "env-key", "DEEPSEEK_API_BASE": "http://127.0.0.1:9"},
            {"model": "deepseek-chat"},
            {"api_key": "env-key", "base_url": "http://127.0.0.1:9"},
        )


class TestChatAzureOpenAIUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatAzureOpenAI]:
        return ChatAzureOpenAI

    @property
    def chat_model_params(self) -> dict:
        return {
            "azure_deployment": "gpt-4o",
            "azure_endpoint": "http://127.0.0.1:9",
            "api_version": "2024-10-21",
            "api_key": "azure-test",
        }

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        return (
            {
                "AZURE_OPENAI_ENDPOINT": "http://127.0.0.1:9",
                "AZURE_OPENAI_API_KEY": "env-key",
                "OPENAI_API_VERSION": "2024-10-21",
            },
            {"azure_deployment": "gpt-4o"},
            {
                "azure_endpoint": "http://127.0.0.1:9",
                "api_key": "env-key",
                "api_version": "2024-10-21",
            },
        )
