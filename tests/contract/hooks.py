"""Which contract tests exercise each hook of docs/backends/writing.md.

``tests/unit_tests/test_contract_coverage.py`` reads the hook tables of that page and fails
when a hook there has no entry here, when an entry here names a hook that is neither on the
page nor on the package's contract classes, or when a test named here does not exist or does
not run over every row of ``rows.py`` (it must take ``bench``). So the table and the suite cannot drift: a new hook in the table needs a
contract test, and a backend that fills the table is done when its row passes them.
"""

from __future__ import annotations

DOC = "docs/backends/writing.md"

# The modules of tests/contract that hold the tests named below.
MODULES = ("tests/contract/test_contract.py", "tests/contract/test_hooks.py")

_COUNTS = ("test_count_hooks_hold_to_the_peers_count",)
_HEALTH = ("test_health_hooks_agree_and_name_the_model",)
_CHAT = ("test_chat_hooks_agree",)
_COMPLETION = ("test_completion_hooks_agree",)
_OPENAI = ("test_chat_url_and_body_are_what_is_sent",)

COVERAGE: dict[str, tuple[str, ...]] = {
    # ---- every model (ModelSurface)
    "_health": (
        *_HEALTH,
        "test_health_ready_when_up",
        "test_health_down_when_nothing_is_there",
        "test_health_when_the_backend_answers_unhealthy",
    ),
    "_ahealth": (*_HEALTH, "test_health_ready_when_up"),
    "_deep_health": (*_HEALTH, "test_health_ready_when_up"),
    "_adeep_health": _HEALTH,
    "_fetch_limits": ("test_limit_hooks_agree", "test_limits_properties_and_profile_agree"),
    "_afetch_limits": ("test_limit_hooks_agree", "test_limits_properties_and_profile_agree"),
    "_static_limits": (
        "test_limit_hooks_agree",
        "test_hooks_without_io_send_nothing",
        "test_profile_is_known_before_any_request",
    ),
    "_count_exact": (*_COUNTS, "test_over_window_is_refused_before_sending"),
    "_acount_exact": _COUNTS,
    "_count_bound": (*_COUNTS, "test_hooks_without_io_send_nothing"),
    "_max_token_bytes": (
        *_COUNTS,
        "test_hooks_without_io_send_nothing",
        "test_far_over_window_is_refused_without_any_generation",
    ),
    "_count_lower": (
        *_COUNTS,
        "test_hooks_without_io_send_nothing",
        "test_far_over_window_is_refused_without_any_generation",
    ),
    "_allowed_call_params": (
        "test_call_param_hooks_refuse_by_name_before_sending",
        "test_sampling_fields_are_call_keys_and_defaults",
    ),
    "_secrets": (
        "test_secrets_hook_masks_every_error",
        "test_auth_error_never_shows_the_key",
        "test_auth_error_never_shows_a_key_the_server_echoes",
    ),
    "_model_label": ("test_health_reports_name_the_model_label",),
    "_backend": ("test_errors_name_the_backend",),
    "_call_params": ("test_call_param_hooks_refuse_by_name_before_sending",),
    "_call_param_hints": ("test_call_param_hooks_refuse_by_name_before_sending",),
    "_local_call_params": ("test_local_keys_are_never_sent",),
    # ---- chat and completion
    "_llm_type": _CHAT,
    "_chat": (*_CHAT, "test_retries_before_the_first_chunk"),
    "_achat": _CHAT,
    "_chat_stream": (
        *_CHAT,
        "test_a_stream_that_ends_early_raises_incomplete",
        "test_a_stream_cut_upstream_raises",
        "test_usage_in_every_stream",
    ),
    "_achat_stream": (
        *_CHAT,
        "test_a_stream_that_ends_early_raises_incomplete",
        "test_a_stream_cut_upstream_raises",
        "test_usage_in_every_stream",
    ),
    "_complete": _COMPLETION,
    "_acomplete": _COMPLETION,
    "_complete_stream": (*_COMPLETION, "test_a_stream_that_ends_early_raises_incomplete"),
    "_acomplete_stream": (*_COMPLETION, "test_a_stream_that_ends_early_raises_incomplete"),
    "_check_offline": ("test_check_offline_refuses_before_anything_is_asked",),
    "_default_params": (
        "test_default_params_are_sent_and_none_left_out",
        "test_sampling_fields_are_call_keys_and_defaults",
        "test_temperature_zero_is_repeatable",
    ),
    "_format_tools": ("test_format_tools_counts_tools_as_the_peer",),
    "_batches_in_engine": ("test_batch_hook",),
    # ---- a model in this process (EngineHolder)
    "_engine_registry": ("test_engine_holder_hooks",),
    "_engine_key": ("test_engine_holder_hooks",),
    "_start_engine": ("test_engine_holder_hooks",),
    # ---- a server (HTTPConnection)
    "api_key": ("test_headers_and_key_go_with_every_request", "test_secrets_never_shown"),
    "_auth_flow": ("test_auth_flow_hook_sends_the_token",),
    "_headers": ("test_headers_and_key_go_with_every_request",),
    # Probes as data: the health and limits hooks of a server, held to the same tests.
    "_health_probe": (
        *_HEALTH,
        "test_health_reports_name_the_model_label",
        "test_health_ready_when_up",
        "test_health_when_the_backend_answers_unhealthy",
    ),
    "_limits_probe": ("test_limit_hooks_agree", "test_limits_properties_and_profile_agree"),
    "_measure_template": (
        *_COUNTS,
        "test_prompt_near_the_window_is_accepted",
        "test_measure_template_hooks_agree",
    ),
    "_ameasure_template": ("test_measure_template_hooks_agree",),
    # ---- OpenAI chat over HTTP
    "_chat_url": _OPENAI,
    "_chat_body": _OPENAI,
    "_before_send": ("test_before_send_refuses_before_the_generation",),
    "_abefore_send": ("test_before_send_refuses_before_the_generation",),
    "_usage_fallback": ("test_usage_fallback_fills_what_the_server_leaves_out",),
    "_ausage_fallback": ("test_usage_fallback_fills_what_the_server_leaves_out",),
}
