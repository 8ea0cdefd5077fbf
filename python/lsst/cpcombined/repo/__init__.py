"""Butler plumbing: creating repositories, collection conventions, file
formats and formatters, conversions between algorithm arrays and stored
products, and certification.

Modules: `create` (new repositories), `collections` (collection names and
look-ups), `formatters` (butler formatters), `products` (in-memory
products and provenance metadata), `certify` (certification).
"""
