-- Tollgate key store, version 3 (PostgreSQL): output captures (issue 20).
-- One row per captured request: the redacted request, the primary's
-- answer (`p_`), its shadow's (`s_`, NULL without one) and the signals
-- comparing them (NULL without a shadow answer). Ratios are parts per
-- million, costs nano-USD, booleans 0/1. `tags` holds the request's
-- declared tags (`priority=interactive,use_case=batch`, declared-key
-- order, only keys with a value; empty when none). Written by the capture writer
-- only; retention deletes by `ts_ms` and by `seq`.
CREATE TABLE captures (
    seq                 BIGSERIAL PRIMARY KEY,
    request_id          TEXT NOT NULL UNIQUE,
    ts_ms               BIGINT NOT NULL,
    alias               TEXT NOT NULL,
    endpoint            TEXT NOT NULL,
    tags                TEXT NOT NULL DEFAULT '',
    request             TEXT NOT NULL,
    json_requested      BIGINT NOT NULL,
    p_route             TEXT NOT NULL,
    p_variant           TEXT,
    p_status            BIGINT NOT NULL,
    p_text              TEXT NOT NULL,
    p_tools             TEXT NOT NULL,
    p_finish            TEXT,
    p_latency_ms        BIGINT NOT NULL,
    p_ttft_ms           BIGINT,
    p_prompt_tokens     BIGINT,
    p_completion_tokens BIGINT,
    p_cost_nanos        BIGINT,
    p_truncated         BIGINT NOT NULL,
    p_json_valid        BIGINT,
    p_schema_valid      BIGINT,
    s_route             TEXT,
    s_status            BIGINT,
    s_text              TEXT,
    s_tools             TEXT,
    s_finish            TEXT,
    s_latency_ms        BIGINT,
    s_ttft_ms           BIGINT,
    s_prompt_tokens     BIGINT,
    s_completion_tokens BIGINT,
    s_cost_nanos        BIGINT,
    s_truncated         BIGINT,
    s_json_valid        BIGINT,
    s_schema_valid      BIGINT,
    exact_match         BIGINT,
    similarity_ppm      BIGINT,
    length_ratio_ppm    BIGINT,
    tools_agree         BIGINT,
    finish_agree        BIGINT,
    score_ppm           BIGINT
);
CREATE INDEX captures_alias_ts ON captures (alias, ts_ms);
CREATE INDEX captures_ts ON captures (ts_ms);
