"""The centre database: tables (``schema``), engine and dialects (``engine``), migrations."""
