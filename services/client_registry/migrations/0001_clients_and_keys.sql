-- The application registry, signing keys and opaque access tokens.

CREATE TABLE clients (
    client_id              text PRIMARY KEY,
    name                   text NOT NULL,
    secret_hash            text,                -- NULL for public clients
    public                 boolean NOT NULL,
    grant_types            text[] NOT NULL,
    scopes                 text[] NOT NULL,
    redirect_uris          text[] NOT NULL,
    access_token_lifetime  bigint NOT NULL DEFAULT 1800 CHECK (access_token_lifetime > 0),
    refresh_token_lifetime bigint NOT NULL DEFAULT 8640000 CHECK (refresh_token_lifetime > 0),
    token_format           text NOT NULL DEFAULT 'jwt' CHECK (token_format IN ('jwt', 'opaque')),
    pkce_required          boolean NOT NULL DEFAULT false,
    active                 boolean NOT NULL DEFAULT true,
    logo_url               text NOT NULL DEFAULT '',
    comments               text NOT NULL DEFAULT '',
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    secret_rotated_at      timestamptz,
    CHECK (public = (secret_hash IS NULL))
);

-- Private keys arrive encrypted by token_issuer; the registry never sees them in clear.
CREATE TABLE signing_keys (
    kid                   text PRIMARY KEY,
    alg                   text NOT NULL CHECK (alg IN ('ES256', 'RS256', 'EdDSA')),
    encrypted_private_key bytea NOT NULL,
    public_jwk            text NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    activates_at          timestamptz NOT NULL
);

CREATE TABLE opaque_tokens (
    token_hash  bytea PRIMARY KEY,              -- SHA-256 of the token
    jti         text NOT NULL UNIQUE,
    client_id   text NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    subject     text NOT NULL,
    username    text NOT NULL DEFAULT '',
    scopes      text[] NOT NULL,
    audience    text[] NOT NULL,
    issued_at   timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX opaque_tokens_client_idx ON opaque_tokens (client_id);
CREATE INDEX opaque_tokens_expiry_idx ON opaque_tokens (expires_at);
