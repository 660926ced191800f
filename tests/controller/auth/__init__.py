"""Tests of the auth room: operators (users, tokens, sessions, audit, limits), device identity and access."""
