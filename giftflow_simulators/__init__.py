"""Local stand-ins for Cardivo and Stripe, for tests and `giftflow demo`: a seeded dataset, two ASGI apps and
a background server to run them on 127.0.0.1."""
