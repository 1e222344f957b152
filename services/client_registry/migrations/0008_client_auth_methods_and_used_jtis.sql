-- Issue 10, "Federation": one client authentication method per client (RFC 7591 §2
-- token_endpoint_auth_method, enforced at every endpoint that authenticates clients), the
-- client's keys for private_key_jwt (RFC 7523 §2.2), its RFC 8693 token-exchange policy,
-- the sealed secret of client_secret_jwt clients, and the used-jti store (replay refusal).

-- Existing clients: public ones authenticate with nothing; confidential ones with HTTP
-- Basic (RFC 6749 §2.3.1's MUST; an operator moves a client that posts its secret to
-- client_secret_post with `inboundctl client update --auth-method`).
ALTER TABLE clients ADD COLUMN token_endpoint_auth_method text NOT NULL DEFAULT 'client_secret_basic';
UPDATE clients SET token_endpoint_auth_method = 'none' WHERE public;
ALTER TABLE clients ADD CONSTRAINT clients_auth_method_known CHECK (token_endpoint_auth_method IN
    ('none', 'client_secret_basic', 'client_secret_post', 'client_secret_jwt', 'private_key_jwt'));
-- A public client has no credentials (RFC 6749 §2.1); a confidential one must prove itself.
ALTER TABLE clients ADD CONSTRAINT clients_auth_method_matches_type
    CHECK (public = (token_endpoint_auth_method = 'none'));
-- Who has a secret (hash): the secret methods. Before, every confidential client had one
-- (0001's "public = (secret_hash IS NULL)"); a private_key_jwt client proves itself by its key.
ALTER TABLE clients DROP CONSTRAINT clients_check;
ALTER TABLE clients ADD CONSTRAINT clients_secret_for_secret_methods
    CHECK ((secret_hash IS NULL) = (token_endpoint_auth_method IN ('none', 'private_key_jwt')));

-- private_key_jwt: the client's public keys, inline (a JWKS, JSON text) or by https URL.
ALTER TABLE clients ADD COLUMN jwks text NOT NULL DEFAULT '';
ALTER TABLE clients ADD COLUMN jwks_uri text NOT NULL DEFAULT '';
ALTER TABLE clients ADD COLUMN token_endpoint_auth_signing_alg text NOT NULL DEFAULT '';
-- RFC 8693: what the client may exchange (NULL: it may not).
ALTER TABLE clients ADD COLUMN token_exchange jsonb;
-- client_secret_jwt only: the secret itself, AES-256-GCM under the key-encryption key
-- (associated data "client:<client_id>"); every other client keeps only the secret's hash.
ALTER TABLE clients ADD COLUMN sealed_secret bytea;
ALTER TABLE clients ADD CONSTRAINT clients_sealed_secret_only_for_client_secret_jwt
    CHECK (sealed_secret IS NULL OR token_endpoint_auth_method = 'client_secret_jwt');

-- One row per (trust, jti) seen: a second use while the row lives is a replay. A row is
-- kept until its token could no longer be accepted (exp plus the clock skew); an expired
-- row is free again, and purged in bounded batches.
CREATE TABLE used_jtis (
    namespace  text NOT NULL,       -- client:<id>, integration:<id>, provider:<name>
    jti        text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (namespace, jti)
);
CREATE INDEX used_jtis_expiry_idx ON used_jtis (expires_at);
