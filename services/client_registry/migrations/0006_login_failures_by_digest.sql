-- Sign-in failure counters are keyed by a SHA-256 of the normalised username, not the
-- username itself: counters exist for unknown usernames too, and a password typed into
-- the username field would otherwise sit in this table in clear for the lock period.
ALTER TABLE login_failures RENAME COLUMN username_key TO username_digest;
UPDATE login_failures SET username_digest = encode(sha256(convert_to(username_digest, 'UTF8')), 'hex');
-- The same digest of each user's key (kept by the registry, which writes username_key),
-- to find a user's counters and a counter's user.
ALTER TABLE users ADD COLUMN username_digest text;
UPDATE users SET username_digest = encode(sha256(convert_to(username_key, 'UTF8')), 'hex');
ALTER TABLE users ALTER COLUMN username_digest SET NOT NULL;
CREATE UNIQUE INDEX users_username_digest_idx ON users (username_digest);
