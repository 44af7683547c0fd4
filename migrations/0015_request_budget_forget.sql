-- A rate limit learned from Kantata's 429s was kept for ever: a throttle Kantata applied for a
-- while capped syncd after Kantata stopped throttling (an idle daemon is never held back by
-- the limit, so the slow upward probes never ran). syncd now forgets a learned limit after
-- SYNCD_RATE_LIMIT_FORGET_AFTER seconds (a day by default) without a 429, counted from
-- last_throttled_at, and `syncd status` shows the limit, when it was learned and when it is
-- forgotten.

ALTER TABLE syncd.request_budget ADD COLUMN last_throttled_at timestamptz;
UPDATE syncd.request_budget SET last_throttled_at = updated_at;  -- the best known
ALTER TABLE syncd.request_budget ALTER COLUMN last_throttled_at SET NOT NULL;
ALTER TABLE syncd.request_budget ALTER COLUMN last_throttled_at SET DEFAULT now();
COMMENT ON COLUMN syncd.request_budget.last_throttled_at IS
    'Kantata''s last 429 that taught or confirmed the limit: without another one, the limit is '
    'forgotten SYNCD_RATE_LIMIT_FORGET_AFTER seconds later (the row is deleted) and syncd '
    'learns again at the next 429';
