-- Refresh tokens live beside opaque access tokens (both stored only as SHA-256),
-- and every token from one authorization grant shares a grant id.
ALTER TABLE opaque_tokens ADD COLUMN kind text NOT NULL DEFAULT 'access' CHECK (kind IN ('access', 'refresh'));
ALTER TABLE opaque_tokens ADD COLUMN grant_id text NOT NULL DEFAULT '';
CREATE INDEX opaque_tokens_grant_idx ON opaque_tokens (grant_id) WHERE grant_id <> '';

-- Revocations, fanned out to every token_issuer replica over NATS; a replica
-- that starts late reads the unexpired ones from here. `id` grows with every
-- new or widened entry so replicas can catch up incrementally.
CREATE TABLE revocations (
    id             bigserial PRIMARY KEY,
    kind           text NOT NULL CHECK (kind IN ('jti', 'grant', 'client')),
    value          text NOT NULL,
    client_id      text NOT NULL,
    revoked_before timestamptz,
    expires_at     timestamptz NOT NULL,
    revoked_by     text NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, value)
);
CREATE INDEX revocations_expiry_idx ON revocations (expires_at);
