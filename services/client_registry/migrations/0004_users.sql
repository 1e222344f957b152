-- The user directory, and the counters that slow down and lock password guessing.

CREATE TABLE users (
    id                  text PRIMARY KEY,              -- a UUID; the `sub` of the user's tokens
    username            text NOT NULL,                 -- as written
    username_key        text NOT NULL UNIQUE,          -- lower-cased: usernames are unique case-insensitively
    email               text NOT NULL DEFAULT '',
    display_name        text NOT NULL DEFAULT '',      -- the OpenID Connect `name` claim
    given_name          text NOT NULL DEFAULT '',
    family_name         text NOT NULL DEFAULT '',
    email_verified      boolean NOT NULL DEFAULT false,
    locale              text NOT NULL DEFAULT '',
    zoneinfo            text NOT NULL DEFAULT '',
    active              boolean NOT NULL DEFAULT true,
    roles               text[] NOT NULL DEFAULT '{}',
    password_hash       text,                          -- argon2id (PHC string); NULL: no password
    password_changed_at timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CHECK ((password_hash IS NULL) = (password_changed_at IS NULL))
);
CREATE INDEX users_email_idx ON users (lower(email)) WHERE email <> '';

-- Failed sign-ins, keyed by the lower-cased username whether or not such a user
-- exists (unknown usernames back off and lock exactly like real ones, so a lock
-- tells nothing), per address (`address` = the end user's address) and for the
-- username as a whole (`address` = '').
CREATE TABLE login_failures (
    username_key     text NOT NULL,
    address          text NOT NULL,
    failures         integer NOT NULL DEFAULT 0 CHECK (failures >= 0),
    last_failure_at  timestamptz,
    -- Attempts before this instant are refused unchecked (back-off, or a lock).
    blocked_until    timestamptz,
    -- Set when `failures` reached the lock threshold: the lock's end, reported once
    -- (user.lock_ended) by the registry's sweeper, which then clears it.
    locked_until     timestamptz,
    PRIMARY KEY (username_key, address)
);
CREATE INDEX login_failures_locked_idx ON login_failures (locked_until) WHERE locked_until IS NOT NULL;
