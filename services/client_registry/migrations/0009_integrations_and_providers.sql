-- Issue 10, "Federation": JWT-bearer integrations (RFC 7523 §2.1: whose assertions a client
-- may trade for tokens, signed with which keys, standing for whom) and the OpenID provider
-- registry (third-party ID and access tokens accepted as-is or exchanged, RFC 8693).

CREATE TABLE jwt_bearer_integrations (
    id                     text PRIMARY KEY,                 -- a UUID
    name                   text NOT NULL UNIQUE,
    client_id              text NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    issuer                 text NOT NULL,                    -- the assertions' iss
    jwks_uri               text NOT NULL DEFAULT '',
    jwks                   text NOT NULL DEFAULT '',
    certificate_pem        text NOT NULL DEFAULT '',
    kid                    text NOT NULL DEFAULT '',         -- pinned key ('': any of the source)
    algorithms             text[] NOT NULL DEFAULT '{}',
    allow_hs256            boolean NOT NULL DEFAULT false,
    -- HS256 only: the shared secret, AES-256-GCM under the key-encryption key
    -- (associated data "integration:<id>"), never in clear.
    sealed_secret          bytea,
    subject_kind           text NOT NULL DEFAULT 'user' CHECK (subject_kind IN ('user', 'client')),
    user_field             text NOT NULL DEFAULT 'username' CHECK (user_field IN ('username', 'email', 'id')),
    claim_rules            jsonb NOT NULL DEFAULT '[]',
    scopes                 text[] NOT NULL DEFAULT '{}',
    max_assertion_lifetime integer NOT NULL DEFAULT 3600 CHECK (max_assertion_lifetime > 0),
    require_jti            boolean NOT NULL DEFAULT true,
    active                 boolean NOT NULL DEFAULT true,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    -- Exactly one key source.
    CHECK ((jwks_uri <> '')::int + (jwks <> '')::int + (certificate_pem <> '')::int
           + (sealed_secret IS NOT NULL)::int = 1),
    CHECK (sealed_secret IS NULL OR allow_hs256)
);
-- The grant's lookup: the integrations of (client, iss).
CREATE INDEX jwt_bearer_integrations_lookup_idx ON jwt_bearer_integrations (client_id, issuer);

CREATE TABLE oidc_providers (
    name            text PRIMARY KEY,                   -- in jti namespaces and audit records: provider:<name>
    issuer          text NOT NULL UNIQUE,               -- a token's iss routes it to exactly one provider
    discovery_url   text NOT NULL,
    audiences       text[] NOT NULL CHECK (cardinality(audiences) > 0),
    algorithms      text[] NOT NULL CHECK (cardinality(algorithms) > 0),
    cache_lifespan  integer NOT NULL CHECK (cache_lifespan > 0),
    clock_skew      integer NOT NULL CHECK (clock_skew >= 0),
    user_claim      text NOT NULL,
    user_field      text NOT NULL CHECK (user_field IN ('username', 'email', 'id')),
    check_jti       boolean NOT NULL DEFAULT false,
    active          boolean NOT NULL DEFAULT true,
    provision_users boolean NOT NULL DEFAULT false,
    provision_roles text[] NOT NULL DEFAULT '{}',
    scopes          text[] NOT NULL DEFAULT '{}',
    template        text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
