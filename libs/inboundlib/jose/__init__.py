"""JOSE for federation: trusted key sets (keys.py), the one JWT validator (validator.py) and
the guarded JWKS / OpenID discovery fetcher (fetch.py). pyjwt parses and verifies; nothing
here reads JOSE by hand."""
