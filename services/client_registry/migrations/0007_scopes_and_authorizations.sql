-- Issue 9, "The browser": the scope catalog, post-logout redirect URIs, and the
-- authorization endpoint's state (browser sessions, pending authorization requests,
-- consents, authorization codes, and the grants each user gave each client).
-- Secrets (session ids, request ids, codes) are stored as SHA-256 only.

-- The scope catalog: every scope a client may be given, in words for the consent page.
CREATE TABLE scopes (
    name             text PRIMARY KEY,              -- an RFC 6749 §3.3 scope token
    description      text NOT NULL CHECK (description <> ''),
    consent_required boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
INSERT INTO scopes (name, description, consent_required) VALUES
    ('openid', 'Sign you in with your account', false),
    ('profile', 'Your name and profile details', true),
    ('email', 'Your email address', true);
-- Every scope clients already have joins the catalog, described by its name: an operator
-- words them later (inboundctl scope update); until then they ask for consent.
INSERT INTO scopes (name, description, consent_required)
SELECT DISTINCT s, s, true FROM clients, unnest(clients.scopes) AS s
ON CONFLICT (name) DO NOTHING;

-- OpenID Connect RP-Initiated Logout: where the browser may go after sign-out (exact match).
ALTER TABLE clients ADD COLUMN post_logout_redirect_uris text[] NOT NULL DEFAULT '{}';
-- "Which clients have this scope" (a scope in use cannot be deleted).
CREATE INDEX clients_scopes_idx ON clients USING gin (scopes);

-- A signed-in browser; the cookie holds a random value, this row its SHA-256.
CREATE TABLE browser_sessions (
    id_hash        bytea PRIMARY KEY CHECK (length(id_hash) = 32),
    sid            text NOT NULL UNIQUE,            -- the OpenID Connect `sid`
    user_id        text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    auth_time_ms   bigint NOT NULL,                 -- when the user signed in (unix ms)
    client_address text NOT NULL DEFAULT '',
    user_agent     text NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    ended_at       timestamptz                      -- signed out
);
CREATE INDEX browser_sessions_user_idx ON browser_sessions (user_id);
CREATE INDEX browser_sessions_expiry_idx ON browser_sessions (expires_at);

-- A validated authorization request waiting for sign-in or consent; `request_json` is
-- the authorization_code service's own serialisation.
CREATE TABLE authorization_requests (
    id_hash      bytea PRIMARY KEY CHECK (length(id_hash) = 32),
    client_id    text NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    request_json text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    completed_at timestamptz
);
CREATE INDEX authorization_requests_expiry_idx ON authorization_requests (expires_at);

-- What a user consented to for a client; asking for more asks again.
CREATE TABLE consents (
    user_id    text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id  text NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    scopes     text[] NOT NULL,
    granted_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, client_id)
);
CREATE INDEX consents_client_idx ON consents (client_id);

-- RFC 6749 §4.1.2: a code and everything it is bound to; single use (consumed_at).
CREATE TABLE authorization_codes (
    code_hash             bytea PRIMARY KEY CHECK (length(code_hash) = 32),
    client_id             text NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    redirect_uri          text NOT NULL,
    scopes                text[] NOT NULL,
    user_id               text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    username              text NOT NULL,
    sid                   text NOT NULL DEFAULT '',
    auth_time_ms          bigint NOT NULL DEFAULT 0,
    nonce                 text NOT NULL DEFAULT '',
    code_challenge        text NOT NULL DEFAULT '',
    code_challenge_method text NOT NULL DEFAULT '',
    grant_id              text NOT NULL CHECK (grant_id <> ''),
    created_at_ms         bigint NOT NULL,
    expires_at            timestamptz NOT NULL,
    consumed_at           timestamptz
);
CREATE INDEX authorization_codes_created_idx ON authorization_codes (created_at_ms);
CREATE INDEX authorization_codes_user_client_idx ON authorization_codes (user_id, client_id);

-- Grants a user gave a client through the browser (codes, implicit tokens): withdrawing
-- the consent revokes each. Kept while the grant can still have live tokens (see
-- services/client_registry/authorizations.py, purge).
CREATE TABLE user_grants (
    user_id    text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id  text NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    grant_id   text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, client_id, grant_id)
);
CREATE INDEX user_grants_grant_idx ON user_grants (grant_id);
CREATE INDEX user_grants_created_idx ON user_grants (created_at);
