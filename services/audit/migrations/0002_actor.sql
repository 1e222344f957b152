-- Every event carries the actor who caused it (Event.actor: a service, an
-- operator, a client, a user); older rows have none ('').
ALTER TABLE audit_log ADD COLUMN actor_kind text NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN actor_id text NOT NULL DEFAULT '';
CREATE INDEX audit_log_actor_occurred ON audit_log (actor_kind, actor_id, occurred_at);
