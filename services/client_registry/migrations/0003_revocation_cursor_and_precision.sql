-- Revocations: a subject (user-wide) kind, and a commit-safe read cursor in
-- place of the advisory lock that serialised every writer.
--
-- `txid` is the id of the transaction that last wrote the row. Readers page by
-- (txid, id) and move their cursor only past transactions their snapshot's xmin
-- proves finished (services/client_registry/revocations.py), so writers need no
-- lock and none of them can be skipped.
ALTER TABLE revocations DROP CONSTRAINT IF EXISTS revocations_kind_check;
ALTER TABLE revocations ADD CONSTRAINT revocations_kind_check
    CHECK (kind IN ('jti', 'grant', 'client', 'subject'));
ALTER TABLE revocations ADD COLUMN txid bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint);
CREATE INDEX revocations_txid_idx ON revocations (txid, id);

-- revoked_before (a cut-off) and opaque tokens' issued_at were written in whole
-- seconds; from now on they hold milliseconds (timestamptz keeps microseconds),
-- so a token issued right after a cut-off is not born revoked.
COMMENT ON COLUMN revocations.revoked_before IS 'kind client|subject: tokens issued at or before this instant (ms precision)';
COMMENT ON COLUMN opaque_tokens.issued_at IS 'to the millisecond, compared with revocation cut-offs';
