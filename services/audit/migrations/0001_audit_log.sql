-- The audit log: one row per event published on inbound.events.>, append-only.
-- Bookkeeping for these migrations is in audit_schema_migrations (not client_registry's table).

CREATE TABLE audit_log (
    event_id    text PRIMARY KEY,            -- Event.event_id: a redelivered event is stored once
    seq         bigint GENERATED ALWAYS AS IDENTITY,  -- storage order: the `tail --follow` cursor
    occurred_at timestamptz NOT NULL,
    type        text NOT NULL,               -- the payload's field name, e.g. token_issued
    source      text NOT NULL DEFAULT '',
    request_id  text NOT NULL DEFAULT '',
    client_id   text NOT NULL DEFAULT '',
    detail      jsonb NOT NULL,              -- the payload as JSON (proto field names)
    stored_at   timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX audit_log_seq ON audit_log (seq);
CREATE INDEX audit_log_client_occurred ON audit_log (client_id, occurred_at);
CREATE INDEX audit_log_occurred ON audit_log (occurred_at);
CREATE INDEX audit_log_type_occurred ON audit_log (type, occurred_at);

-- Append-only: rows are inserted, never changed or removed (retention, if ever
-- needed, is an operator's deliberate act: drop the trigger first, on purpose).
CREATE FUNCTION audit_log_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();

CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();
