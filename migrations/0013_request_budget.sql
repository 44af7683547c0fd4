-- The request budget learns Kantata's rate limit from what Kantata admits (Kantata publishes no
-- limit, no window and no rate headers, api-notes §10): after the first 429 it probes for the
-- window, a lesson that costs a few refused requests and up to a window of waiting (a minute
-- against a per-minute limit). Kept here, a restarted syncd of the same installation starts at
-- the learned rate instead of paying for the lesson again (issue #24). One row per Kantata
-- base URL and token: the token itself is never stored, only its SHA-256.

CREATE TABLE syncd.request_budget (
    kantata_base_url     text NOT NULL,
    token_sha256         text NOT NULL CHECK (token_sha256 ~ '^[0-9a-f]{64}$'),
    limit_requests       integer NOT NULL CHECK (limit_requests >= 1),
    window_seconds       double precision NOT NULL CHECK (window_seconds > 0),
    window_longer_than   double precision NOT NULL DEFAULT 0
        CHECK (window_longer_than >= 0 AND window_longer_than <= window_seconds),
    last_request_at      timestamptz,
    recent_starts        timestamptz[],
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kantata_base_url, token_sha256)
);
COMMENT ON TABLE syncd.request_budget IS
    'The rate limit syncd learned from Kantata''s answers, per base URL and token (issue #24): '
    'at most limit_requests requests started in any window_seconds. Written when it changes '
    'and at shutdown; read at start. Deleting the row makes syncd learn the limit again.';
COMMENT ON COLUMN syncd.request_budget.kantata_base_url IS
    'SYNCD_KANTATA_BASE_URL without a trailing slash';
COMMENT ON COLUMN syncd.request_budget.token_sha256 IS
    'hex SHA-256 of the Kantata token (never the token itself)';
COMMENT ON COLUMN syncd.request_budget.limit_requests IS
    'requests Kantata admitted in one window (learned; raised slowly while syncd is at it)';
COMMENT ON COLUMN syncd.request_budget.window_seconds IS
    'the window syncd keeps limit_requests starts in (at least Kantata''s, as learned)';
COMMENT ON COLUMN syncd.request_budget.window_longer_than IS
    'Kantata refused a start this many seconds after the oldest of the window: its window is '
    'longer (0: unknown); trial starts narrow window_seconds towards it';
COMMENT ON COLUMN syncd.request_budget.last_request_at IS
    'when the last request admitted by the saving process started: a restart within a window '
    'of it starts paced instead of with a burst';
COMMENT ON COLUMN syncd.request_budget.recent_starts IS
    'the starts of the saving process still inside the window when it stopped (at most '
    'limit_requests): a restart counts them as its own and goes on without a 429; NULL while '
    'a process runs (it saves only the limit then)';
COMMENT ON COLUMN syncd.request_budget.updated_at IS 'when the row was last written';
