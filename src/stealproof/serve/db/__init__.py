"""Gateway storage: SQLAlchemy models, engines, migrations and the repository functions."""
