-- The decision registry: one row per record id decided on any instance (docs/scaling.md).
CREATE TABLE hetao_decisions (
    -- The record id's 128-bit key (its UUID), 32 lowercase hex digits: as the replay memory keys it.
    record_key    text PRIMARY KEY,
    record_id     text NOT NULL,
    body_sha256   bytea NOT NULL,
    sender_park   text NOT NULL,
    sender_org    text NOT NULL,
    -- The instance holding the claim, or that settled it.
    instance      text NOT NULL,
    -- deciding: claimed, under lease; unsettled: forwarded, delivery not known (a retry is the
    -- next attempt); denied, delivered: answered for good (a retry gets `answer` again).
    state         text NOT NULL CHECK (state IN ('deciding', 'unsettled', 'denied', 'delivered')),
    attempts      integer NOT NULL,
    lease_until   timestamptz NOT NULL,
    status        integer,
    answer        text,
    decision_seq  bigint,
    outcome_seq   bigint,
    first_claimed_at timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX hetao_decisions_updated_at ON hetao_decisions (updated_at);

