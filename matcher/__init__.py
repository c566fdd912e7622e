"""The central matcher: verified ingest, storage, F0 matching and exposure reports.

The API the demo and tools use::

    from matcher.store import open_store      # SQLite or PostgreSQL, migrated
    from matcher.f0 import load_f0, sign_f0   # signed F0 inputs
    from matcher.match import match_f0        # F0 -> exposure windows with co-presence
    from matcher.report import write_reports  # JSON, CSV, HTML (vi/en), public list

    store = open_store("sqlite:///var/lib/bzgw-matcher/matcher.db")
    result = match_f0(store, load_f0(path, signers))
    files = write_reports(result, out_dir)

Ingest runs as ``bzgw matcher serve`` (:mod:`matcher.service`).
"""
