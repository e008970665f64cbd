"""What one leg (one request sent to one version) records. The store persists these columns as they are."""
from __future__ import annotations

import pyarrow as pa

__all__ = ["LEG_SCHEMA", "RESOURCE_SCHEMA", "EVENT_SCHEMA"]

# Times are epoch seconds (float64) here; the store turns them into TIMESTAMPTZ columns.
LEG_SCHEMA = pa.schema([
    ("request_id", pa.string()),
    ("version", pa.string()),
    ("order_idx", pa.int64()),
    ("intended_at", pa.float64()),
    ("sent_at", pa.float64()),
    ("done_at", pa.float64()),
    ("send_lag_ms", pa.float64()),
    ("latency_ms", pa.float64()),
    ("service_ms", pa.float64()),
    ("status_code", pa.int32()),
    ("error_kind", pa.string()),
    ("error_detail", pa.string()),
    ("response_bytes", pa.int64()),
    ("schema_valid", pa.bool_()),
    ("schema_errors", pa.string()),
    ("prediction", pa.string()),
    ("confidence", pa.float64()),
    ("model_version", pa.string()),
    ("output_json", pa.string()),
    ("time_to_first_token_ms", pa.float64()),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("worker", pa.string()),
    # streamed answers (openai protocol): token timing from the send, see harness.protocols.openai
    ("streamed", pa.bool_()),
    ("inter_token_ms_mean", pa.float64()),
    ("inter_token_ms_p95", pa.float64()),
    ("token_chunks", pa.int64()),
    ("finish_reason", pa.string()),
    # detectors (output.detectors; tool calls always): null where not configured or not judgeable
    ("abstained", pa.bool_()),
    ("cited", pa.bool_()),
    ("fallback_model", pa.bool_()),
    ("tool_calls_valid", pa.bool_()),
    # batched answers read row by row (output.rows; harness.protocols.rows): null where rows are not read.
    # row i is the answer's row i, invalid ones included (row_invalid says why), never realigned.
    ("row_count", pa.int64()),
    ("row_labels", pa.list_(pa.string())),
    ("row_scores", pa.list_(pa.float64())),
    ("row_invalid", pa.list_(pa.string())),
    # Content-Encoding: response_bytes are the bytes on the wire, decoded_bytes what they decode to
    ("content_encoding", pa.string()),
    ("decoded_bytes", pa.int64()),
])

RESOURCE_SCHEMA = pa.schema([
    ("version", pa.string()),
    ("sampled_at", pa.float64()),
    ("pid", pa.int64()),
    ("rss_mb", pa.float64()),
    ("cpu_percent", pa.float64()),
    ("gpu_memory_mb", pa.float64()),
    ("restarts", pa.int64()),
    ("oom_events", pa.int64()),
    ("source", pa.string()),
])

EVENT_SCHEMA = pa.schema([
    ("occurred_at", pa.float64()),  # not "at": a reserved word of DuckDB's SQL
    ("kind", pa.string()),
    ("detail", pa.string()),
])
