"""jwt_bearer service: RFC 7523 as a whole: the JWT bearer grant (§2.1, grant.py) and the
verification of client assertions for every service that authenticates clients (§2.2,
client_assertions.py). The only service besides third_party_token that fetches keys over
HTTPS (clients' and integrations' jwks_uri) and opens sealed HMAC secrets."""
