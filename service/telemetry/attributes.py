"""Span attribute names: OpenTelemetry semantic conventions, pinned, and Provenant's own.

The GenAI names follow the OpenTelemetry semantic conventions **v1.41.1**, the last release of
the core repository that carried the GenAI conventions (status: Development) before they moved
to ``open-telemetry/semantic-conventions-genai``; HTTP, server and error names are the stable
ones of the same release. ``tests/unit/test_telemetry_attributes.py`` checks every name against
the semantic-conventions package installed with the SDK, so a rename there shows up here.

Spans never carry prompt or answer content (the opt-in ``gen_ai.input.messages`` /
``gen_ai.output.messages`` are not emitted) nor keys: the audit record holds content, under
its own access rules; the trace only points at it through ``provenant.audit.id``.
"""

from __future__ import annotations

from typing import Final

SEMCONV_VERSION: Final = "1.41.1"
SCHEMA_URL: Final = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"

# -- GenAI (Development) ---------------------------------------------------------------------
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_REQUEST_STREAM: Final = "gen_ai.request.stream"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P: Final = "gen_ai.request.top_p"
GEN_AI_REQUEST_TOP_K: Final = "gen_ai.request.top_k"
GEN_AI_REQUEST_FREQUENCY_PENALTY: Final = "gen_ai.request.frequency_penalty"
GEN_AI_REQUEST_PRESENCE_PENALTY: Final = "gen_ai.request.presence_penalty"
GEN_AI_REQUEST_STOP_SEQUENCES: Final = "gen_ai.request.stop_sequences"
GEN_AI_REQUEST_SEED: Final = "gen_ai.request.seed"
GEN_AI_REQUEST_CHOICE_COUNT: Final = "gen_ai.request.choice.count"
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: Final = "gen_ai.response.time_to_first_chunk"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_DATA_SOURCE_ID: Final = "gen_ai.data_source.id"
GEN_AI_RETRIEVAL_DOCUMENTS: Final = "gen_ai.retrieval.documents"

OPERATION_CHAT: Final = "chat"
OPERATION_RETRIEVAL: Final = "retrieval"
PROVIDER_OPENAI: Final = "openai"  # any OpenAI-protocol upstream (the convention's advice)

# -- HTTP, server, error (Stable) --------------------------------------------------------------
HTTP_REQUEST_METHOD: Final = "http.request.method"
HTTP_ROUTE: Final = "http.route"
HTTP_RESPONSE_STATUS_CODE: Final = "http.response.status_code"
URL_PATH: Final = "url.path"
URL_SCHEME: Final = "url.scheme"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
CLIENT_ADDRESS: Final = "client.address"
NETWORK_PROTOCOL_VERSION: Final = "network.protocol.version"
ERROR_TYPE: Final = "error.type"
DB_SYSTEM_NAME: Final = "db.system.name"

# -- Provenant ---------------------------------------------------------------------------------
PROVENANT_AUDIT_ID: Final = "provenant.audit.id"
PROVENANT_AUDIT_STATUS: Final = "provenant.audit.status"
PROVENANT_AUDIT_BATCH_SIZE: Final = "provenant.audit.batch_size"
PROVENANT_ROUTE: Final = "provenant.route"
PROVENANT_ROUTE_KIND: Final = "provenant.route.kind"
PROVENANT_TENANT_ID: Final = "provenant.tenant.id"
PROVENANT_MODEL_VERSION: Final = "provenant.model.version"
PROVENANT_MODEL_SNAPSHOT_SHA256: Final = "provenant.model.snapshot_sha256"
PROVENANT_DOCUMENT_IDS: Final = "provenant.retrieval.document_ids"
PROVENANT_DOCUMENT_VERSIONS: Final = "provenant.retrieval.document_versions"
PROVENANT_RETRIEVAL_SCORES: Final = "provenant.retrieval.scores"
PROVENANT_POLICY_STAGE: Final = "provenant.policy.stage"
PROVENANT_POLICY_BUNDLE_SHA256: Final = "provenant.policy.bundle_sha256"
PROVENANT_POLICY_OUTCOME: Final = "provenant.policy.outcome"
PROVENANT_POLICY_DECISIONS: Final = "provenant.policy.decisions"
PROVENANT_POLICY_BLOCKED_BY: Final = "provenant.policy.blocked_by"
