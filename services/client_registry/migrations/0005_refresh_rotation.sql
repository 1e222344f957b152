-- Refresh-token rotation with reuse detection (RFC 6749 §6, RFC 9700 §4.14.2), and
-- the two client settings of issue 8.
--
-- A refresh token stays a row of kind 'refresh' in opaque_tokens (SHA-256 only).
-- Rotating it sets consumed_at and inserts its successor in one transaction
-- (services/client_registry/refresh_tokens.py); a consumed token presented again
-- revokes every refresh row of its family (same grant_id) and records a grant
-- revocation for its access tokens.
ALTER TABLE opaque_tokens
    -- Rotated: its successor was issued then.
    ADD COLUMN consumed_at       timestamptz,
    -- Until then the same client presenting it again is a retry (answered with the
    -- first rotation's response), not a reuse. Set with consumed_at.
    ADD COLUMN replay_until      timestamptz,
    -- The first rotation's response, encrypted under a key derived from the consumed
    -- token (only its holder can open it); cleared once replay_until has passed.
    ADD COLUMN rotation_response bytea,
    -- Its family was revoked (a reuse, RFC 7009 revocation of its grant): never usable again,
    -- whatever the grant revocation's own expiry.
    ADD COLUMN revoked_at        timestamptz,
    -- The family ends then, whatever its rotations (the client's absolute lifetime); NULL: no limit.
    ADD COLUMN family_expires_at timestamptz,
    ADD CONSTRAINT opaque_tokens_rotation_check CHECK (
        (kind = 'refresh' OR (consumed_at IS NULL AND revoked_at IS NULL AND family_expires_at IS NULL))
        AND (consumed_at IS NULL) = (replay_until IS NULL)
        AND (rotation_response IS NULL OR consumed_at IS NOT NULL));
-- What the rotation-response sweeper reads: the few rows still holding a response.
CREATE INDEX opaque_tokens_rotation_response_idx ON opaque_tokens (replay_until)
    WHERE rotation_response IS NOT NULL;

-- RFC 6749 §4.3.2: a public client may use the password grant only when an operator allows it.
ALTER TABLE clients ADD COLUMN allow_public_password_grant boolean NOT NULL DEFAULT false;
-- Seconds a refresh-token family may live from its first token, whatever its rotations;
-- 0: only the sliding refresh_token_lifetime applies. It may be shorter than
-- refresh_token_lifetime: each token then expires at the family's end, the earlier of the two.
ALTER TABLE clients ADD COLUMN refresh_token_absolute_lifetime bigint NOT NULL DEFAULT 0
    CHECK (refresh_token_absolute_lifetime >= 0);
